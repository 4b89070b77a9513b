"""Steering by activation addition: add a vector to the residual stream entering a block, at
every position, prompt and generated.

A steering vector for block `layer` (`steering_vector`) is the mean over positions of the
residual stream entering that block for the prompt `plus`, minus the same for `minus`.
`steer(model, {layer: vector}, strength)` adds `strength * vector` there for one request: a
forward pre-hook on the block, acting on one request's forward passes only (see
`gpt2.hooks`), so it never reaches another user's generation:

    vector = gpt2.steering_vector(model, plus_ids, minus_ids, layer=6)
    with gpt2.steer(model, {6: vector}, strength=4.0) as steering:
        ids = gpt2.generate(model, idx, 20, steering=steering)

`rows` steers only some rows of the request's own batch (the others run unchanged), and in a
batched decode step (`gpt2.BatchedGenerator`) only the request's own row is steered: so a
baseline and a steered continuation are two rows of one decode loop (`generate_steered`).
The compiled decode step adds the vectors itself (`gpt2.fast.kernels.decode_step`), so a
steering keeps decoding on the one-call path, for its rows and everyone else's.

Precision: the vector is computed from the model's own residual stream (its tier's dtype)
and averaged in fp32; it is added in the residual stream's dtype (bf16 in the fast tiers
where `gpt2.tiers.stream_dtype()` is bf16), as the block would see any other input.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor

from . import passes
from .hooks import RequestHooks
from .model import GPT


class Steering(RequestHooks):
    """What is added where: `vectors` {layer: strength * vector [C] (fp32)}, to the rows
    `rows` of the request's batch (None: all)."""

    def __init__(self, model: GPT, vectors: Mapping[int, object], strength: float = 1.0,
                 rows: Iterable[int] | None = None):
        super().__init__()
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
            raise ValueError(f"strength must be a finite number, got {strength!r}")
        C = model.config.n_embd
        self.vectors: dict[int, Tensor] = {}
        for layer, vector in sorted(vectors.items()):
            layer = passes.check_layer(model, layer)
            v = torch.as_tensor(vector, dtype=torch.float32, device=model.device).detach()
            if v.shape != (C,):
                raise ValueError(f"the steering vector for layer {layer} must have shape ({C},) (n_embd), "
                                 f"got {tuple(v.shape)}")
            if not torch.isfinite(v).all():
                raise ValueError(f"the steering vector for layer {layer} has non-finite values")
            self.vectors[layer] = v * float(strength)
        self.rows = None if rows is None else sorted({int(r) for r in rows})
        if self.rows is not None and any(r < 0 for r in self.rows):
            raise ValueError(f"rows must be batch row numbers >= 0, got {self.rows}")

    def _chosen(self, layer: int, cache: object, batch: int) -> list[int] | None:
        """The rows of this forward pass (of `batch` rows, run with `cache`) to steer at
        `layer`: None for none, else their numbers."""
        rows = self._rows(cache, may_claim=layer == next(iter(self.vectors)))
        if rows is None:
            return None
        if rows == slice(None):  # our own pass: every row or the chosen ones
            return list(range(batch)) if self.rows is None else [r for r in self.rows if r < batch]
        # our row of a batched decode step (a request is one sequence: its row 0)
        return [rows.start] if self.rows is None or 0 in self.rows else None

    def _on_block(self, layer: int, args: tuple) -> tuple | None:
        x = args[0]  # [B, T, C]
        chosen = self._chosen(layer, args[1] if len(args) > 1 else None, x.size(0))
        if not chosen:
            return None
        vector = self.vectors[layer].to(x.dtype)
        if len(chosen) == x.size(0):
            return (x + vector, *args[1:])
        out = x.clone()
        out[chosen] = x[chosen] + vector
        return (out, *args[1:])


class _BlockHook:
    """The forward pre-hook on block `layer`. The compiled decode step runs it too, without
    the module-by-module path (`gpt2.fast.kernels.decode_step`): `residual_addition` gives
    what it adds to each row of a step, as the hook would."""

    def __init__(self, steering: Steering, layer: int):
        self.steering, self.layer = steering, layer

    def __call__(self, module, args):  # noqa: ARG002
        return self.steering._on_block(self.layer, args)

    def residual_addition(self, cache: object, batch: int) -> Tensor | None:
        chosen = self.steering._chosen(self.layer, cache, batch)
        if not chosen:
            return None
        vector = self.steering.vectors[self.layer]
        out = vector.new_zeros(batch, vector.numel())
        out[chosen] = vector
        return out


@contextmanager
def steer(model: GPT, vectors: Mapping[int, object], strength: float = 1.0,
          rows: Iterable[int] | None = None) -> Iterator[Steering]:
    """Add `strength * vectors[layer]` to the residual stream entering block `layer`, at
    every position, for one request: pass the yielded object to `generate`/`stream` (or a
    `BatchedGenerator`'s) as `steering=`, or run one plain `model(idx)` inside the `with`.
    `rows`: only these rows of the request's batch (None: every row)."""
    steering = Steering(model, vectors, strength, rows)
    handles = [model.h[layer].register_forward_pre_hook(_BlockHook(steering, layer)) for layer in steering.vectors]
    try:
        yield steering
    finally:
        steering.close()
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def steering_vector(model: GPT, plus: object, minus: object, layer: int) -> Tensor:
    """Mean over positions of the residual stream entering block `layer` for `plus` minus
    the same for `minus` (token ids; the two may differ in length): [n_embd] fp32. One
    hookless pass over each prompt, through blocks 0..layer-1 only."""
    layer = passes.check_layer(model, layer)
    means = []
    for name, ids in (("plus", plus), ("minus", minus)):
        ids = passes.check_ids(model, ids, name)
        means.append(passes.trace(model, ids[None], stop=layer).resid[layer][0].float().mean(0))
    return means[0] - means[1]


def generate_steered(model_or_loop, idx: Tensor, vectors: Mapping[int, object], max_new_tokens: int,
                     strength: float = 1.0, context_size: int | None = None, temperature: float = 0.0,
                     top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                     seed: int | None = None) -> tuple[Tensor, Tensor]:
    """(baseline ids, steered ids), each [1, T + n] as `generate` returns: the same prompt,
    settings and seed, run as two rows of one decode loop: `model_or_loop`'s if it is a
    `gpt2.BatchedGenerator` (the app's), else one made for the call on a GPT. The baseline
    is exactly the plain generation with that seed; the steered row differs only by the
    steering (`strength * vectors[layer]` added entering each block `layer`)."""
    from .batching import BatchedGenerator  # batching imports the generation side of this module

    own = not isinstance(model_or_loop, BatchedGenerator)
    loop = BatchedGenerator(model_or_loop, max_batch=2) if own else model_or_loop
    try:
        with steer(loop.model, vectors, strength) as steering:
            baseline, steered = loop.generate_together(
                idx, max_new_tokens, context_size, temperature, top_k, top_p, eos_id, seed,
                steerings=[None, steering])
        return baseline, steered
    finally:
        if own:
            loop.retire()
