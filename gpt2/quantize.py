"""The faster tiers: bf16 blocks, and weight-only int8 blocks (per-output-channel scales).

Decoding one token reads every weight once, so on a CPU it is bound by memory bandwidth:
two bytes per weight, or one, instead of four is the win. The token embedding is also the
LM head; rounding the logits to bf16 (8 bits of mantissa) flips near-tied predictions, so
what each tier does with it was chosen by measurement on the trained built-in model
(top-1 agreement with fp32 over 4,096 held-out tokens, benchmarks/fidelity.py):
- bf16: head in bf16 98.5%, head kept fp32 99.7% -> kept fp32;
- int8: head in int8 96.6%, in bf16 98.2% -> bf16 (an fp32 head would cost 2x its bytes).
PyTorch's own `_weight_int8pack_mm` (the kernel gpt-fast uses) takes bf16 activations; with
fp32 ones it is many times slower, so the int8 tier computes in bf16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .model import GPT, FusedQKV


class Int8Linear(nn.Module):
    use_matvec = False  # see gpt2.kernels

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        w = weight.detach().float()  # [out, in]
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [out]
        self.register_buffer("weight", torch.round(w / scales[:, None]).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: Tensor) -> Tensor:
        if self.use_matvec and kernels.one_row(x):
            return self.matvec(x)
        x2d = x.reshape(-1, x.size(-1))
        if x2d.size(0) > 16:  # prefill: a dequantised GEMM beats the matrix-vector kernel
            y = F.linear(x2d, self.weight.to(x.dtype) * self.scales[:, None].to(x.dtype))
        else:
            y = torch._weight_int8pack_mm(x2d, self.weight, self.scales.to(x.dtype))
        y = y.view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias

    def matvec(self, x: Tensor) -> Tensor:
        y = kernels.matvec_int8(x.reshape(1, -1), self.weight, self.scales, self.bias)
        return y.view(*x.shape[:-1], -1)

    def matvec_input(self) -> Tensor:
        return torch.zeros(1, self.weight.size(1), dtype=torch.bfloat16, device=self.weight.device)


class Int8FusedQKV(Int8Linear):
    """`c_attn` in int8; takes the cache argument that capture hooks read (see FusedQKV)."""

    def forward(self, x: Tensor, cache: object = None) -> Tensor:  # noqa: ARG002
        return super().forward(x)


def to_bf16(model: GPT) -> GPT:
    """Blocks, position embedding and final LayerNorm in bf16; the token embedding (the LM
    head) stays fp32."""
    model.to(torch.bfloat16)
    model.wte.float()
    return model


def quantize_int8(model: GPT) -> GPT:
    """Swap every block Linear for int8 in place; the rest (embeddings and so the LM head,
    LayerNorms) runs in bfloat16."""
    for block in model.h:
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    cls = Int8FusedQKV if isinstance(child, FusedQKV) else Int8Linear
                    setattr(parent, name, cls(child.weight, child.bias))
    return model.to(torch.bfloat16)
