"""The faster precision tiers (bf16 blocks; weight-only int8 blocks), and how faithful they are.

Decoding one token reads every weight once, so on a CPU it is bound by memory bandwidth:
two bytes per weight, or one, instead of four is the win. The token embedding is also the
LM head. The bf16 tier stores it in bf16 and the head computes in fp32 (`GPT.logits`); the
int8 tier adds an int8 copy for the head (`gpt2.fast.int8.Int8Head`: an int8 scan of the
vocabulary, its best candidates rescored from the bf16 embedding in fp32 math), which
halves the head's bytes per token. Chosen by measurement on the trained built-in model
(top-1 agreement with fp32 over 13,312 held-out tokens, benchmarks/fidelity.py): what flips
near-tied predictions is rounding the logits to bf16, not the weights:
- bf16 tier: head weights fp32 99.71%, bf16 with fp32 math 99.71%, bf16 throughout 98.59%;
- int8 tier: head weights fp32 99.40%, bf16 with fp32 math 99.44%, bf16 throughout 98.32%,
  int8 scan alone 98.7-98.9%, int8 scan rescored (the tier's head) 99.44%. Since its decode
  products quantise each row (integer dot products, `gpt2.fast.rowdot`), its decode path
  agrees 99.14-99.22% (99.45% before).

The residual stream (embeddings' sum, LayerNorms, attention) is bf16 only where the CPU has
bf16 dot products (`stream_dtype`); elsewhere the tiers keep their half- and quarter-size
weights and compute in fp32: decoding is bound by reading the weights, not by arithmetic,
and emulated bf16 products made a 1,024-token prefill 4.7x slower than fp32's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .fast import kernels, rowdot
from .fast.int8 import Int8Head, Int8Linear
from .model import GPT, RequestLinear

# `load_model` arguments for each precision tier, by name (the CLI's and the app's choices).
TIERS: dict[str, dict] = {"fp32": {}, "bf16": {"dtype": torch.bfloat16}, "int8": {"quantize": "int8"}}


class Int8RequestLinear(Int8Linear):
    """`c_attn` or `attn.c_proj` in int8: takes the cache argument hooks read (see RequestLinear)."""

    def forward(self, x: Tensor, cache: object = None) -> Tensor:  # noqa: ARG002
        return super().forward(x)


def stream_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """The fast tiers' residual stream on `device`: bf16, except on a CPU whose decode path
    has no bf16 dot products (`gpt2.fast.rowdot.native_bf16`), where it is fp32."""
    cpu = torch.device(device or "cpu").type == "cpu"
    return torch.float32 if cpu and not rowdot.native_bf16() else torch.bfloat16


def set_stream_dtype(model: GPT, dtype: torch.dtype) -> GPT:
    """The parts of a fast tier that make the residual stream (the position embedding, whose
    dtype the blocks take, and every LayerNorm) in `dtype`; the weights stay as they are."""
    for module in (model.wpe, model.ln_f, *(m for block in model.h for m in (block.ln_1, block.ln_2))):
        module.to(dtype)
    return model


def to_bf16(model: GPT) -> GPT:
    """Every weight in bf16, the residual stream in `stream_dtype()`; the LM head still
    computes in fp32 (see `GPT.logits`). Turns the compiled kernels off:
    `gpt2.compile_kernels` again for the new dtype."""
    kernels.disable(model)
    return set_stream_dtype(model.to(torch.bfloat16), stream_dtype(model.device))


def quantize_int8(model: GPT) -> GPT:
    """Swap every block Linear for int8 in place and give the model an int8 LM head
    (`Int8Head`); the rest (embeddings, LayerNorms) in bfloat16. Turns the compiled kernels
    off: `gpt2.compile_kernels` again for the new layers."""
    kernels.disable(model)
    for block in model.h:
        quantize_block(block)
    for module in (model.wte, model.lm_head):  # the head is made from the weight the model keeps
        if module is not None:
            module.to(torch.bfloat16)
    head = Int8Head(model.head_weight, model.ln_f)
    set_stream_dtype(model.to(torch.bfloat16), stream_dtype(model.device))
    model.int8_head = head
    return model


def quantize_block(block: nn.Module) -> None:
    """One block to the int8 tier, in place: its Linears int8, the rest bf16."""
    for parent in (block.attn, block.mlp):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                cls = Int8RequestLinear if isinstance(child, RequestLinear) else Int8Linear
                setattr(parent, name, cls(child.weight, child.bias))
    block.to(torch.bfloat16)


@dataclass(frozen=True)
class Fidelity:
    tokens: int  # positions compared
    top1_agreement: float  # share of positions whose argmax next token is the same
    max_logit_error: float
    mean_logit_error: float


@torch.no_grad()
def compare_tiers(reference: GPT, candidate: GPT, ids: Tensor, vocab: Tensor | None = None) -> Fidelity:
    """Compare next-token logits at every position of `ids` [B, T]. Logit errors are taken
    over `vocab` when given (a restricted-vocabulary model's trained ids: the others sit at a
    huge negative constant whose rounding says nothing about the predictions)."""
    want = reference(ids.to(reference.device)).float()
    got = candidate(ids.to(candidate.device)).float()
    agree = (want.argmax(-1) == got.argmax(-1)).float().mean().item()
    if vocab is not None:
        want, got = want[..., vocab], got[..., vocab]
    error = (want - got).abs()
    return Fidelity(ids.numel(), agree, error.max().item(), error.mean().item())
