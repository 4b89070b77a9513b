"""The CUDA path: the same checks as on the CPU, on a GPU, against transformers on that GPU.

They need a CUDA device, so they are skipped elsewhere (CI has none); their last run on one
is recorded in benchmarks/CUDA.md. On a GPU the decode kernels (CPU code) are not used: the
model runs its eager path, and `compile_kernels` must say so rather than fail.
"""
import concurrent.futures as cf

import pytest
import torch

import gpt2
from conftest import hf_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module", autouse=True)
def exact_fp32_products():
    """Full fp32 products (no TF32) on both sides, so that 1e-4 means what it means on the CPU."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture(scope="module")
def model(tiny_dir) -> gpt2.GPT:
    return gpt2.load_model(tiny_dir, device="cuda")


@pytest.fixture(scope="module")
def hf(tiny_dir):
    return hf_reference(tiny_dir).to("cuda")


def _ids(batch: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50257, (batch, T), generator=torch.Generator().manual_seed(seed)).cuda()


def test_loads_onto_the_gpu_and_an_asked_compile_says_why_not(model, tiny_dir):
    assert model.device.type == "cuda" and all(p.is_cuda for p in model.parameters())
    assert model.compile_status is None  # load_model compiles on the CPU only
    other = gpt2.load_model(tiny_dir, device="cuda", compile=False)
    status = gpt2.compile_kernels(other, background=False)
    assert not status.ready and "CPU-only" in status.error
    assert gpt2.generate(other, _ids(1, 5), 3).is_cuda  # still runs, eager


def test_logits_match_transformers_full_and_stepped(model, hf):
    idx = _ids(2, 40)
    with torch.no_grad():
        want = hf(idx).logits
        full = model(idx)
        cache = gpt2.KVCache(model.config, 2, 40, "cuda")
        stepped = torch.cat([model(idx[:, t:t + 1], cache) for t in range(40)], dim=1)
    torch.testing.assert_close(full, want, atol=1e-4, rtol=0)
    torch.testing.assert_close(stepped, want, atol=1e-4, rtol=0)


def test_logits_match_the_cpu(model, tiny_dir):
    idx = _ids(1, 33, seed=1)
    cpu = gpt2.load_model(tiny_dir, compile=False)
    with torch.no_grad():
        torch.testing.assert_close(model(idx).cpu(), cpu(idx.cpu()), atol=1e-4, rtol=0)


def test_greedy_generate_matches_transformers(model, hf):
    idx = _ids(2, 12, seed=2)
    want = hf.generate(idx, max_new_tokens=24, do_sample=False, pad_token_id=0)
    got = gpt2.generate(model, idx, 24)
    assert got.is_cuda and torch.equal(got, want)


def test_seeded_sampling_repeats_on_the_gpu(model):
    idx = _ids(1, 8, seed=3)
    runs = [gpt2.generate(model, idx, 20, temperature=0.9, top_k=50, top_p=0.95, seed=7) for _ in range(2)]
    other = gpt2.generate(model, idx, 20, temperature=0.9, top_k=50, top_p=0.95, seed=8)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], other)


def test_captured_attention_matches_output_attentions(model, hf):
    idx = _ids(2, 25, seed=4)
    with torch.no_grad():
        want = hf(idx, output_attentions=True).attentions
    with gpt2.capture_attention(model) as att:
        with torch.no_grad():
            model(idx)
    for layer in range(model.config.n_layer):
        assert att[layer].shape == (2, 4, 25, 25)
        torch.testing.assert_close(att[layer].to(want[layer].device), want[layer], atol=1e-5, rtol=0)


def test_capture_through_generation_equals_capture_of_the_full_text(model):
    idx = _ids(1, 10, seed=5)
    with gpt2.capture_attention(model) as att:
        ids = gpt2.generate(model, idx, 12, temperature=0.8, top_k=40, seed=3)
    with gpt2.capture_attention(model) as whole:
        with torch.no_grad():
            model(ids)
    assert att.num_tokens == ids.size(1)
    for layer in range(model.config.n_layer):
        torch.testing.assert_close(att[layer], whole[layer], atol=1e-5, rtol=0)


def test_batched_generator_rows_equal_lone_runs(model):
    """No batch-invariant kernels on a GPU: the loop runs each request as its own one-row
    pass there, so every request must still get exactly its lone run's ids."""
    batcher = gpt2.BatchedGenerator(model)
    try:
        prompts = [_ids(1, n, seed=n)[0] for n in (5, 9, 14)]
        settings = [dict(), dict(temperature=0.8, top_k=40, seed=1), dict(temperature=1.0, top_p=0.9, seed=2)]
        alone = [gpt2.generate(model, p[None], 12, **s) for p, s in zip(prompts, settings)]
        with cf.ThreadPoolExecutor(3) as pool:
            together = list(pool.map(lambda ps: batcher.generate(ps[0], 12, **ps[1]), zip(prompts, settings)))
        for a, b in zip(alone, together):
            assert torch.equal(a, b)
    finally:
        batcher.retire()


@pytest.mark.parametrize("tier", ["bf16", "int8"])
def test_precision_tiers_run_and_agree(tiny_dir, model, tier):
    fast = gpt2.load_model(tiny_dir, device="cuda", **gpt2.TIERS[tier])
    idx = _ids(2, 30, seed=6)
    fidelity = gpt2.tiers.compare_tiers(model, fast, idx)
    assert fidelity.top1_agreement >= 0.9, fidelity
    out = gpt2.generate(fast, idx[:1, :8], 8)
    assert out.shape == (1, 16) and out.is_cuda


def test_knockout_equals_transformers_with_the_heads_zeroed(model, hf):
    from test_explain import hf_greedy

    idx, heads = _ids(1, 10, seed=7), {0: [1, 2], 1: [3]}
    with gpt2.ablate_heads(model, heads) as ablation:
        ours = gpt2.generate(model, idx, 12, ablation=ablation)
    assert torch.equal(ours, hf_greedy(hf, idx, 12, heads))


def test_gradients_match_the_cpu(tiny_dir):
    """A training step's gradients on the GPU equal the CPU's (the trainer itself is CPU-only)."""
    idx = _ids(2, 20, seed=8)
    grads = []
    for device in ("cpu", "cuda"):
        net = gpt2.load_model(tiny_dir, device=device, compile=False).train()
        logits = net(idx.to(device))
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), idx.to(device)[:, 1:].flatten())
        loss.backward()
        grads.append({n: p.grad.cpu() for n, p in net.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-4, rtol=1e-3, msg=name)
