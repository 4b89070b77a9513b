"""Attention capture: forward hooks on the fused `c_attn` that keep q (and k) per position.

Probabilities are computed on demand from what the hooks kept, so capture adds one small
copy per layer to a forward pass and never a second pass. Hooks exist only while a capture
is open; without one the model runs its plain SDPA path.

Which forward pass belongs to which capture: hooks on a shared module fire for every
request running through it, and a streamed generation may resume on a different thread at
each step. So a capture is tied to the generation's own `KVCache` (passed to `c_attn` and
to each block as an argument the hooks can read), not to thread-locals or module state:
- `generate(..., capture=att)` / `stream(..., capture=att)` (and `BatchedGenerator.stream`)
  bind the cache explicitly;
- otherwise the first forward pass run on the thread that opened the capture is its own
  (a plain `model(idx)`, or the prefill of a `generate` called inside the `with`).
A batched decode step (`gpt2.BatchedGenerator`) passes a `CacheBatch` instead: a bound
capture keeps only the row of its own cache, so each request sees exactly its own rows.
"""
from __future__ import annotations

import math
import threading
import weakref
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor

from .kv_cache import CacheBatch, KVCache
from .model import GPT


class AttentionCapture:
    """What one forward pass or one generation showed its attention layers.

    `att[layer]` -> softmax probabilities [B, H, T, T]; `att.probs(layer, rows)` computes
    only some query rows; `att.hidden()` is the final hidden state [B, T, C] per position,
    from which `att.next_token_probs()` gives the model's prediction after every token.
    """

    def __init__(self, model: GPT, layers: Sequence[int] | None = None):
        n = model.config.n_layer
        self.model = model
        self.layers = list(range(n)) if layers is None else sorted({int(i) for i in layers})
        if any(not 0 <= i < n for i in self.layers):
            raise ValueError(f"layers must be in 0..{n - 1}, got {list(layers or [])}")
        self._thread = threading.get_ident()
        # The bound generation's cache, by weak reference: identity only, so the values it
        # holds are freed with the generation; its keys are all the maps need.
        self._cache_ref: weakref.ref[KVCache] | None = None
        self._cache_k: Tensor | None = None  # [L, B, H, max_len, hd]
        self._claimed = False  # a forward pass has been recorded; no more implicit claims
        self._complete = False  # a plain (cache-less) forward pass has finished
        self._open = True
        self._q: dict[int, list[Tensor]] = {i: [] for i in self.layers}  # chunks [B, t, C]
        self._k: dict[int, list[Tensor]] = {i: [] for i in self.layers}  # only without a cache
        self._resid: list[Tensor] = []  # last block's output, chunks [B, t, C]

    # -- binding --------------------------------------------------------------------------
    def bind(self, cache: KVCache) -> None:
        """Record the forward passes that run with `cache`, on whatever thread."""
        if self._claimed and not self._is_bound_to(cache):
            raise RuntimeError("this capture already recorded another forward pass")
        self._claim(cache)

    def _claim(self, cache: KVCache | None) -> None:
        self._claimed = True
        if cache is not None:
            self._cache_ref, self._cache_k = weakref.ref(cache), cache.k
            cache.captured = True

    def _is_bound_to(self, cache: KVCache) -> bool:
        return self._cache_ref is not None and self._cache_ref() is cache

    def _owns(self, cache: KVCache | None, may_claim: bool) -> bool:
        if not self._open:
            return False
        same_thread = threading.get_ident() == self._thread
        if self._claimed:
            if cache is None:  # a plain forward pass is ours only on our thread, and only one
                return self._cache_ref is None and same_thread and not self._complete
            return self._is_bound_to(cache)
        if not may_claim or not same_thread:
            return False
        self._claim(cache)
        return True

    def _rows(self, cache: KVCache | CacheBatch | None, may_claim: bool) -> slice | None:
        """Which rows of this forward pass are ours: all of them, our row of a batched step,
        or none."""
        if isinstance(cache, CacheBatch):
            mine = self._cache_ref() if self._open and self._cache_ref is not None else None
            return next((slice(i, i + 1) for i, c in enumerate(cache.caches) if c is mine), None)
        return slice(None) if self._owns(cache, may_claim) else None

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

    def _on_last_block(self, module, args, out: Tensor) -> None:
        cache = args[1] if len(args) > 1 else None
        rows = self._rows(cache, may_claim=False)
        if rows is not None:
            self._resid.append(out[rows].detach().clone())
            self._complete = cache is None

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
        q = torch.cat(self._q[layer], dim=1)[:, start:stop]  # [B, R, C]
        B, R, C = q.shape
        q = q.view(B, R, -1, hd).transpose(1, 2)  # [B, H, R, hd]
        k = self._keys(layer, stop)  # [B, H, K, hd]
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(hd)  # [B, H, R, K]
        query_pos = torch.arange(start, stop, device=q.device)[:, None]
        key_pos = torch.arange(stop, device=q.device)[None, :]
        scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
        return torch.softmax(scores, dim=-1)

    def __getitem__(self, layer: int) -> Tensor:
        return self.probs(layer)

    def hidden(self, rows: slice | None = None) -> Tensor:
        """Final hidden state [B, R, C] (after `ln_f`): the LM head's input at each position."""
        if not self._resid:
            raise RuntimeError("nothing captured: run the model inside the capture")
        with torch.no_grad():
            return self.model.ln_f(torch.cat(self._resid, dim=1)[:, rows or slice(None)])

    def next_token_probs(self, rows: slice | None = None) -> Tensor:
        """The model's next-token distribution [B, R, vocab] after each position in `rows`."""
        hidden = self.hidden(rows)
        with torch.no_grad():
            return torch.softmax(self.model.logits(hidden).float(), dim=-1)


@contextmanager
def capture_attention(model: GPT, layers: Sequence[int] | None = None) -> Iterator[AttentionCapture]:
    """`with capture_attention(model) as att: model(idx)`, then `att[layer]` is [B, H, T, T]."""
    att = AttentionCapture(model, layers)
    handles = [model.h[i].attn.c_attn.register_forward_hook(
        lambda mod, args, out, i=i: att._on_qkv(i, mod, args, out)) for i in att.layers]
    handles.append(model.h[-1].register_forward_hook(att._on_last_block))
    try:
        yield att
    finally:
        att._open = False
        for handle in handles:
            handle.remove()
