"""Head knock-out: run the model with some attention heads' outputs set to zero.

A head's output is its slice of the merged head outputs, the input of `attn.c_proj`
(columns [h * head_dim, (h + 1) * head_dim)); a forward pre-hook there zeroes it before the
projection mixes the heads. The hooks act on one request's forward passes only (see
`gpt2.hooks`), so a knock-out never reaches another user's generation.

    with gpt2.ablate_heads(model, {5: [1, 5]}) as ablation:
        ids = gpt2.generate(model, idx, 20, ablation=ablation)
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor

from .hooks import RequestHooks
from .model import GPT


class HeadAblation(RequestHooks):
    """Which heads are knocked out (`heads`: layer -> sorted head numbers)."""

    def __init__(self, model: GPT, heads: Mapping[int, Iterable[int]]):
        super().__init__()
        c = model.config
        self.heads = {int(layer): sorted({int(h) for h in hs}) for layer, hs in heads.items()}
        self.heads = {layer: hs for layer, hs in sorted(self.heads.items()) if hs}
        for layer, hs in self.heads.items():
            if not 0 <= layer < c.n_layer:
                raise ValueError(f"layer must be in 0..{c.n_layer - 1}, got {layer}")
            if not all(0 <= h < c.n_head for h in hs):
                raise ValueError(f"heads of layer {layer} must be in 0..{c.n_head - 1}, got {hs}")
        self._keep: dict[int, Tensor] = {}  # layer -> [C] of 1s with 0s on the knocked-out heads
        for layer, hs in self.heads.items():
            keep = torch.ones(c.n_embd)
            for h in hs:
                keep[h * c.head_dim:(h + 1) * c.head_dim] = 0
            self._keep[layer] = keep

    def _on_proj(self, layer: int, module, args: tuple) -> tuple | None:
        cache = args[1] if len(args) > 1 else None
        rows = self._rows(cache, may_claim=layer == next(iter(self.heads)))
        if rows is None:
            return None
        merged = args[0]  # [B, T, C]
        keep = self._keep[layer].to(merged.device, merged.dtype)
        if rows == slice(None):
            return (merged * keep, *args[1:])
        ours = merged.clone()  # a batched step: only our row
        ours[rows] = merged[rows] * keep
        return (ours, *args[1:])


@contextmanager
def ablate_heads(model: GPT, heads: Mapping[int, Iterable[int]]) -> Iterator[HeadAblation]:
    """Knock out `heads` ({layer: [head, ...]}) for one request: pass the yielded object to
    `generate`/`stream` as `ablation=`, or run one plain `model(idx)` inside the `with`."""
    ablation = HeadAblation(model, heads)
    handles = [model.h[layer].attn.c_proj.register_forward_pre_hook(
        lambda mod, args, layer=layer: ablation._on_proj(layer, mod, args)) for layer in ablation.heads]
    try:
        yield ablation
    finally:
        ablation.close()
        for handle in handles:
            handle.remove()
