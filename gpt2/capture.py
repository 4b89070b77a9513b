"""Attention capture: forward hooks on the fused `c_attn` that keep q (and k) per position,
and on the blocks, whose outputs give next-token predictions (and the logit lens).

Probabilities are computed on demand from what the hooks kept, so capture adds one small
copy per layer to a forward pass and never a second pass. Hooks exist only while a capture
is open; without one the model runs its plain SDPA path. Which forward passes a capture
records: see `gpt2.hooks` (it is tied to its generation's `KVCache`).

A batched decode step (`gpt2.BatchedGenerator`) passes a `CacheBatch` instead: a bound
capture keeps only the row of its own cache, so each request sees exactly its own rows.

The logit lens (`residuals=True`) keeps every block's output: 4 * n_embd bytes per token
and layer (3 KB at 124M, so 37.7 MB for 1,024 tokens over 12 layers).

Direct logit attribution (`gpt2.attribute`) also reads the attention values
(`values=True`): a generation's capture then keeps its KV cache's values alive, as it keeps
its keys (no copy and no extra work per step; 4 * n_embd bytes per token and layer held,
37.7 MB for 1,024 tokens at 124M, the size of the cache's values, half that in a bf16 cache:
`KVCache.for_model`); a plain pass copies them per captured layer, as it copies the keys.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .hooks import RequestHooks
from .kv_cache import KVCache
from .model import GPT

_LENS_ROWS = 64  # positions per LM-head pass in the lens: bounds the [rows, vocab] temporary


@dataclass(frozen=True)
class Lens:
    """The logit lens: the top next tokens after every block, per position."""
    ids: Tensor  # [L, B, R, k]
    probs: Tensor  # [L, B, R, k]


class AttentionCapture(RequestHooks):
    """What one forward pass or one generation showed its attention layers.

    `att[layer]` -> softmax probabilities [B, H, T, T]; `att.probs(layer, rows)` computes
    only some query rows; `att.hidden()` is the final hidden state [B, T, C] per position,
    from which `att.next_token_probs()` gives the model's prediction after every token;
    with `residuals=True`, `att.lens(rows)` gives the prediction after every block.
    """

    def __init__(self, model: GPT, layers: Sequence[int] | None = None, residuals: bool = False,
                 values: bool = False):
        super().__init__()
        n = model.config.n_layer
        self.model = model
        self.layers = list(range(n)) if layers is None else sorted({int(i) for i in layers})
        if any(not 0 <= i < n for i in self.layers):
            raise ValueError(f"layers must be in 0..{n - 1}, got {list(layers or [])}")
        self.blocks = list(range(n)) if residuals else [n - 1]  # whose outputs are kept
        # The bound generation's keys (the cache itself is held by weak reference, so its
        # values are freed with the generation).
        self._cache_k: Tensor | None = None  # [L, B, H, max_len, hd]
        self._cache_v: Tensor | None = None  # the same for the values, with values=True
        self.keeps_values = bool(values)
        self._complete = False  # a plain (cache-less) forward pass has finished
        self._q: dict[int, list[Tensor]] = {i: [] for i in self.layers}  # chunks [B, t, C]
        self._k: dict[int, list[Tensor]] = {i: [] for i in self.layers}  # only without a cache
        self._v: dict[int, list[Tensor]] = {i: [] for i in self.layers}  # values=True, without a cache
        self._out: dict[int, list[Tensor]] = {i: [] for i in self.blocks}  # block outputs [B, t, C]

    # -- binding (see gpt2.hooks) ---------------------------------------------------------------
    def _claim(self, cache: KVCache | None) -> None:
        super()._claim(cache)
        if cache is not None:
            self._cache_k = cache.k
            if self.keeps_values:
                self._cache_v = cache.v
            cache.captured = True

    def _accepts_plain_pass(self) -> bool:
        return not self._complete  # one plain pass: a second would mix two records

    # -- hooks (positional args: (x, cache)) -------------------------------------------------
    def _on_qkv(self, layer: int, module, args, qkv: Tensor) -> None:
        cache = args[1] if len(args) > 1 else None
        rows = self._rows(cache, may_claim=layer == self.layers[0])
        if rows is None:
            return
        C = qkv.size(-1) // 3
        self._q[layer].append(qkv[rows][..., :C].detach().clone())
        if cache is None:
            self._k[layer].append(qkv[rows][..., C:2 * C].detach().clone())
            if self.keeps_values:
                self._v[layer].append(qkv[rows][..., 2 * C:].detach().clone())

    def _on_block(self, layer: int, module, args, out: Tensor) -> None:
        cache = args[1] if len(args) > 1 else None
        rows = self._rows(cache, may_claim=False)
        if rows is not None:
            self._out[layer].append(out[rows].detach().clone())
            if layer == self.model.config.n_layer - 1:
                self._complete = cache is None

    def truncate(self, n: int) -> None:
        """Keep the first `n` positions: a generation whose consumer stopped while its decode
        loop (`gpt2.BatchedGenerator`) had already run a few steps ahead."""
        for chunks in (*self._q.values(), *self._k.values(), *self._v.values(), *self._out.values()):
            kept, total = [], 0
            for chunk in chunks:
                if total >= n:
                    break
                kept.append(chunk[:, :n - total])
                total += kept[-1].size(1)
            chunks[:] = kept

    # -- results -------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return sum(q.size(1) for q in self._q[self.layers[0]])

    def _keys(self, layer: int, end: int) -> Tensor:
        """Keys [B, H, end, hd] for positions [0, end)."""
        if self._cache_k is not None:  # the cache already holds them
            return self._cache_k[layer, :, :, :end]
        k = torch.cat(self._k[layer], dim=1)[:, :end]
        B, T, C = k.shape
        return k.view(B, T, -1, self.model.config.head_dim).transpose(1, 2)

    def values(self, layer: int, end: int) -> Tensor:
        """Attention values [B, H, end, hd] of `layer` for positions [0, end) (`values=True`)."""
        if not self.keeps_values:
            raise KeyError("the attention values were not kept: capture with values=True")
        if layer not in self._v:
            raise KeyError(f"layer {layer} was not captured (captured: {self.layers})")
        if self._cache_v is not None:  # fp32, as they were kept (a bf16 cache's widened exactly)
            return self._cache_v[layer, :, :, :end].float()
        v = torch.cat(self._v[layer], dim=1)[:, :end]
        B, T, C = v.shape
        return v.view(B, T, -1, self.model.config.head_dim).transpose(1, 2)

    def _queries(self, layer: int, start: int, stop: int) -> Tensor:
        """Queries [B, stop - start, C] from only the chunks that hold them: a generation
        keeps one chunk per step, so reading its newest row stays cheap however long it is."""
        return _span(self._q[layer], start, stop)

    @property
    def batch_size(self) -> int:
        return self._q[self.layers[0]][0].size(0) if self.num_tokens else 0

    def probs(self, layer: int, rows: slice | None = None) -> Tensor:
        """Attention probabilities [B, H, R, K] of the query rows `rows` (default all) over
        keys [0, K) where K is the end of `rows`: causal rows never look further."""
        if layer not in self._q:
            raise KeyError(f"layer {layer} was not captured (captured: {self.layers})")
        T = self.num_tokens
        if T == 0:
            raise RuntimeError("nothing captured: run the model inside the capture")
        start, stop, _ = (rows or slice(None)).indices(T)
        stop = max(stop, start)
        hd = self.model.config.head_dim
        q = self._queries(layer, start, stop)  # [B, R, C]
        B, R, C = q.shape
        q = q.view(B, R, -1, hd).transpose(1, 2)  # [B, H, R, hd]
        k = self._keys(layer, stop)  # [B, H, K, hd]
        scores = q.float() @ k.float().transpose(-1, -2)  # [B, H, R, K]
        scale = self.model.config.attn_scale(layer)  # None: GPT-2's 1/sqrt(hd)
        scores = scores / math.sqrt(hd) if scale is None else scores * scale
        query_pos = torch.arange(start, stop, device=q.device)[:, None]
        key_pos = torch.arange(stop, device=q.device)[None, :]
        scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
        return torch.softmax(scores, dim=-1)

    def __getitem__(self, layer: int) -> Tensor:
        return self.probs(layer)

    def block_output(self, layer: int, rows: slice | None = None) -> Tensor:
        """The residual stream [B, R, C] after block `layer` (before `ln_f`)."""
        if layer not in self._out:
            raise KeyError(f"block {layer}'s output was not kept: capture with residuals=True")
        if not self._out[layer]:
            raise RuntimeError("nothing captured: run the model inside the capture")
        start, stop, step = (rows or slice(None)).indices(sum(c.size(1) for c in self._out[layer]))
        if step != 1:
            return torch.cat(self._out[layer], dim=1)[:, rows]
        return _span(self._out[layer], start, max(start, stop))

    def hidden(self, rows: slice | None = None) -> Tensor:
        """Final hidden state [B, R, C] (after `ln_f`): the LM head's input at each position."""
        with torch.no_grad():
            return self.model.ln_f(self.block_output(self.blocks[-1], rows))

    def next_token_probs(self, rows: slice | None = None) -> Tensor:
        """The model's next-token distribution [B, R, vocab] after each position in `rows`."""
        with torch.no_grad():
            return torch.softmax(self.model.head(self.block_output(self.blocks[-1], rows)), dim=-1)

    def lens(self, rows: slice | None = None, k: int = 5) -> Lens:
        """The logit lens: after each block, the residual stream through `ln_f` and the LM
        head, as the top `k` next tokens per position in `rows` (the last block's row is the
        model's own prediction). Needs `residuals=True`."""
        if len(self.blocks) != self.model.config.n_layer:
            raise KeyError("the logit lens needs every block's output: capture with residuals=True")
        start, stop, _ = (rows or slice(None)).indices(self.num_tokens)
        ids, probs = [], []
        with torch.no_grad():
            for layer in self.blocks:
                top = [torch.topk(torch.softmax(self.model.head(chunk), dim=-1), k)
                       for chunk in self.block_output(layer, slice(start, stop)).split(_LENS_ROWS, dim=1)]
                ids.append(torch.cat([t.indices for t in top], dim=1))
                probs.append(torch.cat([t.values for t in top], dim=1))
        return Lens(torch.stack(ids), torch.stack(probs))


def _span(chunks: list[Tensor], start: int, stop: int) -> Tensor:
    """Positions [start, stop) of chunks [B, t, C] kept in order, from only the chunks that
    hold them."""
    parts, offset = [], 0
    for chunk in chunks:
        end = offset + chunk.size(1)
        if end > start and offset < stop:
            parts.append(chunk[:, max(start - offset, 0):stop - offset])
        if end >= stop:
            break
        offset = end
    if not parts:
        return chunks[0][:, :0]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


@contextmanager
def capture_attention(model: GPT, layers: Sequence[int] | None = None,
                      residuals: bool = False, values: bool = False) -> Iterator[AttentionCapture]:
    """`with capture_attention(model) as att: model(idx)`, then `att[layer]` is [B, H, T, T].
    `residuals=True` also keeps every block's output, for `att.lens()`; `values=True` the
    attention values, which with every layer and `residuals=True` is all `gpt2.attribute`
    reads from a finished run."""
    att = AttentionCapture(model, layers, residuals, values)
    handles = [model.h[i].attn.c_attn.register_forward_hook(_Record(att._on_qkv, i)) for i in att.layers]
    handles += [model.h[i].register_forward_hook(_Record(att._on_block, i)) for i in att.blocks]
    try:
        yield att
    finally:
        att.close()
        for handle in handles:
            handle.remove()


class _Record:
    """A capture's forward hook on layer `layer`'s c_attn or block. It reads only the output
    and the cache among the arguments, so it `replays_decode`: a decode step run in one
    library call (`gpt2.fast.kernels.decode_step`) records that output and calls it after
    the step, instead of running the whole step module by module for it."""
    replays_decode = True

    def __init__(self, on_output: Callable[[int, nn.Module, tuple, Tensor], None], layer: int):
        self.on_output, self.layer = on_output, layer

    def __call__(self, module: nn.Module, args: tuple, out: Tensor) -> None:
        self.on_output(self.layer, module, args, out)
