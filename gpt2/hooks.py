"""Forward hooks that belong to one request: which forward passes a set of hooks may touch.

Hooks on a shared module fire for every request running through it, and a streamed
generation may resume on a different thread at each step. So a set of hooks (an attention
capture, a head knock-out) is tied to its generation's own `KVCache`, which the model passes
positionally to `c_attn`, `attn.c_proj` and each block, where hooks read it from `args`; not
to thread-locals or module state:
- `stream(..., capture=att, ablation=ab)` binds them to the generation's cache explicitly;
- otherwise the first forward pass run on the thread that opened them is theirs (a plain
  `model(idx)`, or the prefill of a `generate` called inside the `with`).
A batched decode step (`gpt2.BatchedGenerator`) passes a `CacheBatch`, one cache per row:
bound hooks act on the row of their own cache only.
"""
from __future__ import annotations

import threading
import weakref

from .kv_cache import CacheBatch, KVCache


class RequestHooks:
    """The binding; subclasses add the hooks and what they keep."""

    def __init__(self) -> None:
        self._thread = threading.get_ident()
        # The bound generation's cache, by weak reference: identity only.
        self._cache_ref: weakref.ref[KVCache] | None = None
        self._claimed = False  # a forward pass is ours; no more implicit claims
        self._open = True

    def bind(self, cache: KVCache) -> None:
        """Act on the forward passes that run with `cache`, on whatever thread."""
        if self._claimed and not self._is_bound_to(cache):
            raise RuntimeError(f"this {type(self).__name__} is already bound to another forward pass")
        self._claim(cache)

    def close(self) -> None:
        """No forward pass is ours any more (the hooks are being removed)."""
        self._open = False

    def _claim(self, cache: KVCache | None) -> None:
        self._claimed = True
        if cache is not None:
            self._cache_ref = weakref.ref(cache)

    def _is_bound_to(self, cache: KVCache) -> bool:
        return self._cache_ref is not None and self._cache_ref() is cache

    def _accepts_plain_pass(self) -> bool:
        """Whether another cache-less pass on our thread is still ours, once one was."""
        return True

    def _owns(self, cache: KVCache | None, may_claim: bool) -> bool:
        """Whether the forward pass running with `cache` (None: a plain pass) is ours;
        `may_claim`: the hook seeing it fires first in a pass, so it may claim an unbound one."""
        if not self._open:
            return False
        same_thread = threading.get_ident() == self._thread
        if self._claimed:
            if cache is None:  # a plain forward pass is ours only on our thread
                return self._cache_ref is None and same_thread and self._accepts_plain_pass()
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
