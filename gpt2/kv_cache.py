"""Preallocated key/value storage for one batch of sequences being generated."""
from __future__ import annotations

import torch
from torch import Tensor

from .config import GPTConfig


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
