"""Direct logit attribution, activation patching, input saliency and steering (issue 30's
library part) against transformers with hooks, on random tiny checkpoints: the reference
math done the TransformerLens way, patching one run at a time, autograd, and a pre-hook
adding the steering vector. Plus bad input and concurrent requests."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import torch

import gpt2
from conftest import compiled, hf_reference

ATOL = 1e-4


def save_sharp_checkpoint(directory: Path) -> Path:
    """3 layers, 4 heads, 48 wide; sharp weights (initializer_range 0.2) so that the
    metrics and their parts are far from zero."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(7)
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=48, n_layer=3, n_head=4,
                               initializer_range=0.2)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory) -> Path:
    return save_sharp_checkpoint(tmp_path_factory.mktemp("sharp"))


@pytest.fixture(scope="module")
def hf(sharp_dir):
    return hf_reference(sharp_dir)


@pytest.fixture(scope="module")
def model(sharp_dir) -> gpt2.GPT:
    return gpt2.load_model(sharp_dir, compile=False)


@pytest.fixture(scope="module", params=["compiled", "eager"])
def any_model(request, sharp_dir, model) -> gpt2.GPT:
    """Both decode paths: the compiled kernels (batched decode steps) and eager."""
    return model if request.param == "eager" else compiled(gpt2.load_model(sharp_dir))


def ids_of(n: int, seed: int) -> list[int]:
    return torch.randint(0, 50257, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


TEXT = ids_of(24, 1)


# -- the reference, with hooks on transformers -------------------------------------------------
class Recorder:
    """Forward hooks on a transformers GPT-2 keeping the embeddings' sum, each block's input,
    the merged heads c_proj reads, each MLP's output and the final residual stream."""

    def __init__(self, hf):
        t = hf.transformer
        self.handles, self.store = [], {}
        self.handles.append(t.drop.register_forward_hook(lambda m, a, out: self._keep("emb", out)))
        for i, block in enumerate(t.h):
            self.handles.append(block.register_forward_pre_hook(
                lambda m, a, kw, i=i: self._keep(("block", i), a[0] if a else kw["hidden_states"]),
                with_kwargs=True))
            self.handles.append(block.attn.c_proj.register_forward_pre_hook(
                lambda m, a, i=i: self._keep(("z", i), a[0])))
            self.handles.append(block.mlp.register_forward_hook(lambda m, a, out, i=i: self._keep(("mlp", i), out)))
        self.handles.append(t.ln_f.register_forward_pre_hook(lambda m, a: self._keep("final", a[0])))

    def _keep(self, key, value):
        self.store[key] = value
        return None

    def __enter__(self):
        return self.store

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


def reference_attribution(hf, ids: list[int], position: int, target: int, contrast: int) -> dict:
    """TransformerLens' decomposition: per-head results through W_O without its bias, the
    attention bias, the MLP outputs and the embeddings, each through `apply_ln_to_stack`
    (centred, divided by the final residual's scale, times ln_f.weight) and dotted with
    W_U[target] - W_U[contrast]."""
    t = hf.transformer
    cfg = hf.config
    H, hd = cfg.n_head, cfg.n_embd // cfg.n_head
    with Recorder(hf) as rec, torch.no_grad():
        logits = hf(torch.tensor([ids[:position + 1]])).logits[0, position]
    u = hf.lm_head.weight[target] - hf.lm_head.weight[contrast]
    final = rec["final"][0, position]
    scale = torch.sqrt(final.var(unbiased=False) + t.ln_f.eps)

    def through_ln(c: torch.Tensor) -> float:
        return float(((c - c.mean(-1, keepdim=True)) / scale * t.ln_f.weight) @ u)

    heads = torch.zeros(cfg.n_layer, H)
    with torch.no_grad():
        for layer, block in enumerate(t.h):
            z = rec[("z", layer)][0, position]
            W = block.attn.c_proj.weight  # Conv1D: [in, out]
            for h in range(H):
                heads[layer, h] = through_ln(z[h * hd:(h + 1) * hd] @ W[h * hd:(h + 1) * hd])
        return {"metric": float(logits[target] - logits[contrast]), "heads": heads,
                "attention_bias": torch.tensor([through_ln(b.attn.c_proj.bias) for b in t.h]),
                "mlps": torch.tensor([through_ln(rec[("mlp", l)][0, position]) for l in range(cfg.n_layer)]),
                "embeddings": through_ln(rec["emb"][0, position]),
                "final_bias": float(t.ln_f.bias @ u)}


def assert_attribution(got: gpt2.Attribution, want: dict) -> None:
    assert got.metric == pytest.approx(want["metric"], abs=ATOL)
    torch.testing.assert_close(got.heads, want["heads"], atol=ATOL, rtol=0)
    torch.testing.assert_close(got.attention_bias, want["attention_bias"], atol=ATOL, rtol=0)
    torch.testing.assert_close(got.mlps, want["mlps"], atol=ATOL, rtol=0)
    assert got.embeddings == pytest.approx(want["embeddings"], abs=ATOL)
    assert got.final_bias == pytest.approx(want["final_bias"], abs=ATOL)
    assert got.total() == pytest.approx(got.metric, abs=ATOL)
    assert abs(want["metric"]) > 0.05  # the test means something


# -- attribution ---------------------------------------------------------------------------------
@pytest.mark.parametrize("position", [0, 7, 23])
def test_attribution_without_capture_equals_transformerlens_math(model, hf, position):
    got = gpt2.attribute(model, TEXT, position)
    logits = hf_logits(hf, TEXT)[position]
    # defaults: the next token of the text (the top-1 after the last), the best other token
    want_target = TEXT[position + 1] if position + 1 < len(TEXT) else int(logits.argmax())
    assert got.target == want_target
    others = logits.clone()
    others[want_target] = -float("inf")
    assert got.contrast == int(others.argmax())
    assert_attribution(got, reference_attribution(hf, TEXT, position, got.target, got.contrast))


def test_attribution_sum_is_the_metric_for_chosen_tokens(model, hf):
    got = gpt2.attribute(model, TEXT, 10, target=464, contrast=290)
    assert (got.target, got.contrast) == (464, 290)
    assert_attribution(got, reference_attribution(hf, TEXT, 10, 464, 290))
    ranked = got.ranked()
    assert len(ranked) == 3 * 4 + 3 + 3 + 2
    assert [abs(v) for _, v in ranked] == sorted((abs(v) for _, v in ranked), reverse=True)
    assert dict(ranked)["head 2.1"] == pytest.approx(float(got.heads[2, 1]))
    assert dict(ranked)["mlp 0"] == pytest.approx(float(got.mlps[0]))


@pytest.mark.parametrize("how", ["generate", "batched", "plain"])
def test_attribution_reads_a_finished_runs_capture(any_model, hf, how, monkeypatch):
    """A generation's capture (values kept from its cache, block outputs) gives the same
    numbers as the reference, with no forward pass at all."""
    prompt = torch.tensor([TEXT[:9]])
    with gpt2.capture_attention(any_model, residuals=True, values=True) as capture:
        if how == "generate":
            ids = gpt2.generate(any_model, prompt, 10, capture=capture)[0].tolist()
        elif how == "batched":
            loop = gpt2.BatchedGenerator(any_model)
            ids = loop.generate(prompt, 10, capture=capture)[0].tolist()
            loop.close()
        else:
            ids = TEXT
            with torch.inference_mode():
                any_model(torch.tensor([ids]))
    from gpt2 import passes

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass where the capture suffices")

    monkeypatch.setattr(passes, "trace", no_pass)
    for position in (0, 8, len(ids) - 2, len(ids) - 1):
        got = gpt2.attribute(any_model, ids, position, capture=capture)
        assert_attribution(got, reference_attribution(hf, ids, position, got.target, got.contrast))


def test_attribution_falls_back_to_a_pass_when_the_capture_lacks_values(model, hf):
    with gpt2.capture_attention(model, residuals=True) as capture, torch.inference_mode():
        model(torch.tensor([TEXT]))
    got = gpt2.attribute(model, TEXT, 12, capture=capture)
    assert_attribution(got, reference_attribution(hf, TEXT, 12, got.target, got.contrast))


# -- patching ------------------------------------------------------------------------------------
CLEAN = ids_of(12, 2)
CORRUPTED = CLEAN[:4] + ids_of(3, 3) + CLEAN[7:]


def hf_metric(hf, ids, target, contrast, hooks=()) -> float:
    handles = [module.register_forward_pre_hook(fn, with_kwargs=True) for module, fn in hooks]
    try:
        logits = hf_logits(hf, ids)[-1]
    finally:
        for h in handles:
            h.remove()
    return float(logits[target] - logits[contrast])


def naive_patching(hf, clean, corrupted, target, contrast, level):
    """One corrupted run per cell, with a pre-hook putting the clean run's activation in."""
    t, cfg = hf.transformer, hf.config
    hd = cfg.n_embd // cfg.n_head
    with Recorder(hf) as rec, torch.no_grad():
        hf(torch.tensor([clean]))
    m_clean = hf_metric(hf, clean, target, contrast)
    m_corr = hf_metric(hf, corrupted, target, contrast)
    cells = cfg.n_head if level == "heads" else len(clean)
    grid = torch.zeros(cfg.n_layer, cells)
    for layer in range(cfg.n_layer):
        for i in range(cells):
            if level == "heads":
                def put(m, args, kwargs, layer=layer, i=i):
                    z = args[0].clone()
                    z[:, :, i * hd:(i + 1) * hd] = rec[("z", layer)][:, :, i * hd:(i + 1) * hd]
                    return (z, *args[1:]), kwargs
                module = t.h[layer].attn.c_proj
            else:
                def put(m, args, kwargs, layer=layer, i=i):
                    x = (args[0] if args else kwargs["hidden_states"]).clone()
                    x[:, i] = rec[("block", layer)][:, i]
                    if args:
                        return (x, *args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": x}
                module = t.h[layer]
            grid[layer, i] = hf_metric(hf, corrupted, target, contrast, [(module, put)])
    return m_clean, m_corr, (grid - m_corr) / (m_clean - m_corr)


@pytest.mark.parametrize("level", ["heads", "residual"])
def test_patching_grids_equal_naive_patching(model, hf, level):
    got = gpt2.patch(model, CLEAN, CORRUPTED, level)
    assert got.level == level
    # defaults: clean's top-1; corrupted's top-1 (clean's runner-up where that is the same)
    clean_logits, corr_logits = hf_logits(hf, CLEAN)[-1], hf_logits(hf, CORRUPTED)[-1]
    assert got.target == int(clean_logits.argmax())
    want_contrast = int(corr_logits.argmax())
    if want_contrast == got.target:
        want_contrast = int(clean_logits.topk(2).indices[1])
    assert got.contrast == want_contrast
    m_clean, m_corr, grid = naive_patching(hf, CLEAN, CORRUPTED, got.target, got.contrast, level)
    assert got.metric_clean == pytest.approx(m_clean, abs=1e-3)
    assert got.metric_corrupted == pytest.approx(m_corr, abs=1e-3)
    assert got.grid.shape == grid.shape == (3, 4 if level == "heads" else len(CLEAN))
    torch.testing.assert_close(got.grid, grid, atol=1e-3, rtol=0)
    assert grid.abs().max() > 0.05
    if level == "residual":  # identical tokens before the corruption: nothing to restore there
        assert got.grid[:, :4].abs().max() < 1e-5
        assert got.grid[0, 4:7].abs().max() > 0  # the corrupted positions matter at the input


def test_patching_in_chunks_equals_one_batch(model, monkeypatch):
    from gpt2 import patching

    whole = [gpt2.patch_heads(model, CLEAN, CORRUPTED, 464, 290), gpt2.patch_residual(model, CLEAN, CORRUPTED)]
    monkeypatch.setattr(patching, "MAX_TOKENS", 1)  # one layer of rows per batch
    chunked = [gpt2.patch_heads(model, CLEAN, CORRUPTED, 464, 290), gpt2.patch_residual(model, CLEAN, CORRUPTED)]
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a.grid, b.grid, atol=1e-5, rtol=0)


# -- saliency ------------------------------------------------------------------------------------
def reference_saliency(hf, ids, position, target, contrast) -> torch.Tensor:
    kept = {}

    def keep(m, a, out):
        out.retain_grad()
        kept["emb"] = out

    handle = hf.transformer.drop.register_forward_hook(keep)
    try:
        logits = hf(torch.tensor([ids[:position + 1]])).logits[0, position]
    finally:
        handle.remove()
    (logits[target] - logits[contrast]).backward()
    hf.zero_grad(set_to_none=True)
    return (kept["emb"] * kept["emb"].grad)[0].sum(-1).detach()


@pytest.mark.parametrize("position", [0, 9, 23])
def test_saliency_equals_autograd_on_transformers(model, hf, position):
    got = gpt2.saliency(model, TEXT, position)
    assert got.scores.shape == (position + 1,)
    want = reference_saliency(hf, TEXT, position, got.target, got.contrast)
    torch.testing.assert_close(got.scores, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert got.metric == pytest.approx(gpt2.attribute(model, TEXT, position).metric, abs=ATOL)


# -- steering ------------------------------------------------------------------------------------
PLUS, MINUS = ids_of(6, 4), ids_of(9, 5)


def test_steering_vector_is_the_mean_residual_difference(model, hf):
    with torch.no_grad():
        plus = hf(torch.tensor([PLUS]), output_hidden_states=True).hidden_states
        minus = hf(torch.tensor([MINUS]), output_hidden_states=True).hidden_states
    for layer in range(3):  # hidden_states[l]: what enters block l (0: the embeddings)
        want = plus[layer][0].mean(0) - minus[layer][0].mean(0)
        torch.testing.assert_close(gpt2.steering_vector(model, PLUS, MINUS, layer), want, atol=1e-5, rtol=1e-5)


def hf_greedy(hf, prompt, n, layer=None, vector=None) -> list[int]:
    """Greedy decoding without a cache; the vector added by a forward pre-hook on the block."""
    def add(m, args, kwargs):
        if args:
            return (args[0] + vector, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + vector}

    handle = None if vector is None else hf.transformer.h[layer].register_forward_pre_hook(add, with_kwargs=True)
    ids = list(prompt)
    try:
        for _ in range(n):
            ids.append(int(hf_logits(hf, ids)[-1].argmax()))
    finally:
        if handle is not None:
            handle.remove()
    return ids


@pytest.mark.parametrize("layer", [0, 2])
def test_greedy_steered_ids_equal_a_pre_hook_on_transformers(any_model, hf, layer):
    prompt, strength = TEXT[:8], 6.0
    vector = gpt2.steering_vector(any_model, PLUS, MINUS, layer)
    want = hf_greedy(hf, prompt, 12, layer, strength * vector)
    plain = hf_greedy(hf, prompt, 12)
    assert want != plain  # the steering changes the continuation
    with gpt2.steer(any_model, {layer: vector}, strength) as steering:
        got = gpt2.generate(any_model, torch.tensor([prompt]), 12, steering=steering)[0].tolist()
    assert got == want
    baseline, steered = gpt2.generate_steered(any_model, torch.tensor(prompt), {layer: vector}, 12, strength)
    assert (baseline[0].tolist(), steered[0].tolist()) == (plain, want)
    with gpt2.steer(any_model, {layer: vector}, strength):  # a plain forward pass in the with
        with torch.inference_mode():
            logits = any_model(torch.tensor([want[:-1]]))[0, -1]
    assert int(logits.argmax()) == want[-1]


def test_steered_rows_beside_plain_ones_in_one_loop(any_model):
    """Two rows of one decode loop, sampled with one seed: the baseline row is exactly the
    plain generation with that seed, and a steered row exactly the steered one alone."""
    prompt, vector = torch.tensor(TEXT[:5]), gpt2.steering_vector(any_model, PLUS, MINUS, 1)
    settings = dict(temperature=1.0, top_k=50, seed=11)
    loop = gpt2.BatchedGenerator(any_model)
    try:
        baseline, steered = gpt2.generate_steered(loop, prompt, {1: vector}, 10, strength=4.0, **settings)
        assert baseline[0].tolist() == gpt2.generate(any_model, prompt, 10, **settings)[0].tolist()
        with gpt2.steer(any_model, {1: vector}, 4.0) as steering:
            alone = gpt2.generate(any_model, prompt, 10, steering=steering, **settings)
        assert steered[0].tolist() == alone[0].tolist() != baseline[0].tolist()
    finally:
        loop.close()


def test_steering_chosen_rows_of_a_batch(model):
    prompt, vector = torch.tensor([TEXT[:6]] * 3), gpt2.steering_vector(model, PLUS, MINUS, 1)
    with torch.inference_mode():
        plain = model(prompt)
        with gpt2.steer(model, {1: vector}, 5.0, rows=[1]):
            mixed = model(prompt)
        with gpt2.steer(model, {1: vector}, 5.0):
            steered = model(prompt)
    torch.testing.assert_close(mixed[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(mixed[2], plain[2], rtol=0, atol=0)
    torch.testing.assert_close(mixed[1], steered[1], rtol=1e-6, atol=1e-5)
    assert (mixed[1] - plain[1]).abs().max() > 1e-3


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (lambda m: gpt2.attribute(m, [1, 2, 50257], 0), "unknown token id 50257 in ids: ids are 0..50256"),
    (lambda m: gpt2.attribute(m, [1, 2, 3], 0, target=-1), "unknown token id -1 for target"),
    (lambda m: gpt2.attribute(m, [1, 2, 3], 0, contrast=10 ** 6), "unknown token id 1000000 for contrast"),
    (lambda m: gpt2.attribute(m, [1, 2, 3], 1, target=5, contrast=5), "target and contrast are the same token"),
    (lambda m: gpt2.attribute(m, [1, 2, 3], 3), "position must be an integer in 0..2 (the text has 3 tokens), got 3"),
    (lambda m: gpt2.attribute(m, [1, 2, 3], -1), "position must be an integer in 0..2"),
    (lambda m: gpt2.attribute(m, [], 0), "ids is empty"),
    (lambda m: gpt2.saliency(m, [1, 2, 3], 5), "position must be an integer in 0..2 (the text has 3 tokens), got 5"),
    (lambda m: gpt2.saliency(m, [1, 2, 3], 1, target=50257), "unknown token id 50257 for target"),
    (lambda m: gpt2.patch_heads(m, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]),
     "the clean and corrupted prompts must have the same number of tokens: clean has 5, corrupted has 6"),
    (lambda m: gpt2.patch_residual(m, [1, 2, 3], [1, 2]), "clean has 3, corrupted has 2"),
    (lambda m: gpt2.patch_residual(m, [1, 2, 3], [1, 2, 99999]), "unknown token id 99999 in corrupted"),
    (lambda m: gpt2.patch_heads(m, [1, 2, 3], [1, 2, 3]), "the metric is the same on both prompts"),
    (lambda m: gpt2.patch(m, [1, 2, 3], [1, 2, 4], level="layers"), "level must be one of 'heads', 'residual', got 'layers'"),
    (lambda m: gpt2.steering_vector(m, [1, 2], [3], 3), "layer must be an integer in 0..2 (the model has 3 blocks), got 3"),
    (lambda m: gpt2.steering_vector(m, [1, 2], [], 1), "minus is empty"),
    (lambda m: gpt2.Steering(m, {-1: torch.zeros(48)}), "layer must be an integer in 0..2"),
    (lambda m: gpt2.Steering(m, {1: torch.zeros(48)}, strength=float("nan")), "strength must be a finite number, got nan"),
    (lambda m: gpt2.Steering(m, {1: torch.zeros(48)}, strength=float("inf")), "strength must be a finite number, got inf"),
    (lambda m: gpt2.Steering(m, {1: torch.zeros(47)}), "must have shape (48,) (n_embd), got (47,)"),
    (lambda m: gpt2.Steering(m, {1: torch.full((48,), float("nan"))}), "non-finite values"),
])
def test_bad_input_has_a_clear_message(model, call, message):
    with pytest.raises(ValueError) as error:
        call(model)
    assert message in str(error.value)


def test_a_refused_steering_leaves_no_hook(model):
    with pytest.raises(ValueError):
        with gpt2.steer(model, {1: torch.zeros(48)}, strength=float("inf")):
            pass
    assert not any(block._forward_pre_hooks for block in model.h)


# -- concurrency ---------------------------------------------------------------------------------
def test_concurrent_requests_equal_their_lone_results(any_model):
    """Attribution, both patchings, saliency, a steered generation and plain generations at
    once, on threads: each equals its lone result."""
    vector = gpt2.steering_vector(any_model, PLUS, MINUS, 1)
    prompt = torch.tensor([TEXT[:8]])

    def steered():
        with gpt2.steer(any_model, {1: vector}, 6.0) as steering:
            return gpt2.generate(any_model, prompt, 10, steering=steering)[0].tolist()

    jobs = {
        "attribution": lambda: gpt2.attribute(any_model, TEXT, 15).heads,
        "heads": lambda: gpt2.patch_heads(any_model, CLEAN, CORRUPTED).grid,
        "residual": lambda: gpt2.patch_residual(any_model, CLEAN, CORRUPTED).grid,
        "saliency": lambda: gpt2.saliency(any_model, TEXT, 20).scores,
        "steered": steered,
        "plain": lambda: gpt2.generate(any_model, prompt, 10)[0].tolist(),
        "sampled": lambda: gpt2.generate(any_model, prompt, 10, temperature=1.0, seed=3)[0].tolist(),
    }
    alone = {name: job() for name, job in jobs.items()}
    results, errors = {}, []

    def run(name, i):
        try:
            results[name, i] = jobs[name]()
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=run, args=(name, i)) for i in range(2) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (name, _), got in results.items():
        if isinstance(got, list):
            assert got == alone[name], name
        else:
            torch.testing.assert_close(got, alone[name], atol=1e-5, rtol=1e-5, msg=name)
    assert alone["steered"] != alone["plain"]


# -- the fast tiers ------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", ["bf16", "int8"])
def test_fast_tiers_stay_close_to_fp32(sharp_dir, model, tier):
    """bf16 / int8: attribution from the tier's own activations (its parts still sum to its
    metric), patching in the tier's own passes, saliency in fp32 on the widened weights."""
    fast = gpt2.load_model(sharp_dir, compile=False, **gpt2.TIERS[tier])
    want = gpt2.attribute(model, TEXT, 10)
    with gpt2.capture_attention(fast, residuals=True, values=True) as capture, torch.inference_mode():
        fast(torch.tensor([TEXT]))
    for got in (gpt2.attribute(fast, TEXT, 10, want.target, want.contrast),
                gpt2.attribute(fast, TEXT, 10, want.target, want.contrast, capture=capture)):
        assert got.total() == pytest.approx(got.metric, abs=ATOL)
        assert got.metric == pytest.approx(want.metric, abs=0.05 * abs(want.metric))
        torch.testing.assert_close(got.heads, want.heads, atol=0.05, rtol=0)
        torch.testing.assert_close(got.mlps, want.mlps, atol=0.05, rtol=0)
    for fn in (gpt2.patch_heads, gpt2.patch_residual):
        want_grid = fn(model, CLEAN, CORRUPTED)
        got_grid = fn(fast, CLEAN, CORRUPTED, want_grid.target, want_grid.contrast)
        torch.testing.assert_close(got_grid.grid, want_grid.grid, atol=0.1, rtol=0)
    want_s = gpt2.saliency(model, TEXT, 20)
    got_s = gpt2.saliency(fast, TEXT, 20, want_s.target, want_s.contrast)
    assert got_s.scores.dtype == torch.float32
    torch.testing.assert_close(got_s.scores, want_s.scores, rtol=0, atol=0.05 * float(want_s.scores.abs().max()))


def test_int8_saliency_is_fp32_autograd_on_the_dequantised_weights(sharp_dir, monkeypatch):
    """The int8 tier's saliency is exactly an fp32 model's with the dequantised weights (and
    the tier's input embeddings: their sum rounded to the tier's stream dtype)."""
    from gpt2 import passes

    fast = gpt2.load_model(sharp_dir, compile=False, quantize="int8")
    widened = gpt2.load_model(sharp_dir, compile=False)
    with torch.no_grad():
        for a, b in zip(widened.modules(), fast.modules()):
            if isinstance(b, torch.nn.LayerNorm) or type(b).__name__ == "Embedding":
                a.weight.copy_(b.weight.float())
                if getattr(b, "bias", None) is not None:
                    a.bias.copy_(b.bias.float())
            elif hasattr(b, "scales"):
                w, bias = passes.float_weights(b)
                a.weight.copy_(w)
                a.bias.copy_(bias)
    got = gpt2.saliency(fast, TEXT, 15)
    embed = passes.embed
    monkeypatch.setattr(passes, "embed", lambda model, ids, start=0: embed(fast, ids, start).float())
    want = gpt2.saliency(widened, TEXT, 15, got.target, got.contrast)
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tier", ["fp32", "bf16", "int8"])
def test_compiled_decode_step_adds_the_steering_itself(sharp_dir, tier, monkeypatch):
    """A steered generation keeps the one-call decode step (gpt2.fast.kernels.decode_step),
    which adds the vector to the steered row only, with the same bits as the module path."""
    from gpt2.fast import kernels

    fast = compiled(gpt2.load_model(sharp_dir, **gpt2.TIERS[tier]))
    vector = gpt2.steering_vector(fast, PLUS, MINUS, 1)
    prompt = torch.tensor(TEXT[:6])
    fused_steps = []
    real = kernels._hooked
    monkeypatch.setattr(kernels, "_hooked", lambda *a: fused_steps.append(real(*a)) or fused_steps[-1])
    loop = gpt2.BatchedGenerator(fast)
    try:
        baseline, steered = gpt2.generate_steered(loop, prompt, {1: vector}, 8, 5.0)
        assert fused_steps and all(hooked is not None and hooked[0] is not None for hooked in fused_steps)
        fused_steps.clear()
        # the module path: any other hook on a block sends a step there
        handle = fast.h[0].register_forward_hook(lambda m, a, out: None)
        try:
            slow = gpt2.generate_steered(loop, prompt, {1: vector}, 8, 5.0)
        finally:
            handle.remove()
        assert all(hooked is None for hooked in fused_steps)
    finally:
        loop.close()
    assert [t.tolist() for t in slow] == [baseline.tolist(), steered.tolist()]
    assert baseline.tolist() != steered.tolist()
    from gpt2.kv_cache import CacheBatch, KVCache

    def step_logits(module_path: bool) -> torch.Tensor:  # one batched step: row 1 steered
        caches = [KVCache(fast.config, 1, 16, fast.device) for _ in range(2)]
        with gpt2.steer(fast, {1: vector}, 5.0) as steering:
            steering.bind(caches[1])
            handle = fast.h[0].register_forward_hook(lambda m, a, out: None) if module_path else None
            try:
                with torch.inference_mode():
                    for c in caches:
                        fast(prompt[None], c)
                    return fast(torch.tensor([[7], [7]]), CacheBatch(caches))
            finally:
                if handle is not None:
                    handle.remove()
    assert torch.equal(step_logits(False), step_logits(True))


def test_steering_hooks_come_and_go_while_steered_steps_run(sharp_dir):
    """One request's `gpt2.steer` registers and removes hooks on the shared model while
    another's compiled decode steps read the blocks' hooks (`kernels._hooked`): no error,
    and every steered generation is its lone one."""
    model = compiled(gpt2.load_model(sharp_dir))
    vector = gpt2.steering_vector(model, PLUS, MINUS, 1)
    prompt = torch.tensor([TEXT[:8]])

    def steered():
        with gpt2.steer(model, {1: vector}, 6.0) as steering:
            return gpt2.generate(model, prompt, 10, steering=steering)[0].tolist()

    alone = steered()
    stop, errors = threading.Event(), []

    def churn():
        try:
            while not stop.is_set():
                with gpt2.steer(model, {0: vector, 1: vector, 2: vector}, 1.0):
                    pass
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    churner = threading.Thread(target=churn)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns between almost every bytecode
    churner.start()
    try:
        results = [steered() for _ in range(150)]
    finally:
        stop.set()
        churner.join()
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert all(r == alone for r in results)
