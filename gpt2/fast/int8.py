"""Weight-only int8 linear layers (per-output-channel scales) for the int8 tier.

PyTorch's own `_weight_int8pack_mm` (the kernel gpt-fast uses) takes bf16 activations; with
fp32 ones it is many times slower, so the int8 tier computes in bf16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
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
        if x2d.size(0) <= 16 and self.use_kernels and kernels.serves_rows(x):
            # A short prefill: the decode kernels take any rows, faster than torch's int8
            # product below (124M's 48 products at 8 rows: 5.7 vs 15.7 ms, KERNELS.md).
            return kernels.linear(x, self.weight, self.scales, self.bias, gelu=gelu)
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


class Int8Head(nn.Module):
    """The int8 tier's LM head: a scan of the whole vocabulary in int8, one byte per weight
    read per decoded token instead of bf16's two (at 124M the head is 39 of the tier's 124
    MB a token), then the best `RESCORE` candidates recomputed from the bf16 embedding in
    fp32 math, so that the top of the distribution is the bf16 head's (top-1 agreement with
    fp32 on the built-in model: int8 scan alone 98.7-98.9%, rescored as bf16's, 99.4%).

    The scan reads the residual stream before `ln_f` and folds `ln_f` in: logits =
    n . (g * w) + b . w, with n the LayerNorm without its affine part and g, b its weight and
    bias. Quantising g * w per row rather than w keeps a row made to cancel against g exact
    (the built-in model's unused ids: g * w is constant there, while w itself holds values in
    the tens of thousands whose rounding would lift those ids above every real one).
    b . w is kept in fp32. Logits are fp32.
    """

    use_kernels = False  # see gpt2.fast.kernels
    RESCORE = 16

    def __init__(self, wte: Tensor, ln_f: nn.LayerNorm, chunk: int = 2048):
        super().__init__()
        gain, shift = ln_f.weight.detach().float(), ln_f.bias.detach().float()
        self.eps = ln_f.eps
        weight = torch.empty(wte.shape, dtype=torch.int8, device=wte.device)
        scales = torch.empty(wte.size(0), device=wte.device)
        bias = torch.empty(wte.size(0), device=wte.device)
        for start in range(0, wte.size(0), chunk):  # no fp32 copy of the whole embedding
            rows = wte[start:start + chunk].detach().float()
            folded = rows * gain
            scale = folded.abs().amax(dim=1).clamp(min=1e-30) / 127.0
            weight[start:start + chunk] = torch.round(folded / scale[:, None]).to(torch.int8)
            scales[start:start + chunk], bias[start:start + chunk] = scale, rows @ shift
        self.register_buffer("weight", weight)  # [vocab, C]
        self.register_buffer("scales", scales)  # fp32 [vocab]
        self.register_buffer("bias", bias)  # fp32 [vocab]

    def forward(self, x: Tensor, wte: Tensor, ln_f: nn.LayerNorm) -> Tensor:
        """x [..., C] (the last block's output) -> fp32 logits [..., vocab]; `wte` and `ln_f`
        are the model's (bf16 embedding, for the rescoring). Decode rows with the kernels run
        in one library call, the one a decode step makes (`kernels.decode_step`)."""
        hidden = ln_f(x)
        if (self.use_kernels and kernels.serves(x) and x.dtype in (torch.float32, torch.bfloat16)
                and hidden.dtype == x.dtype):
            return kernels.int8_head(self, x, hidden, wte)
        logits = self._scan(x)
        best = logits.topk(self.RESCORE, dim=-1).indices  # [..., RESCORE]
        hidden = hidden.float()
        # A sum per candidate, not a batched matmul: each row's result must not depend on
        # the rows beside it (gpt2.BatchedGenerator).
        candidates = wte.index_select(0, best.flatten()).view(*best.shape, -1)  # (wte[best]: 300x slower)
        exact = (candidates.float() * hidden.unsqueeze(-2)).sum(-1)  # [..., RESCORE]
        return logits.scatter_(-1, best, exact)

    def _scan(self, x: Tensor) -> Tensor:
        if self.use_kernels and kernels.serves(x) and x.dtype in (torch.float32, torch.bfloat16):
            n = kernels.layer_norm(x, None, None, self.eps)  # as the library's int8 head scans
            return kernels.linear(n, self.weight, self.scales, self.bias, out_dtype=torch.float32)
        n = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        if n.numel() == n.size(-1) and n.is_cpu and n.dtype == torch.bfloat16:
            # Eager decoding, until the kernels are built: torch's one int8 product, whose
            # logits are rounded to bf16 (the rescored best ones are not).
            logits = torch._weight_int8pack_mm(n.reshape(1, -1), self.weight, self.scales.to(n.dtype))
            return logits.float().view(*x.shape[:-1], -1) + self.bias.float()
        n = n.float()
        logits = n.new_empty(*n.shape[:-1], self.weight.size(0))
        for start in range(0, self.weight.size(0), 8192):  # dequantised a slice at a time
            rows = self.weight[start:start + 8192].float() * self.scales[start:start + 8192, None].float()
            logits[..., start:start + rows.size(0)] = gemm.linear(n, rows, self.bias[start:start + 8192].float())
        return logits
