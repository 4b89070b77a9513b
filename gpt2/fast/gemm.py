"""The matrix products the decode kernels (`gpt2.fast.kernels`) do not serve: prefill, and
every product before the kernels are built or where they cannot be.

On the CPU they go straight to oneDNN's GEMM (`torch.ops.mkldnn._linear_pointwise`, the op
inductor emits for bf16 linears on the CPU) with the bias and, in the MLP, GPT-2's tanh GELU
applied in its epilogue on the fp32 accumulator. Measured on a 2-core AMD EPYC
(benchmarks/KERNELS.md): c_fc + GELU over 512 rows 8.5 -> 6.5 ms in bf16 (the GELU as its
own pass over 512 x 3072 cost a quarter) and 15.5 -> 11.9 ms in fp32; fp32 products are
faster through oneDNN than through `F.linear` (MKL): a layer's four over 512 rows 37.1 ->
34.4 ms, decoding's 48 one-row products 21.7 -> 12.4 ms (the decode kernels then: 10.7).
Everywhere else it is `F.linear` and `F.gelu`, the same math: under autograd or autocast
(the op has neither a backward nor a cast rule), on another device, with mixed or other
dtypes, with oneDNN switched off (`torch.backends.mkldnn`), on non-x86 CPUs (not measured),
and in bf16 where oneDNN has no bf16 kernels for the CPU.
"""
from __future__ import annotations

import functools
import platform

import torch
import torch.nn.functional as F
from torch import Tensor


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, gelu: bool = False) -> Tensor:
    """x [..., in] @ weight [out, in].T + bias -> [..., out], then GPT-2's tanh GELU if asked."""
    if not _onednn_serves(x, weight, bias):
        return gelu_if(F.linear(x, weight, bias), gelu)
    # oneDNN keeps what it builds for each shape it is asked (~2 MB of RSS per new row count
    # at 124M, kept for good: +490 MB over prompts of 21..260 tokens), so rows are padded
    # to a few sizes: every row's result is its own, the padding rows are dropped.
    rows = x.numel() // x.size(-1)
    padded = rows if rows <= 16 else -(-rows // 32) * 32 if rows <= 256 else -(-rows // 64) * 64
    x2d = x.reshape(rows, x.size(-1))
    if padded != rows:
        x2d = torch.cat([x2d, x2d.new_zeros(padded - rows, x2d.size(1))])
    y = torch.ops.mkldnn._linear_pointwise(x2d, weight, bias, "gelu" if gelu else "none", [],
                                           "tanh" if gelu else "")
    return y[:rows].view(*x.shape[:-1], y.size(-1))


def gelu_if(y: Tensor, gelu: bool) -> Tensor:
    """GPT-2's tanh GELU of y where the product that made it could not fuse one."""
    return F.gelu(y, approximate="tanh") if gelu else y


def _onednn_serves(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    if not (x.is_cpu and weight.is_cpu and torch.backends.mkldnn.enabled and _x86_onednn()):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return False  # no backward
    if torch.is_autocast_enabled("cpu") or (bias is not None and bias.dtype != x.dtype):
        return False
    if x.dtype == torch.bfloat16:
        return weight.dtype == x.dtype and _cpu_has_bf16()
    return x.dtype == weight.dtype == torch.float32


@functools.cache
def _x86_onednn() -> bool:
    return torch.backends.mkldnn.is_available() and platform.machine().lower() in ("x86_64", "amd64")


@functools.cache
def _cpu_has_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 on x86); asked once, not per product."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()
