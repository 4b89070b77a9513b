"""The faster tiers: bf16 blocks, and weight-only int8 blocks (per-output-channel scales).

Decoding one token reads every weight once, so on a CPU it is bound by memory bandwidth:
two bytes per weight, or one, instead of four is the win. The token embedding is also the
LM head; both tiers store it in bf16, and the head computes in fp32 (`GPT.logits`). Chosen
by measurement on the trained built-in model (top-1 agreement with fp32 over 13,312
held-out tokens, benchmarks/fidelity.py): what flips near-tied predictions is rounding the
logits to bf16, not the weights:
- bf16 tier: head weights fp32 99.71%, bf16 with fp32 math 99.71%, bf16 throughout 98.59%;
- int8 tier: head weights fp32 99.40%, bf16 with fp32 math 99.40%, bf16 throughout 98.32%
  (int8 head weights: 96.6% over 4,096 tokens).
PyTorch's own `_weight_int8pack_mm` (the kernel gpt-fast uses) takes bf16 activations; with
fp32 ones it is many times slower, so the int8 tier computes in bf16.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import gemm, kernels
from .model import GPT, FusedQKV, Pinned


class Int8Linear(Pinned, nn.Module):
    use_kernels = False  # see gpt2.kernels

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        w = weight.detach().float()  # [out, in]
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [out]
        self.register_buffer("weight", torch.round(w / scales[:, None]).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: Tensor, gelu: bool = False) -> Tensor:
        """As `Linear.forward`: `gelu=True` returns the tanh GELU of the output."""
        if self.use_kernels and kernels.one_row(x):  # x in fp32: inductor's loop would convert
            # a bf16 row again for every output row (1.13x slower, benchmarks/KERNELS.md)
            y = kernels.linear(x.float(), self.weight, self.scales, self.bias, out_dtype=x.dtype)
            if y is not None:
                return gemm.gelu_if(y, gelu)
        x2d = x.reshape(-1, x.size(-1))
        if x2d.size(0) > 16:  # prefill: a dequantised GEMM beats the matrix-vector kernel
            weight = self.weight.to(x.dtype) * self.scales[:, None].to(x.dtype)
            return gemm.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype), gelu)
        y = torch._weight_int8pack_mm(x2d, self.weight, self.scales.to(x.dtype)).view(*x.shape[:-1], -1)
        return gemm.gelu_if(y if self.bias is None else y + self.bias, gelu)

    def kernel_example(self) -> tuple:
        x = torch.zeros(1, self.weight.size(1), device=self.weight.device)  # fp32, as in `forward`
        return x, self.weight, self.scales, self.bias, self.scales.dtype


class Int8FusedQKV(Int8Linear):
    """`c_attn` in int8; takes the cache argument that capture hooks read (see FusedQKV)."""

    def forward(self, x: Tensor, cache: object = None) -> Tensor:  # noqa: ARG002
        return super().forward(x)


def to_bf16(model: GPT) -> GPT:
    """Every weight in bf16; the LM head still computes in fp32 (see `GPT.logits`). Turns the
    compiled kernels off: `gpt2.compile_kernels` again for the new dtype."""
    kernels.disable(model)
    return model.to(torch.bfloat16)


def quantize_int8(model: GPT) -> GPT:
    """Swap every block Linear for int8 in place; the rest (embeddings, LayerNorms) in
    bfloat16, the LM head computing in fp32 (see `GPT.logits`). Turns the compiled kernels
    off: `gpt2.compile_kernels` again for the new layers."""
    kernels.disable(model)
    for block in model.h:
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    cls = Int8FusedQKV if isinstance(child, FusedQKV) else Int8Linear
                    setattr(parent, name, cls(child.weight, child.bias))
    return model.to(torch.bfloat16)
