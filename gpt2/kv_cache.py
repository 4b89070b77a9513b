"""Preallocated key/value storage for one batch of sequences being generated, and a batched
decode step's view of several generations' caches."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from .config import GPTConfig
from .fast.rowdot import DecodeRows

if TYPE_CHECKING:
    from .model import GPT


class KVCache:
    """Keys and values of every layer for positions [0, pos), written in place.

    One object per generation: it is also the identity that attention capture uses to
    tell which request a forward pass belongs to (see `gpt2.capture`).
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        if not 0 < max_len <= config.context_length:
            raise ValueError(f"cache length {max_len} must be in 1..{config.context_length}")
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_dim)
        # empty, not zeros: only positions [0, pos) are ever read
        self.k = torch.empty(shape, device=device, dtype=dtype)  # [L, B, H, max_len, hd]
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0  # positions filled; advanced by the model after all layers ran
        # Set by an attention capture recording this generation: the last sampled token
        # then goes through the model too, so the record covers the whole text.
        self.captured = False
        self._decode_rows: tuple[int, DecodeRows] | None = None  # (k's storage, its rows)

    @classmethod
    def for_model(cls, model: "GPT", batch_size: int, max_len: int) -> "KVCache":
        """A cache for `model`'s generations: bf16 where its residual stream is bf16 on the CPU
        (the fast tiers': every key and value is then a bf16 value, so half the bytes hold the
        same numbers and a long context's decode step reads half as much), else fp32."""
        bf16 = model.wpe.weight.dtype == torch.bfloat16 and model.device.type == "cpu"
        return cls(model.config, batch_size, max_len, model.device, torch.bfloat16 if bf16 else torch.float32)

    def __getstate__(self) -> dict:  # a copy gets its own pointers (`decode_rows`), not ours
        return {**self.__dict__, "_decode_rows": None}

    @property
    def max_len(self) -> int:
        return self.k.size(3)

    def positions(self, T: int) -> Tensor:
        """Position ids [T] of the next T tokens."""
        if self.pos + T > self.max_len:
            raise ValueError(f"{self.pos + T} positions exceed the cache of {self.max_len}")
        return torch.arange(self.pos, self.pos + T, device=self.k.device)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Store this step's k, v [B, H, T, hd]; return all keys/values so far and the
        attention mask [T, keys] (None where plain causal attention is right)."""
        start, T = self.pos, k.size(2)
        self.k[layer, :, :, start:start + T] = k
        self.v[layer, :, :, start:start + T] = v
        mask = None
        if start > 0 and T > 1:  # a chunk appended to a filled cache
            mask = torch.ones(T, start + T, dtype=torch.bool, device=k.device).tril(start)
        return self.k[layer, :, :, :start + T], self.v[layer, :, :, :start + T], mask

    def advance(self, T: int) -> None:
        self.pos += T

    def rows(self) -> list[tuple[Tensor, Tensor, int]]:
        """Per sequence: its keys and values [L, H, max_len, hd] and the next position."""
        return [(self.k[:, b], self.v[:, b], self.pos) for b in range(self.k.size(1))]

    def decode_rows(self, T: int = 1) -> DecodeRows | None:
        """This step's rows for the decode attention kernel (`gpt2.fast.kernels`): built once,
        then only their position moves; None if it cannot read this cache (fp32 or bf16 on the
        CPU). T > 1: each sequence's next T positions as T rows of one step (a short prompt
        piece), sequence by sequence, row t at position pos + t."""
        if self.pos + T > self.max_len:
            raise ValueError(f"{self.pos + T} positions exceed the cache of {self.max_len}")
        if T > 1:
            if not _kernel_reads(self):
                return None
            return DecodeRows.of([(k, v, pos + t) for k, v, pos in self.rows() for t in range(T)])
        if self._decode_rows is None or self._decode_rows[0] != self.k.data_ptr():
            if not _kernel_reads(self):
                return None
            self._decode_rows = (self.k.data_ptr(), DecodeRows.of(self.rows()))
        rows = self._decode_rows[1]
        rows.pos[:] = [self.pos] * rows.count
        return rows


class CacheBatch:
    """The caches of several generations that each advance by one token in one forward pass
    (`gpt2.BatchedGenerator`): row i of the step belongs to `caches[i]`. Attention stays per
    row, over that row's own cache; capture hooks find their row by the cache's identity."""

    def __init__(self, caches: Sequence[KVCache]):
        if any(c.k.size(1) != 1 for c in caches):
            raise ValueError("a CacheBatch takes caches of one sequence each")
        self.caches = tuple(caches)
        self._decode_rows: tuple[tuple[int, ...], DecodeRows] | None = None

    def positions(self, T: int) -> Tensor:
        """Position ids [B, T] of each row's next T tokens."""
        for c in self.caches:
            if c.pos + T > c.max_len:
                raise ValueError(f"{c.pos + T} positions exceed a cache of {c.max_len}")
        return torch.tensor([[c.pos + t for t in range(T)] for c in self.caches],
                            device=self.caches[0].k.device)

    def advance(self, T: int) -> None:
        for c in self.caches:
            c.advance(T)

    def decode_rows(self, T: int = 1) -> DecodeRows | None:
        """As `KVCache.decode_rows`, one row per cache (None unless they share one dtype, and
        for more than one position: a batch's rows continue one token each)."""
        if T != 1 or not all(_kernel_reads(c) and c.k.dtype == self.caches[0].k.dtype for c in self.caches):
            return None
        key = tuple((c.pos, c.k.data_ptr()) for c in self.caches)
        if self._decode_rows is None or self._decode_rows[0] != key:
            self._decode_rows = (key, DecodeRows.of([row for c in self.caches for row in c.rows()]))
        return self._decode_rows[1]


def _kernel_reads(cache: KVCache) -> bool:
    return cache.k.dtype in (torch.float32, torch.bfloat16) and cache.k.is_cpu
