"""Weight-only int8 linear layers (per-output-channel scales) for the int8 tier.

PyTorch's own `_weight_int8pack_mm` (the kernel gpt-fast uses) takes bf16 activations; with
fp32 ones it is many times slower, so the int8 tier computes in bf16.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import gemm, kernels


class Int8Linear(nn.Module):
    use_kernels = False  # see gpt2.fast.kernels

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        w = weight.detach().float()  # [out, in]
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [out]
        self.register_buffer("weight", torch.round(w / scales[:, None]).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: Tensor, gelu: bool = False) -> Tensor:
        """As `gpt2.model.Linear.forward`: `gelu=True` returns the tanh GELU of the output."""
        if self.use_kernels and kernels.serves(x):
            return kernels.linear(x, self.weight, self.scales, self.bias, gelu=gelu)
        x2d = x.reshape(-1, x.size(-1))
        if x2d.size(0) > 16:  # prefill: a dequantised GEMM beats the matrix-vector kernel
            bias = None if self.bias is None else self.bias.to(x.dtype)
            if (self.use_kernels and x.is_cpu and x.dtype in (torch.float32, torch.bfloat16)
                    and not (torch.is_grad_enabled() and x.requires_grad)):  # autograd would keep it
                with kernels.dequantized(self.weight, self.scales, x.dtype) as weight:  # same values
                    return gemm.linear(x, weight, bias, gelu)
            weight = self.weight.to(x.dtype) * self.scales[:, None].to(x.dtype)
            return gemm.linear(x, weight, bias, gelu)
        y = torch._weight_int8pack_mm(x2d, self.weight, self.scales.to(x.dtype)).view(*x.shape[:-1], -1)
        return gemm.gelu_if(y if self.bias is None else y + self.bias, gelu)
