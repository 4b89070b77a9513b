"""The app's actions, free of Gradio: generate with capture, view a run, inspect any text.

Each request owns its tensors (its KV cache, its capture, its run); the only shared
objects are the model table and the run store, both locked. So concurrent users each get
exactly the text and maps a lone request would.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace

import numpy as np
import torch

import gpt2

from . import tokens
from .inspection import Run, RunStore, Window, rank_candidates, window
from .models import ModelTable
from .validate import Settings, shown

log = logging.getLogger(__name__)
MEAN = "mean"
COMPUTE_SLOTS = 2  # requests running the model at once: CPU-bound, more only slows each one


@dataclass(frozen=True)
class AttentionView:
    """The numbers behind one heatmap: weights [R, R] (or [H, R, R] for all heads)."""
    weights: np.ndarray
    labels: list[str]
    window: Window
    layer: int
    head: int | None  # None = mean over heads, or all heads for the grid


def parse_head(head: object, n_head: int) -> int | None:
    """'mean' (or None) -> None; 'head 3', '3' or 3 -> 3."""
    if head is None or (isinstance(head, str) and head.strip().lower().startswith(MEAN)):
        return None
    text = str(head).strip().lower().removeprefix("head").strip()
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"head must be 'mean' or a head number 0..{n_head - 1}, got {shown(head)}") from None
    if not 0 <= value < n_head:
        raise ValueError(f"head must be in 0..{n_head - 1} (or 'mean'), got {value}")
    return value


def select_head(weights: np.ndarray, head: int | None) -> np.ndarray:
    """[H, R, R] -> one head's map, or the mean over heads."""
    return weights.mean(axis=0) if head is None else weights[head]


def truncation_notice(n_prompt: int, n_kept: int, model: str, ctx: int) -> str:
    return (f"The prompt is {n_prompt:,} tokens; only its last {n_kept:,} were used, to leave room "
            f"for the new tokens in {model}'s {ctx:,}-token context.")


class RunExpired(LookupError):
    """The run id is unknown: never issued, or dropped from the store to bound memory."""


class Service:
    """Generation and inspection on top of a model table and a run store.

    Loading a model (or downloading it) happens before a request takes one of the
    `compute_slots`, so a slow or stuck load never holds up other models' requests."""

    def __init__(self, models: ModelTable, runs: RunStore, compute_slots: int = COMPUTE_SLOTS):
        self.models, self.runs = models, runs
        self.compute = threading.BoundedSemaphore(compute_slots)

    def generate(self, s: Settings, notice: Callable[[str], object] = lambda _: None
                 ) -> Iterator[tuple[str, str | None]]:
        """Yield (generated text so far, None) per token, then (text, run id) once the
        run is stored for inspection. Raises ValueError / gpt2.WeightsError with clear text.
        `notice` hears, before the first token, that a long prompt was cut to fit.
        Closing the iterator early (Stop, a closed tab) removes the hooks and stores nothing."""
        model = self.models.get(s.model)
        ctx = model.config.context_length
        if s.max_new_tokens >= ctx:
            raise ValueError(f"max_new_tokens must be below {s.model}'s context of {ctx} tokens, "
                             f"got {s.max_new_tokens}")
        prompt_ids = gpt2.encode(s.prompt)
        ids = prompt_ids[-(ctx - s.max_new_tokens):]  # the library's own left truncation
        if len(ids) < len(prompt_ids):
            notice(truncation_notice(len(prompt_ids), len(ids), s.model, ctx))
        seed = secrets.randbelow(2**31) if s.seed is None else s.seed
        decoder, text, generated = gpt2.StreamDecoder(), "", []
        try:
            with self.compute:
                with gpt2.capture_attention(model) as capture, closing(
                        gpt2.stream(model, torch.tensor([ids]), s.max_new_tokens, temperature=s.temperature,
                                    top_k=s.top_k or None, top_p=s.top_p if s.top_p < 1 else None,
                                    seed=seed, capture=capture)) as steps:
                    started = time.perf_counter()  # once this request has a compute slot
                    for next_id in steps:
                        generated.append(int(next_id[0]))
                        text += decoder.add(generated[-1])
                        yield text, None
                seconds = time.perf_counter() - started
                all_ids = ids + generated
                candidates = rank_candidates(capture, all_ids)  # the LM head over every position
        except GeneratorExit:
            log.info("generation stopped after %d of %d tokens; hooks removed, nothing stored",
                     len(generated), s.max_new_tokens)
            raise
        text += decoder.flush()
        run = Run(s.model, all_ids, len(ids), capture, model.config, seed, seconds, candidates,
                  dropped=len(prompt_ids) - len(ids))
        yield text, self.runs.add(run)

    def run(self, run_id: str | None) -> Run:
        """The run, recomputed from its token ids (one forward pass with capture) if other
        users' traffic pushed its capture out of the store."""
        if not run_id:
            raise RunExpired("Generate some text first: the maps show a finished run.")
        run = self.runs.get(run_id)
        if run is not None:
            return run
        record = self.runs.record(run_id)
        if record is None:
            raise RunExpired("This run is unknown to the server (it restarted, or the run is very "
                              "old). Generate again to inspect it.")
        log.info("recomputing evicted run of %s (%d tokens)", record.model_name, len(record.ids))
        run = self._captured(record.model_name, list(record.ids), with_candidates=True)
        run = replace(run, n_prompt=record.n_prompt, seed=record.seed, seconds=record.seconds,
                      dropped=record.dropped)
        self.runs.put(run_id, run)
        return run

    def view(self, run: Run, layer: int, head: int | None, start: int | None, size: int) -> AttentionView:
        """One head (or the mean) of one layer, for a window of the run's text."""
        win = window(len(run.ids), start, size)
        weights = run.attention(layer, win).float().numpy()
        return AttentionView(select_head(weights, head), tokens.labels(run.ids[win.start:win.stop]),
                             win, layer, head)

    def all_heads(self, run: Run, layer: int, start: int | None, size: int) -> AttentionView:
        win = window(len(run.ids), start, size)
        weights = run.attention(layer, win).float().numpy()
        return AttentionView(weights, tokens.labels(run.ids[win.start:win.stop]), win, layer, None)

    def inspect_text(self, text: str, model_name: str) -> Run:
        """Capture one forward pass over any text (the stateless API's path): no generation."""
        context = self.models.get(model_name).config.context_length
        return self._captured(model_name, gpt2.encode(text)[-context:])

    def _captured(self, model_name: str, ids: list[int], with_candidates: bool = False) -> Run:
        """One forward pass over `ids` with attention capture, as a run (all of it prompt)."""
        model = self.models.get(model_name)
        cache = gpt2.KVCache(model.config, 1, len(ids), model.device)
        with self.compute:
            with gpt2.capture_attention(model) as capture:
                started = time.perf_counter()
                capture.bind(cache)  # ties the hooks to this request, whatever thread runs others
                with torch.inference_mode():
                    model(torch.tensor([ids], device=model.device), cache, last_only=True)
                seconds = time.perf_counter() - started
            candidates = rank_candidates(capture, ids) if with_candidates else []
        return Run(model_name, ids, len(ids), capture, model.config, None, seconds, candidates)
