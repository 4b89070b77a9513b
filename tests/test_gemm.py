"""`gpt2.fast.gemm.linear`: oneDNN's GEMM with the bias and GELU in its epilogue, else F.linear."""
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from gpt2.fast import gemm


def reference(x, weight, bias, gelu):
    """The same math in fp64."""
    y = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    return F.gelu(y, approximate="tanh") if gelu else y


def ops(fn) -> set[str]:
    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("rows", [0, 1, 7, 9, 150, 300])
@pytest.mark.parametrize("with_bias", [False, True])
def test_equals_the_unfused_math(dtype, gelu, rows, with_bias):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(2, rows, 96, generator=g).to(dtype)
    weight = (torch.randn(160, 96, generator=g) * 0.1).to(dtype)
    bias = (torch.randn(160, generator=g) * 0.1).to(dtype) if with_bias else None
    onednn = dtype == torch.float32 or gemm._cpu_has_bf16()  # else F.linear: checked below too
    with torch.inference_mode():
        assert ("mkldnn::_linear_pointwise" in ops(lambda: gemm.linear(x, weight, bias, gelu))) == onednn
        fused = gemm.linear(x, weight, bias, gelu)
        unfused = gemm.gelu_if(F.linear(x, weight, bias), gelu)
    assert fused.shape == (2, rows, 160) and fused.dtype == dtype
    if rows == 0:
        return
    ref = reference(x, weight, bias, gelu)
    fused_err = (fused.double() - ref).abs().max().item()
    unfused_err = (unfused.double() - ref).abs().max().item()
    if dtype == torch.float32:
        assert fused_err < 1e-5
    else:  # the GELU reads the fp32 accumulator: no worse than rounding to bf16 first
        assert fused_err <= unfused_err + 1e-6


def test_strided_input():
    x = torch.randn(3, 10, 64)[:, ::2]  # not contiguous
    weight, bias = torch.randn(32, 64), torch.randn(32)
    with torch.inference_mode():
        torch.testing.assert_close(gemm.linear(x, weight, bias, gelu=True),
                                   F.gelu(F.linear(x, weight, bias), approximate="tanh"))


def test_autograd_gets_f_linear_and_its_gradients():
    """oneDNN's fused op has no backward (the trainer runs these layers with autograd)."""
    weight = torch.randn(32, 64, requires_grad=True)
    x = torch.randn(4, 64)
    called = ops(lambda: gemm.linear(x, weight, gelu=True).sum().backward())
    assert "mkldnn::_linear_pointwise" not in called and weight.grad is not None
    expected = torch.autograd.grad(F.gelu(x @ weight.T, approximate="tanh").sum(), weight)[0]
    torch.testing.assert_close(weight.grad, expected)


def test_respects_mkldnn_switched_off():
    x, weight = torch.randn(4, 64), torch.randn(32, 64)
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
        called = ops(lambda: gemm.linear(x, weight, gelu=True))
    assert "mkldnn::_linear_pointwise" not in called and "aten::mm" in called


def test_mixed_dtypes_behave_as_f_linear():
    x, weight = torch.randn(4, 64, dtype=torch.bfloat16), torch.randn(32, 64, dtype=torch.bfloat16)
    bias = torch.randn(32)  # an fp32 bias with bf16 inputs: F.linear's type rules decide
    with torch.inference_mode():
        with pytest.raises(RuntimeError) as ours:
            gemm.linear(x, weight, bias)
        with pytest.raises(RuntimeError) as theirs:
            F.linear(x, weight, bias)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("case", ["no bf16 kernels", "autocast", "meta device"])
def test_falls_back_to_f_linear(monkeypatch, case):
    x, weight, bias = torch.randn(2, 5, 64), torch.randn(32, 64), torch.randn(32)
    context = torch.inference_mode()
    if case == "no bf16 kernels":
        monkeypatch.setattr(gemm, "_cpu_has_bf16", lambda: False)
        x, weight, bias = x.bfloat16(), weight.bfloat16(), bias.bfloat16()
    elif case == "autocast":
        context = torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        x, weight, bias = x.to("meta"), weight.to("meta"), bias.to("meta")
    with context, torch.no_grad():
        called = ops(lambda: gemm.linear(x, weight, bias, gelu=True))
        y = gemm.linear(x, weight, bias, gelu=True)
        expected = F.gelu(F.linear(x, weight, bias), approximate="tanh")
    assert "mkldnn::_linear_pointwise" not in called
    assert y.shape == (2, 5, 32) and y.dtype == expected.dtype and y.device == expected.device
    if case != "meta device":
        torch.testing.assert_close(y, expected, atol=0, rtol=0)


def _rss_mb() -> float:
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024


def test_new_row_counts_do_not_grow_memory_for_good():
    """oneDNN keeps what it builds for every shape it is given: 124M's c_fc over every row
    count from 17 to 260 grew RSS by ~120 MB for good before rows were padded to a few sizes."""
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(3072, 768, generator=g) * 0.02, torch.zeros(3072)
    x = torch.randn(300, 768, generator=g)
    with torch.inference_mode():
        gemm.linear(x[:16], weight, bias, gelu=True)
        before = _rss_mb()
        for rows in range(17, 261):
            gemm.linear(x[:rows], weight, bias, gelu=True)
        grown = _rss_mb() - before
    assert grown < 40, f"RSS grew {grown:.0f} MB over 244 row counts"
