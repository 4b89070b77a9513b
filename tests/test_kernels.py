"""The decode kernels in a model (gpt2.fast.kernels): used when decoding, equal to eager, safe
to share between threads, and a failed build leaves a working eager model."""
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from torch.profiler import profile

import gpt2
from conftest import ROOT, compiled, runnable_isas
from gpt2.fast import kernels, rowdot

TIERS = gpt2.TIERS


def decode_logits(model: gpt2.GPT, idx: torch.Tensor, steps: int) -> torch.Tensor:
    """Logits of `steps` one-token decode steps after prefilling `idx` [1, T]."""
    cache = gpt2.KVCache(model.config, 1, idx.size(1) + steps)
    out = []
    with torch.inference_mode():
        model(idx, cache)
        for t in range(steps):
            out.append(model(torch.tensor([[t * 97 % 50257]]), cache)[:, -1].float())
    return torch.cat(out)


def matmul_ops(model: gpt2.GPT, idx: torch.Tensor) -> set[str]:
    """The ATen matmul and attention ops one decode step runs."""
    cache = gpt2.KVCache(model.config, 1, idx.size(1) + 1)
    with torch.inference_mode():
        model(idx, cache)
        with profile() as prof:
            model(torch.tensor([[5]]), cache)
    names = {e.key for e in prof.key_averages()}
    return names & {"aten::addmm", "aten::mm", "aten::matmul", "aten::_weight_int8pack_mm",
                    "mkldnn::_linear_pointwise", "aten::scaled_dot_product_attention"}


@pytest.mark.parametrize("tier", TIERS)
def test_compiled_decode_matches_eager_and_skips_the_library_kernels(tiny_dir, tier):
    eager = gpt2.load_model(tiny_dir, compile=False, **TIERS[tier])
    fast = compiled(gpt2.load_model(tiny_dir, **TIERS[tier]))
    idx = torch.tensor([[464, 2068, 7586, 21831, 18045, 625, 262]])
    ref, out = decode_logits(eager, idx, 6), decode_logits(fast, idx, 6)
    tol = 1e-5 if tier == "fp32" else 2e-2 * ref.abs().max().item()
    torch.testing.assert_close(out, ref, atol=tol, rtol=0)
    assert matmul_ops(eager, idx)  # eager decode runs PyTorch's/oneDNN's kernels ...
    assert not matmul_ops(fast, idx)  # ... decoding with ours none of them, attention included
    long = torch.arange(40).view(1, 40) * 37 % 50257
    with torch.inference_mode():  # prefill beyond 16 rows stays on oneDNN's GEMM
        torch.testing.assert_close(fast(long).float(), eager(long).float(), atol=0, rtol=0)
        # A short prefill runs on the kernels where the weights are not in the stream's dtype:
        # int8 (torch's int8 product is slower), and bf16 weights in an fp32 stream (a CPU
        # without bf16 dot products, `gpt2.tiers.stream_dtype`), where eager widens them for
        # a GEMM that sums in another order.
        want = eager(idx).float()
        if fast.h[0].attn.c_attn.weight.dtype != fast.wpe.weight.dtype:
            tol = (2e-2 if tier == "int8" else 1e-5) * want.abs().max().item()
            torch.testing.assert_close(fast(idx).float(), want, atol=tol, rtol=0)
        else:
            torch.testing.assert_close(fast(idx).float(), want, atol=0, rtol=0)


def test_compile_false_stays_eager(tiny_dir):
    model = gpt2.load_model(tiny_dir, compile=False)
    assert model.compile_status is None
    assert not any(getattr(m, "use_kernels", False) for m in model.modules())


def test_kernels_only_in_inference_mode(tiny_dir):
    """With autograd merely off, a one-row call takes the eager path: the C kernels know
    nothing of autograd. With autograd recording, the eager path is `F.linear`."""
    model = compiled(gpt2.load_model(tiny_dir))
    layer = model.h[0].mlp.c_fc
    x = torch.randn(1, 1, model.config.n_embd)
    calls = {}
    for mode in ("inference", "no_grad", "grad"):
        context = {"inference": torch.inference_mode, "no_grad": torch.no_grad}.get(mode, torch.enable_grad)
        with context(), profile() as prof:
            layer(x)
        calls[mode] = {e.key for e in prof.key_averages()}
    assert "gpt2.fast.kernels.linear" in calls["inference"]
    assert "gpt2.fast.kernels.linear" not in calls["no_grad"] and "mkldnn::_linear_pointwise" in calls["no_grad"]
    assert "gpt2.fast.kernels.linear" not in calls["grad"] and "aten::addmm" in calls["grad"]


def test_generation_during_and_after_the_background_compile_agree(tiny_dir):
    model = gpt2.load_model(tiny_dir)  # compiling in the background from here
    idx = torch.tensor([[1, 2, 3, 4]])
    first = gpt2.generate(model, idx, 12)
    assert compiled(model).compile_status.seconds > 0
    assert torch.equal(gpt2.generate(model, idx, 12), first)


def test_threads_sharing_a_compiled_model_get_their_own_answers(tiny_dir):
    model = compiled(gpt2.load_model(tiny_dir))
    prompts = [torch.tensor([[i + 1, 2 * i + 3, 5]]) for i in range(6)]
    expected = [gpt2.generate(model, p, 16, temperature=1.0, seed=i) for i, p in enumerate(prompts)]
    got = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        barrier.wait()
        got[i] = gpt2.generate(model, prompts[i], 16, temperature=1.0, seed=i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e, g in zip(expected, got):
        assert torch.equal(e, g)


def test_a_failed_compile_leaves_a_working_eager_model(tiny_dir, tmp_path):
    """No C++ compiler (and no build in the cache): one line says so and how to get one (not
    once per model), the status says why, the model stays eager and correct."""
    script = f"""
import logging, torch
logging.basicConfig(level=logging.WARNING)
import gpt2
model = gpt2.load_model({str(tiny_dir)!r})
assert not gpt2.load_model({str(tiny_dir)!r}, quantize="int8").compile_status.wait(timeout=300)
assert not model.compile_status.wait(timeout=300)
print("ERROR:", model.compile_status.error)
assert not any(getattr(m, "use_kernels", False) for m in model.modules())
ref = gpt2.generate(gpt2.load_model({str(tiny_dir)!r}, compile=False), torch.tensor([[1, 2, 3]]), 8)
assert torch.equal(gpt2.generate(model, torch.tensor([[1, 2, 3]]), 8), ref)
print("EAGER OK")
"""
    env = {**os.environ, "CXX": "/nonexistent/c++", "GPT2_KERNEL_DIR": str(tmp_path / "kernels"),
           "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ERROR: NoCompiler" in run.stdout and "EAGER OK" in run.stdout
    assert run.stderr.splitlines() == [f"WARNING:gpt2.fast.kernels:{kernels.NO_COMPILER}"]
    assert "install build-essential (Debian/Ubuntu)" in run.stderr


def test_a_script_that_ends_during_the_build_exits_cleanly(tiny_dir, tmp_path):
    """Interpreter shutdown waits for a running build (the process waits, as the README
    says) and nothing is printed to stderr. Twice: an empty kernel cache, then a warm one."""
    script = f"""
import atexit, torch
import gpt2
model = gpt2.load_model({str(tiny_dir)!r})
atexit.register(lambda: print("kernels at exit:", model.compile_status.ready))
print(gpt2.generate(model, torch.tensor([[1, 2, 3]]), 2).tolist())
"""
    env = {**os.environ, "GPT2_KERNEL_DIR": str(tmp_path / "kernels"), "PYTHONPATH": str(ROOT)}
    for _ in ("cold", "warm"):
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                             timeout=600)
        assert (run.returncode, run.stderr) == (0, ""), run.stderr[-3000:]


def test_converting_a_compiled_model_turns_its_kernels_off(tiny_dir):
    """to_bf16 / quantize_int8 change the weights under the kernels: back to eager, and a
    new compile_kernels builds for the new weights."""
    model = compiled(gpt2.load_model(tiny_dir))
    gpt2.quantize_int8(model)
    assert model.compile_status is None
    assert not any(getattr(m, "use_kernels", False) for m in model.modules())
    idx = torch.tensor([[5, 6, 7]])
    eager = decode_logits(model, idx, 4)
    assert gpt2.compile_kernels(model, background=False).ready
    assert not matmul_ops(model, idx)
    torch.testing.assert_close(decode_logits(model, idx, 4), eager, atol=2e-2 * eager.abs().max().item(),
                               rtol=0)


def test_a_compiled_model_copies_and_pickles(tiny_dir):
    import copy
    import pickle

    model = compiled(gpt2.load_model(tiny_dir))
    idx = torch.tensor([[1, 2, 3]])
    want = gpt2.generate(model, idx, 6)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert twin.compile_status.ready
        assert torch.equal(gpt2.generate(twin, idx, 6), want)


def test_a_model_off_the_cpu_fails_the_build_cleanly(tiny_dir):
    """The kernels read raw CPU pointers: another device must be refused, not read."""
    model = gpt2.load_model(tiny_dir, compile=False).to("meta")
    status = gpt2.compile_kernels(model, background=False)
    assert not status.ready and "CPU-only" in status.error
    assert not any(getattr(m, "use_kernels", False) for m in model.modules())


def test_changing_dtypes_under_built_kernels_stays_correct(tiny_dir):
    """`model.float()` after the build: calls of a kind no build compiled run the same math
    eagerly instead of failing."""
    model = compiled(gpt2.load_model(tiny_dir, **TIERS["int8"])).float()
    eager = gpt2.load_model(tiny_dir, compile=False, **TIERS["int8"]).float()
    idx = torch.tensor([[5, 6, 7]])
    ref = decode_logits(eager, idx, 4)
    # within the int8 products' quantisation of each row (15 bits), which eager does not do
    torch.testing.assert_close(decode_logits(model, idx, 4), ref, atol=2e-2 * ref.abs().max().item(), rtol=0)


def blocks_one_by_one(model: gpt2.GPT):
    """A no-op forward hook on a block module: the step runs its blocks one module at a time
    (the path capture and knock-out take), not in one call."""
    return model.h[-1].mlp.register_forward_hook(lambda module, args, out: None)


@pytest.mark.parametrize("tier", TIERS)
def test_a_decode_step_in_one_call_gives_the_bits_of_the_blocks_one_by_one(tiny_dir, tier):
    """`kernels.decode_step` (embeddings, every block, ln_f and the head in one library
    call) against the same steps with a hook on a block, which makes them run module by
    module: equal bit for bit, one row and a batch of rows over their own caches; and it is
    what a plain decode step uses."""
    model = compiled(gpt2.load_model(tiny_dir, **TIERS[tier]))
    prompts = [torch.tensor([[464, 2068, 7586]]), torch.tensor([[11, 22, 33, 44, 55, 66]])]

    def steps(hooked: bool) -> torch.Tensor:
        caches = [gpt2.KVCache(model.config, 1, 20) for _ in prompts]
        out = []
        with torch.inference_mode():
            for p, c in zip(prompts, caches):
                model(p, c)
            handle = blocks_one_by_one(model) if hooked else None
            for t in range(5):
                out.append(model(torch.tensor([[t * 131 % 50257]]), caches[0], last_only=True))  # one row
                batch = gpt2.CacheBatch(caches)
                out.append(model(torch.tensor([[t + 7], [t * 3]]), batch, last_only=True).view(1, 2, -1))
            if handle is not None:
                handle.remove()
        return torch.cat([o.view(-1) for o in out])

    assert torch.equal(steps(hooked=False), steps(hooked=True))
    cache = gpt2.KVCache(model.config, 1, 4)
    with torch.inference_mode():
        fused = kernels.decode_step(model, torch.tensor([[5]]), cache)  # the path a plain step takes
        assert fused is not None and fused[1] is not None  # logits too, the int8 tier's head included
        handle = blocks_one_by_one(model)
        assert kernels.decode_step(model, torch.tensor([[5]]), cache) is None
        handle.remove()


@pytest.mark.parametrize("tier", TIERS)
def test_a_short_prompt_piece_is_its_tokens_decoded_one_at_a_time_in_one_call(tiny_dir, tier, monkeypatch):
    """A prompt piece of at most `prefill_rows` tokens runs as the rows of one decode step: one
    library call, no PyTorch product or attention, and the bits of decoding its tokens one at
    a time (the last position's logits, every position's with last_only=False, the cache's
    keys and values), after a filled cache too, and each sequence of a batch as if alone; a
    longer one stays on the GEMM path."""
    model = compiled(gpt2.load_model(tiny_dir, **TIERS[tier]))
    n = kernels.prefill_rows(model)
    bf16_stream = model.wpe.weight.dtype == torch.bfloat16  # a CPU with bf16 dot products
    assert n == (kernels.BF16_PREFILL_ROWS if tier == "bf16" and bf16_stream else kernels.PREFILL_ROWS)
    ids = torch.arange(n + 1).view(1, -1) * 389 % 50257
    calls = []
    real = kernels.decode_step
    monkeypatch.setattr(kernels, "decode_step", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))

    def run(pieces: list[int], last_only: bool = True) -> tuple[torch.Tensor, gpt2.KVCache]:
        cache = gpt2.KVCache.for_model(model, 1, ids.size(1) + 1)
        start, out = 0, []
        with torch.inference_mode():
            for size in pieces:
                out.append(model(ids[:, start:start + size], cache, last_only=last_only))
                start += size
        return torch.cat(out, dim=1), cache

    one_at_a_time, stepped = run([1] * n)
    for pieces in ([n], [3, n - 3]):
        calls.clear()
        with profile() as prof:
            out, cache = run(pieces)
        assert [shape[1] for shape in calls] == pieces  # each piece one call, every token in it
        assert not {e.key for e in prof.key_averages()} & {"aten::mm", "aten::addmm", "aten::_weight_int8pack_mm",
                                                           "mkldnn::_linear_pointwise",
                                                           "aten::scaled_dot_product_attention"}
        assert torch.equal(out[:, -1], one_at_a_time[:, -1]), (tier, pieces)
        assert torch.equal(cache.k[..., :n, :], stepped.k[..., :n, :]) and torch.equal(cache.v[..., :n, :],
                                                                                     stepped.v[..., :n, :])
    every, _ = run([n], last_only=False)  # the head on each row: each one's logits
    assert torch.equal(every, run([1] * n, last_only=False)[0])
    two = torch.cat([ids, ids.flip(1)])  # a batch's pieces: each sequence's rows as if alone
    cache = gpt2.KVCache.for_model(model, 2, ids.size(1) + 1)
    with torch.inference_mode():
        both = model(two[:, :n], cache, last_only=True)
        alone = [model(two[b:b + 1, :n], gpt2.KVCache.for_model(model, 1, n), last_only=True) for b in range(2)]
    assert torch.equal(both, torch.cat(alone))
    calls.clear()
    run([n + 1])
    assert calls == []  # beyond prefill_rows: not a decode step (model._run does not ask)


@pytest.mark.parametrize("tier", TIERS)
def test_a_bf16_stream_keeps_its_cache_in_bf16_with_the_same_bits(tiny_dir, tier):
    """`KVCache.for_model` (what generation and the decode loop use): keys and values in bf16
    where the residual stream is bf16 (each of them is a bf16 value), else fp32; decoding over
    it gives the fp32 cache's bits, eagerly and with the kernels, one row and a batch of rows,
    after prefills on both paths (3 tokens, and 20: oneDNN's GEMM and SDPA)."""
    for model in (gpt2.load_model(tiny_dir, compile=False, **TIERS[tier]),
                  compiled(gpt2.load_model(tiny_dir, **TIERS[tier]))):
        bf16 = model.wpe.weight.dtype == torch.bfloat16
        assert gpt2.KVCache.for_model(model, 1, 8).k.dtype == (torch.bfloat16 if bf16 else torch.float32)
        prompts = [torch.tensor([[464, 2068, 7586]]), torch.arange(20).view(1, 20) * 41 % 50257]

        def steps(dtype: torch.dtype) -> torch.Tensor:
            caches = [gpt2.KVCache(model.config, 1, 32, dtype=dtype) for _ in prompts]
            out = []
            with torch.inference_mode():
                out += [model(p, c).view(-1) for p, c in zip(prompts, caches)]
                for t in range(4):
                    out.append(model(torch.tensor([[t * 131 % 50257]]), caches[1], last_only=True).view(-1))
                    out.append(model(torch.tensor([[t + 7], [t * 3]]), gpt2.CacheBatch(caches)).view(-1))
            return torch.cat(out)

        assert torch.equal(steps(gpt2.KVCache.for_model(model, 1, 1).k.dtype), steps(torch.float32)), tier


@pytest.mark.parametrize("tier", TIERS)
def test_a_capture_keeps_the_one_call_step_with_the_module_paths_record(tiny_dir, tier, monkeypatch):
    """An attention capture's hooks replay after a one-call decode step (`replays_decode`):
    its generations keep that step, and what it records (every layer's maps, the lens's block
    outputs, the values) and the ids are bit for bit the module path's; two captured
    requests decoding together through the loop each get their lone record."""
    model = compiled(gpt2.load_model(tiny_dir, **TIERS[tier]))
    prompts = [torch.tensor([[464, 2068, 7586]]), torch.tensor([[11, 22, 33, 44, 55]])]
    fused = []
    real = kernels._hooked
    monkeypatch.setattr(kernels, "_hooked", lambda *a: fused.append(real(*a)) or fused[-1])

    def record(prompt: torch.Tensor, loop: gpt2.BatchedGenerator | None = None) -> list[torch.Tensor]:
        with gpt2.capture_attention(model, residuals=True, values=True) as att:
            run = loop.stream if loop is not None else lambda *a, **k: gpt2.stream(model, *a, **k)
            ids = torch.stack(list(run(prompt, 6, temperature=0.9, seed=3, capture=att)))
            n, layers = prompt.size(1) + 6, range(model.config.n_layer)
            return [ids, *(att[i] for i in layers), *(att.block_output(i, slice(None)) for i in layers),
                    *(att.values(i, n) for i in layers)]

    one_call = [record(p) for p in prompts]
    assert fused and all(h is not None and h[1] is not None for h in fused)  # the replayed hooks
    handle = blocks_one_by_one(model)
    try:
        fused.clear()
        by_module = [record(p) for p in prompts]
        assert all(h is None for h in fused)
    finally:
        handle.remove()
    for a, b in zip(one_call, by_module):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    loop = gpt2.BatchedGenerator(model)
    try:
        together = [None, None]
        threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, record(prompts[i], loop)))
                   for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        loop.close()
    for a, b in zip(one_call, together):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_weight_replaced_under_the_one_call_step_is_read(tiny_dir):
    """The one-call step describes the weights by pointer once; a weight given new storage
    (assigned `.data`, as `model.to` does) must be read, not the old one."""
    model = compiled(gpt2.load_model(tiny_dir))
    idx = torch.tensor([[5, 6, 7]])
    before = decode_logits(model, idx, 3)
    fc = model.h[0].mlp.c_fc
    fc.weight.data = fc.weight.data * 0.5
    after = decode_logits(model, idx, 3)
    handle = blocks_one_by_one(model)
    assert torch.equal(decode_logits(model, idx, 3), after) and not torch.equal(after, before)
    handle.remove()


def test_a_module_swapped_under_the_one_call_step_is_read(tiny_dir):
    """The one-call step keeps what it read of the model; a block module or the final
    LayerNorm replaced by another (a copy with other weights) must be read, not the old one,
    and give the bits the modules called one by one give."""
    import copy

    model = compiled(gpt2.load_model(tiny_dir, dtype=torch.bfloat16))
    idx = torch.tensor([[5, 6, 7]])
    before = decode_logits(model, idx, 3)
    for parent, name in ((model.h[1].mlp, "c_fc"), (model, "ln_f")):
        new = copy.deepcopy(getattr(parent, name))
        with torch.no_grad():
            new.weight.mul_(0.5)
        setattr(parent, name, new)
        after = decode_logits(model, idx, 3)
        handle = blocks_one_by_one(model)
        assert torch.equal(decode_logits(model, idx, 3), after) and not torch.equal(after, before), name
        handle.remove()
        before = after


@pytest.mark.parametrize("where", ["ln_f", "wte", "wpe"])
def test_a_hook_outside_the_blocks_sends_the_step_module_by_module(tiny_dir, where):
    """The one-call step also runs the embeddings, ln_f and the head: a hook on any of them
    must see the step (so the step runs module by module), with the same bits."""
    model = compiled(gpt2.load_model(tiny_dir, dtype=torch.bfloat16))
    idx = torch.tensor([[5, 6, 7]])
    plain = decode_logits(model, idx, 3)
    seen = []
    handle = getattr(model, where).register_forward_hook(lambda module, args, out: seen.append(out.shape))
    try:
        assert torch.equal(decode_logits(model, idx, 3), plain)
    finally:
        handle.remove()
    # the short prompt's tokens one at a time (within kernels.prefill_rows), its head over them
    # in one call; then every decode step
    assert len(seen) == (1 if where == "ln_f" else 3) + 3
    with torch.inference_mode():
        assert kernels.decode_step(model, torch.tensor([[5]]), gpt2.KVCache(model.config, 1, 4)) is not None


@pytest.mark.parametrize("tier", TIERS)
def test_a_decode_step_with_an_id_outside_the_vocabulary_fails_and_leaves_the_cache(tiny_dir, tier):
    """The one-call step looks the id up in C: an id outside the vocabulary is an IndexError
    (as torch's embedding raises), before anything is written; the generation goes on as if
    the bad step had not been tried."""
    model = compiled(gpt2.load_model(tiny_dir, **TIERS[tier]))
    vocab = model.config.vocab_size
    idx = torch.tensor([[5, 6, 7]])
    caches = [gpt2.KVCache(model.config, 1, 8) for _ in range(2)]
    with torch.inference_mode():
        for cache in caches:
            model(idx, cache)
        for bad in (vocab, -1):
            with pytest.raises(IndexError, match=f"0..{vocab - 1}"):
                model(torch.tensor([[bad]]), caches[0])
        assert caches[0].pos == caches[1].pos == 3
        steps = [torch.cat([model(torch.tensor([[t]]), c) for t in (9, 10)]) for c in caches]
    assert torch.equal(steps[0], steps[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_layer_norm_kernel_equals_torchs(dtype):
    """A decode step's LayerNorm in the library, on every path this CPU runs: torch's values within
    float rounding (bf16: one rounding of the output)."""
    from gpt2.fast import rowdot

    g = torch.Generator().manual_seed(0)
    for C in (1, 7, 64, 768, 1600):
        x = (torch.randn(3, C, generator=g) * 5 + 2).to(dtype)
        w, b = torch.randn(C, generator=g).to(dtype), torch.randn(C, generator=g).to(dtype)
        want = torch.nn.functional.layer_norm(x.float(), (C,), w.float(), b.float(), 1e-5)
        for lib in map(rowdot.build, runnable_isas()):
            got = lib.layer_norm(x, w, b, 1e-5)
            assert got.dtype == dtype and got.shape == x.shape
            tol = 1e-5 if dtype == torch.float32 else 1e-2
            assert (got.float() - want).abs().max().item() <= tol * max(1.0, want.abs().max().item()), C


def slowed(fn, seconds: float = 0.03):
    """fn, taking `seconds` longer each call: a slow path, forced."""
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return fn(*args, **kwargs)
    return slow


def test_the_load_check_keeps_eager_where_the_compiled_step_is_slower(tiny_dir, monkeypatch):
    """GPT2_KERNELS=auto times a decode step both ways at load: with the compiled step made
    slower, the model stays eager (and says so in one line), and still generates eager's ids."""
    monkeypatch.setenv("GPT2_KERNELS", "auto")
    monkeypatch.setattr(rowdot.Library, "decode_step", slowed(rowdot.Library.decode_step))
    model = gpt2.load_model(tiny_dir)
    assert not model.compile_status.wait(timeout=600)
    status = model.compile_status
    assert status.error is None and status.eager and status.speedup < kernels.EAGER_BELOW
    assert status.summary.startswith("decode: eager, faster here than the compiled ") and status.isa in status.summary
    assert not any(layer.use_kernels for layer in kernels.fast_layers(model))
    idx = torch.tensor([[1, 2, 3]])
    assert torch.equal(gpt2.generate(model, idx, 6), gpt2.generate(gpt2.load_model(tiny_dir, compile=False), idx, 6))


def test_the_load_check_takes_the_kernels_where_eager_is_slower(tiny_dir, monkeypatch):
    monkeypatch.setenv("GPT2_KERNELS", "auto")
    monkeypatch.setattr(gpt2.model.Block, "forward", slowed(gpt2.model.Block.forward, 0.01))
    model = compiled(gpt2.load_model(tiny_dir))
    status = model.compile_status
    assert status.speedup > 1 and not status.eager
    assert status.summary == f"decode: compiled {status.isa} kernels ({status.speedup:.2f}x eager's speed on this model)"


def test_gpt2_kernels_off_keeps_every_model_eager(tiny_dir, monkeypatch):
    monkeypatch.setenv("GPT2_KERNELS", "off")
    model = gpt2.load_model(tiny_dir)
    assert model.compile_status.done.is_set() and not model.compile_status.ready
    assert model.compile_status.summary == "decode: eager, the kernels are unavailable (GPT2_KERNELS=off)"
    monkeypatch.setenv("GPT2_KERNELS", "fast")
    with pytest.raises(ValueError, match="GPT2_KERNELS='fast': one of auto, on, off"):
        gpt2.load_model(tiny_dir)


def test_gpt2_cpu_isa_is_checked(monkeypatch):
    monkeypatch.setenv("GPT2_CPU_ISA", "sse9")
    with pytest.raises(rowdot.BuildError, match="not one of avx512, avx2, neon, portable"):
        rowdot.build()
    other = "avx2" if rowdot.native_isa() == "neon" else "neon"
    monkeypatch.setenv("GPT2_CPU_ISA", other)
    with pytest.raises(rowdot.BuildError, match=f"GPT2_CPU_ISA={other}: this CPU runs .* only"):
        rowdot.build()
    monkeypatch.setenv("GPT2_CPU_ISA", "portable")
    assert rowdot.build().isa == "portable" and not rowdot.native_bf16()


def test_a_widening_buffer_made_in_inference_mode_serves_outside_it(monkeypatch):
    """bf16 weights widened for a prefill GEMM (an fp32 stream: a CPU without bf16 dot
    products) in a pooled buffer: one made under inference mode is an inference tensor, which
    torch refuses to write outside it; a later prefill without inference mode (a capture's
    plain pass, saliency) must still get the widened weights."""
    monkeypatch.setattr(kernels, "_pool", [])
    weight = torch.randn(64, 48).bfloat16()
    with torch.inference_mode(), kernels.widened(weight, torch.float32) as inside:
        assert inside.is_inference() and torch.equal(inside, weight.float())
    with torch.no_grad(), kernels.widened(weight, torch.float32) as outside:
        assert outside.is_inference() and torch.equal(outside, weight.float())  # the same buffer
