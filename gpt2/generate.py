"""Autoregressive generation with a KV cache: a prefill in chunks, then one token per step."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from .ablate import HeadAblation
from .capture import AttentionCapture
from .kv_cache import KVCache
from .model import GPT
from .sampling import check_sampling_args, sample_next
from .steer import Steering

# Prompt tokens per forward pass of a prefill. `gpt2.BatchedGenerator` interleaves a long
# prompt's chunks with other requests' decode steps, so a chunk is the longest they wait;
# every prefill is cut the same way so that a request's answer does not depend on where it
# ran (a chunk attends to the cache with a mask, which rounds differently from one pass).
PREFILL_CHUNK = 256


def prepare(model: GPT, idx: Tensor, max_new_tokens: int, context_size: int | None, temperature: float,
            top_k: int | None, top_p: float | None, seed: int | None) -> Tensor:
    """Check the settings (ValueError with a specific message) and return the prompt [B, T]
    on the model's device, left-truncated so that prompt + new tokens fit the context."""
    ctx = model.config.context_length if context_size is None else int(context_size)
    if not 0 < ctx <= model.config.context_length:
        raise ValueError(f"context_size must be in 1..{model.config.context_length}, got {context_size}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if max_new_tokens >= ctx:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in a "
                         f"context of {ctx} tokens")
    check_sampling_args(temperature, top_k, top_p, model.config.vocab_size)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if idx.dim() == 1:
        idx = idx.unsqueeze(0)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be a non-empty [batch, T] tensor of token ids, "
                         f"got shape {tuple(idx.shape)}")
    return idx[:, -(ctx - max_new_tokens):].to(model.device)


def private_generator(model: GPT, seed: int | None) -> torch.Generator | None:
    """A generator of the request's own: seeded sampling leaves torch's global RNG alone."""
    return None if seed is None else torch.Generator(device=model.device).manual_seed(seed)


def stream(model: GPT, idx: Tensor, max_new_tokens: int, context_size: int | None = None,
           temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           eos_id: int | None = None, seed: int | None = None,
           capture: AttentionCapture | None = None,
           ablation: HeadAblation | None = None,
           steering: Steering | None = None) -> Iterator[Tensor]:
    """Yield the next token ids [B] as soon as each exists.

    The prompt `idx` [B, T] (or [T]) is left-truncated so that prompt + new tokens fit in
    `context_size` (default: the model's context window), and prefilled `PREFILL_CHUNK`
    tokens at a time. Rows that emit `eos_id` keep emitting it; the stream ends when every
    row has. `seed` seeds a private generator, leaving torch's global RNG alone. `capture`
    (`gpt2.capture_attention`) records this generation; `ablation` (`gpt2.ablate_heads`)
    knocks heads out of it, and only of it; `steering` (`gpt2.steer`) adds its vectors to it,
    and only to it. Grad mode is set per step, not across `yield`s,
    so a consumer may resume the iterator on any thread.
    """
    idx = prepare(model, idx, max_new_tokens, context_size, temperature, top_k, top_p, seed)
    if max_new_tokens == 0:
        return
    generator = private_generator(model, seed)
    # fp32, or bf16 where every key and value is a bf16 value (`KVCache.for_model`)
    cache = KVCache.for_model(model, idx.size(0), idx.size(1) + max_new_tokens)
    for hooks in (capture, ablation, steering):
        if hooks is not None:
            hooks.bind(cache)
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=model.device)

    for start in range(0, idx.size(1), PREFILL_CHUNK):
        with torch.inference_mode():
            logits = model(idx[:, start:start + PREFILL_CHUNK], cache, last_only=True)[:, -1]  # [B, vocab]
    for step in range(max_new_tokens):
        with torch.inference_mode():
            next_id = sample_next(logits, temperature, top_k, top_p, generator)  # [B]
            if eos_id is not None:
                next_id = next_id.masked_fill(done, eos_id)
                done |= next_id == eos_id
        yield next_id.clone()
        finished = bool(done.all()) or step == max_new_tokens - 1
        if finished and not cache.captured:
            return
        with torch.inference_mode():
            logits = model(next_id[:, None], cache, last_only=True)[:, -1]
        if finished:  # the capture now holds the last token too
            return


def generate(model: GPT, idx: Tensor, max_new_tokens: int, context_size: int | None = None,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             eos_id: int | None = None, seed: int | None = None,
             capture: AttentionCapture | None = None,
             ablation: HeadAblation | None = None,
             steering: Steering | None = None) -> Tensor:
    """`idx` [B, T] followed by up to `max_new_tokens` new ids: [B, T + n]. See `stream`."""
    if idx.dim() == 1:
        idx = idx.unsqueeze(0)
    new = list(stream(model, idx, max_new_tokens, context_size, temperature, top_k, top_p,
                      eos_id, seed, capture, ablation, steering))
    out = idx.to(model.device)
    return torch.cat([out, torch.stack(new, dim=1)], dim=1) if new else out
