"""The compiled one-row kernels (gpt2.fast.kernels): used when decoding, equal to eager, safe to
share between threads, and a failed compile leaves a working eager model."""
import os
import subprocess
import sys
import threading

import pytest
import torch
from torch.profiler import profile

import gpt2
from conftest import ROOT, compiled
from gpt2.fast import inductor, kernels

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
    """The ATen matmul ops one decode step runs."""
    cache = gpt2.KVCache(model.config, 1, idx.size(1) + 1)
    with torch.inference_mode():
        model(idx, cache)
        with profile() as prof:
            model(torch.tensor([[5]]), cache)
    names = {e.key for e in prof.key_averages()}
    return names & {"aten::addmm", "aten::mm", "aten::matmul", "aten::_weight_int8pack_mm",
                    "mkldnn::_linear_pointwise"}


@pytest.mark.parametrize("tier", TIERS)
def test_compiled_decode_matches_eager_and_skips_the_library_kernels(tiny_dir, tier):
    eager = gpt2.load_model(tiny_dir, compile=False, **TIERS[tier])
    fast = compiled(gpt2.load_model(tiny_dir, **TIERS[tier]))
    idx = torch.tensor([[464, 2068, 7586, 21831, 18045, 625, 262]])
    ref, out = decode_logits(eager, idx, 6), decode_logits(fast, idx, 6)
    tol = 1e-5 if tier == "fp32" else 2e-2 * ref.abs().max().item()
    torch.testing.assert_close(out, ref, atol=tol, rtol=0)
    assert matmul_ops(eager, idx)  # eager decode runs PyTorch's/oneDNN's kernels ...
    assert not matmul_ops(fast, idx)  # ... compiled decode none of them
    with torch.inference_mode():  # prefill (many rows) stays on oneDNN's GEMM
        torch.testing.assert_close(fast(idx).float(), eager(idx).float(), atol=0, rtol=0)


def test_compile_false_stays_eager(tiny_dir):
    model = gpt2.load_model(tiny_dir, compile=False)
    assert model.compile_status is None
    assert not any(getattr(m, "use_kernels", False) for m in model.modules())


def test_kernels_only_in_inference_mode(tiny_dir):
    """With autograd merely off, a one-row call takes the eager path: the compiled code
    knows nothing of autograd. With autograd recording, the eager path is `F.linear`."""
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
    """No C++ compiler: one line says so and how to get one (not inductor's many lines, not
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
    env = {**os.environ, "CXX": "/nonexistent/c++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ERROR:" in run.stdout and "EAGER OK" in run.stdout
    assert run.stderr.splitlines() == [f"WARNING:gpt2.fast.kernels:{kernels.NO_COMPILER}"]
    assert "install build-essential (Debian/Ubuntu)" in run.stderr


def test_a_script_that_ends_during_the_compile_exits_cleanly(tiny_dir, tmp_path):
    """Interpreter shutdown waits for a running compile (the README's promise) instead of
    failing it with "cannot schedule new futures after interpreter shutdown" or "can't
    register atexit after shutdown" on stderr. Twice: a cold inductor cache, then a warm one,
    where the compile is short enough to be mid-way when the script ends."""
    script = f"""
import atexit, torch
import gpt2
model = gpt2.load_model({str(tiny_dir)!r})
atexit.register(lambda: print("kernels at exit:", model.compile_status.ready))
print(gpt2.generate(model, torch.tensor([[1, 2, 3]]), 2).tolist())
"""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "PYTHONPATH": str(ROOT)}
    for _ in ("cold", "warm"):
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                             timeout=600)
        assert (run.returncode, run.stderr) == (0, ""), run.stderr[-3000:]
        assert "kernels at exit: True" in run.stdout


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


def test_dynamo_disabled_fails_the_build_not_a_request(tiny_dir):
    script = f"""
import torch, gpt2
model = gpt2.load_model({str(tiny_dir)!r}, quantize="int8", compile=False)
status = gpt2.compile_kernels(model, background=False)
assert not status.ready and "inductor" in status.error, status.error
assert not any(getattr(m, "use_kernels", False) for m in model.modules())
print("EAGER OK")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "TORCHDYNAMO_DISABLE": "1"})
    assert run.returncode == 0 and "EAGER OK" in run.stdout, run.stderr[-3000:]


def test_a_model_off_the_cpu_fails_the_build_cleanly(tiny_dir):
    """The kernels read raw CPU pointers: another device must be refused, not read."""
    model = gpt2.load_model(tiny_dir, compile=False).to("meta")
    status = gpt2.compile_kernels(model, background=False)
    assert not status.ready and "CPU-only" in status.error
    assert not any(getattr(m, "use_kernels", False) for m in model.modules())


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("out_features,in_features", [(40, 24), (100, 5120)])
def test_kernels_equal_the_eager_math_at_odd_and_wide_sizes(tier, out_features, in_features):
    """Widths that are not a multiple of the vector length, a reduction past 4096 (where
    inductor specialises, so another kernel is built), and a row that is a slice."""
    layer = torch.nn.Linear(in_features, out_features)
    torch.nn.init.normal_(layer.weight)
    args = {"fp32": (layer.weight.data, None, layer.bias.data),
            "bf16": (layer.weight.data.bfloat16(), None, layer.bias.data.bfloat16())}.get(tier)
    if args is None:
        q = gpt2.fast.int8.Int8Linear(layer.weight, layer.bias)
        args = (q.weight, q.scales, q.bias)
    x_dtype = torch.bfloat16 if tier == "bf16" else torch.float32
    out_dtype = args[2].dtype
    with torch.inference_mode():
        kernels._ensure_kernel((torch.zeros(1, in_features, dtype=x_dtype), *args, out_dtype))
        rows = torch.randn(3, in_features).to(x_dtype)
        row = rows[1:2]  # a storage offset
        got = kernels.linear(row, *args, out_dtype=out_dtype)
        want = kernels._product(row, *args, out_dtype)
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2 * want.abs().max().item())
        with pytest.raises(AssertionError):  # a strided row is refused by the compiled code
            kernels.linear(torch.randn(1, 2 * in_features).to(x_dtype)[:, ::2], *args, out_dtype=out_dtype)


def test_building_new_kernels_while_others_decode(tiny_dir, tmp_path, monkeypatch):
    """A second model compiles its kinds of call in the background while threads decode on a
    compiled one: they never wait for the compiler, and keep their answers."""
    served = compiled(gpt2.load_model(tiny_dir))
    prompts = [torch.tensor([[i + 1, 2 * i + 3, 5]]) for i in range(3)]
    want = [gpt2.generate(served, p, 12, temperature=1.0, seed=i) for i, p in enumerate(prompts)]
    # An empty on-disk cache: from a warm one the build can end (0.2 s) before a thread has
    # decoded twice, and the count below would prove nothing.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    kernels._KERNELS.pop(kernels._key(*gpt2.load_model(tiny_dir, compile=False, **TIERS["int8"])
                                      .h[0].mlp.c_fc.kernel_example()), None)  # new for this build
    status = gpt2.load_model(tiny_dir, **TIERS["int8"]).compile_status
    runs, wrong = [0], []

    def decode(i: int) -> None:
        while not status.done.is_set():
            runs[0] += 1
            try:
                if not torch.equal(gpt2.generate(served, prompts[i], 12, temperature=1.0, seed=i), want[i]):
                    wrong.append(i)
            except Exception as e:  # e.g. a module call caught by a torch.fx trace (see model.Pinned)
                wrong.append(repr(e))
                return

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong and status.ready and runs[0] > len(prompts)


def test_changing_dtypes_under_built_kernels_stays_correct(tiny_dir):
    """`model.float()` after the build: calls of a kind no build compiled run the same math
    eagerly instead of failing."""
    model = compiled(gpt2.load_model(tiny_dir, **TIERS["int8"])).float()
    eager = gpt2.load_model(tiny_dir, compile=False, **TIERS["int8"]).float()
    idx = torch.tensor([[5, 6, 7]])
    ref = decode_logits(eager, idx, 4)
    torch.testing.assert_close(decode_logits(model, idx, 4), ref, atol=1e-3 * ref.abs().max().item(), rtol=0)


def test_a_product_reading_its_inputs_in_another_order_is_refused():
    """Called directly, compiled code gets its inputs by position: a graph whose inputs are
    not in the order `inductor.inputs` passes them must not become a kernel."""
    def reads_x_first(x, weight, scales, bias, out_dtype):
        return (x.float() * weight.float()).sum(-1).to(out_dtype)[None]

    key = (torch.float32, torch.float32, None, None, torch.float32)
    with torch.inference_mode(), pytest.raises(Exception, match="unexpected graph inputs"):
        inductor.compile_product(reads_x_first, *kernels._stand_ins(key, 64, 32))


def test_inductor_cache_is_a_private_folder(tmp_path):
    """Not /tmp/torchinductor_<user>: its pickles and shared objects are loaded and run."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["GPT2_CACHE_DIR"] = str(tmp_path / "cache")
    script = ("import os, gpt2; from gpt2.fast import cache; "
              "print(cache.use_private_inductor_cache()); print(os.environ['TORCHINDUCTOR_CACHE_DIR'])")
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    folder = tmp_path / "cache" / "inductor"
    assert out.stdout.split() == [str(folder)] * 2
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_cache_folder_others_may_write_is_refused(tmp_path, monkeypatch):
    from gpt2.fast import cache

    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path))
    (tmp_path / "inductor").mkdir(mode=0o777)
    (tmp_path / "inductor").chmod(0o777)
    with pytest.raises(PermissionError, match="may be written by other users"):
        cache.private_dir("inductor")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    model = gpt2.GPT(gpt2.GPTConfig(vocab_size=50257, context_length=8, n_embd=16, n_layer=1, n_head=2)).eval()
    status = gpt2.compile_kernels(model)
    assert status.done.is_set() and "may be written by other users" in status.error
