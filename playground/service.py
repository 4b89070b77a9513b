"""The app's actions, free of Gradio: generate with capture, view a run, inspect any text.

Each request owns its tensors (its KV cache, its capture, its run); the only shared
objects are the model table and the run store, both locked. Generations with one model are
rows of that model's decode loop (`gpt2.BatchedGenerator`), whose steps are batch-invariant,
and every other forward pass runs on the same compute thread (`gpt2.compute`) between
steps: so the CPU is never oversubscribed, and concurrent users each get exactly the text,
maps and candidates a lone request would. The page and the API call these same functions,
so both show the same numbers.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import torch

import gpt2

from . import tokens
from .explain import first_difference
from .inspection import (Run, RunStore, Window, attention_column, attention_matrix, attention_rows,
                         check_layer, window)
from .models import ModelTable
from .validate import Settings, shown

log = logging.getLogger(__name__)
T = TypeVar("T")
MEAN = "mean"
DIRECTIONS = ("from", "to")
# /generate sends at most one update per stream this often, with every token made meanwhile:
# 25 a second, a film's rate, is smoother than a reader can follow, and each update costs the
# server's two cores 0.4-0.7 ms (its event loop, the socket), which many users' streams would
# otherwise pay per token (benchmarks/LOAD.md "profile", "profile_emr").
UPDATE_EVERY_S = 0.04


@dataclass(frozen=True)
class AttentionView:
    """The numbers behind one heatmap: weights [R, R] (or [H, R, R] for all heads), and the
    attention each row gives to the keys before the window, summed: [R] (or [H, R])."""
    weights: np.ndarray
    earlier: np.ndarray
    labels: list[str]
    window: Window
    layer: int
    head: int | None  # None = mean over heads, or all heads for the grid


@dataclass(frozen=True)
class TokenAttention:
    """One token's attention: `direction` "from" = its row over keys 0..position, "to" = the
    column of queries position..T-1 that attend to it; `labels` name the tokens `weights` is on."""
    labels: list[str]
    weights: np.ndarray
    position: int


@dataclass(frozen=True)
class Knockout:
    """One prompt generated twice with the same settings and seed: as is and with heads knocked out."""
    prompt_ids: list[int]  # as used (a long prompt keeps its end)
    baseline: list[int]  # generated ids, without the prompt
    ablated: list[int]
    seed: int
    heads: dict[int, list[int]]

    @property
    def first_difference(self) -> int | None:
        """The index (in the generated ids) of the first token that differs, None if none does."""
        return first_difference(self.baseline, self.ablated)


@dataclass(frozen=True)
class Step:
    """A generation in progress: what the page shows while it streams."""
    text: str  # the generated text so far
    run_id: str  # reserved when the generation starts; the run is stored under it at the end or on a stop
    ids: list[int]  # prompt (as used) + the tokens generated so far
    n_prompt: int
    capture: gpt2.AttentionCapture  # the running generation's own
    stored: bool = False  # the last step: the run is in the store
    tokenizer: gpt2.Tokenizer | None = None  # the model's own (None: GPT-2's): what `ids` read as

    @property
    def n_generated(self) -> int:
        return len(self.ids) - self.n_prompt


def parse_head(head: object, n_head: int) -> int | None:
    """'mean' (or None) -> None; 'head 3', '3' or 3 -> 3, in 0..n_head - 1."""
    if head is None or (isinstance(head, str) and head.strip().lower().startswith(MEAN)):
        return None
    text = head.strip().lower().removeprefix("head").strip() if isinstance(head, str) else None
    if isinstance(head, int) and not isinstance(head, bool):
        value = head
    elif text is not None and re.fullmatch(r"\d{1,4}", text):
        value = int(text)
    else:
        raise ValueError(f"head must be 'mean' or a head number 0..{n_head - 1}, got {shown(head)}")
    if not 0 <= value < n_head:
        raise ValueError(f"head must be in 0..{n_head - 1} (or 'mean'), got {shown(value)}")
    return value


def head_name(head: int | None) -> str:
    return "mean over heads" if head is None else f"head {head}"


def select_head(weights: np.ndarray, head: int | None) -> np.ndarray:
    """[H, ...] -> one head's numbers, or the mean over heads."""
    return weights.mean(axis=0) if head is None else weights[head]


def end_of_text(config: gpt2.GPTConfig) -> int | None:
    """The model's end-of-text id (its config's eos_token_id: GPT-2's <|endoftext|>, 50256, for
    OpenAI's), None where it has none its vocabulary holds."""
    eos = config.eos_token_id
    return eos if eos is not None and eos < config.vocab_size else None


def sampling(s: Settings, seed: int, config: gpt2.GPTConfig | None = None) -> dict:
    """`s`'s sampling settings as `gpt2.stream` takes them (0 / 1 mean off); "stop at end of
    text" stops at the model's own end-of-text id (`config`'s; GPT-2's without one)."""
    eos = gpt2.EOT_ID if config is None else end_of_text(config)
    return dict(temperature=s.temperature, top_k=s.top_k or None, top_p=s.top_p if s.top_p < 1 else None,
                eos_id=eos if s.stop_at_end else None, seed=seed)


def truncation_notice(n_prompt: int, n_kept: int, model: str, ctx: int) -> str:
    return (f"The prompt is {n_prompt:,} tokens; only its last {n_kept:,} were used, to leave room "
            f"for the new tokens in {model}'s {ctx:,}-token context.")


class RunExpired(LookupError):
    """The run id is unknown: never issued, or dropped from the store to bound memory."""


class Service:
    """Generation and inspection on top of a model table and a run store.

    A download waits on the request's own thread, so a slow or stuck one never holds up
    other requests; only the compute runs on the shared compute thread."""

    def __init__(self, models: ModelTable, runs: RunStore):
        self.models, self.runs = models, runs

    def compute(self, model_name: str, fn: Callable[[gpt2.GPT], T]) -> T:
        """fn(model) on the compute thread, between decode steps: every forward pass outside
        a generation goes through here, so the process never computes on more threads than
        `gpt2.compute.threads()`."""
        loop = self.models.loop(model_name)  # loads (and downloads) first, on this thread
        return loop.run(lambda: fn(loop.model))

    def generate(self, s: Settings, notice: Callable[[str], object] = lambda _: None) -> Iterator[Step]:
        """Yield a Step before the first token (it carries the run id), one per token, and a
        last one once the run is stored for inspection. Raises ValueError /
        gpt2.WeightsError with clear text. `notice` hears, before the first token, that a
        long prompt was cut to fit. Closing the iterator early (Stop, a closed tab) removes
        the hooks and stores what was generated so far as a stopped run. The API's
        /generate, whose caller gets text only, uses `stream_text`, which captures nothing."""
        loop, prompt_ids, ids, seed = self._request(s)
        model = loop.model
        if len(ids) < len(prompt_ids):
            notice(truncation_notice(len(prompt_ids), len(ids), s.model, model.config.context_length))
        tokenizer = self.models.tokenizer(s.model)
        decoder, text, generated = gpt2.StreamDecoder(tokenizer), "", []
        run_id = self.runs.reserve()
        stopped, first_token_s = False, None
        try:
            started = time.perf_counter()
            with gpt2.capture_attention(model, residuals=True, values=True) as capture, \
                    closing(loop.stream(torch.tensor([ids]), s.max_new_tokens, capture=capture,
                                        **sampling(s, seed, model.config))) as steps:
                try:
                    yield Step(text, run_id, ids, len(ids), capture, tokenizer=tokenizer)
                    for next_id in steps:
                        generated.append(int(next_id[0]))
                        if first_token_s is None:  # reading the prompt, told apart from decoding
                            first_token_s = time.perf_counter() - started
                        text += decoder.add(generated[-1])
                        yield Step(text, run_id, ids + generated, len(ids), capture, tokenizer=tokenizer)
                except GeneratorExit:
                    stopped = True
                    if generated:  # one more step, as a finished stream takes: the capture
                        next(steps, None)  # then holds the last token too (what it sampled is dropped)
            seconds = time.perf_counter() - started
            all_ids = ids + generated
            if stopped:
                # the loop may have run ahead of this consumer: keep what it was shown
                loop.run(lambda: capture.truncate(len(all_ids)))
                log.info("generation stopped after %d of %d tokens; hooks removed%s", len(generated),
                         s.max_new_tokens, ", partial run stored" if generated else "")
                if generated:
                    self._store(run_id, s, loop, all_ids, len(ids), capture, seed, (seconds, first_token_s),
                                len(prompt_ids) - len(ids), "stopped")
                return
            eos = end_of_text(model.config)
            ended = "end of text" if s.stop_at_end and eos is not None and generated[-1] == eos else "length"
            self._store(run_id, s, loop, all_ids, len(ids), capture, seed, (seconds, first_token_s),
                        len(prompt_ids) - len(ids), ended)
            yield Step(text + decoder.flush(), run_id, all_ids, len(ids), capture, stored=True, tokenizer=tokenizer)
        finally:
            self.runs.release(run_id)  # no-op once stored; wakes a Stop waiting for a run that never came

    async def stream_text(self, s: Settings, notice: Callable[[str], object] = lambda _: None) -> AsyncIterator[str]:
        """The API's /generate: the generated text so far, at most every UPDATE_EVERY_S with
        every token made since (the first token at once; the text is the same, there are just
        fewer updates), then once more with any bytes a token left incomplete, on the server's
        event loop (no thread waits for each token); nothing captured or stored. Closing it
        early (a cancel, a closed connection) takes the request out of the loop."""
        loop, prompt_ids, ids, seed = await asyncio.to_thread(self._request, s)  # may load the model
        if len(ids) < len(prompt_ids):
            notice(truncation_notice(len(prompt_ids), len(ids), s.model, loop.model.config.context_length))
        decoder, text, generated = gpt2.StreamDecoder(self.models.tokenizer(s.model)), "", 0
        try:
            async with contextlib.aclosing(loop.astream(torch.tensor([ids]), s.max_new_tokens,
                                                        **sampling(s, seed, loop.model.config))) as stream:
                async for new_ids in stream:
                    for i in new_ids.tolist():
                        generated += 1
                        text += decoder.add(i)
                    yield text
                    if generated < s.max_new_tokens:  # the decode loop goes on meanwhile
                        await asyncio.sleep(UPDATE_EVERY_S)
        except (GeneratorExit, asyncio.CancelledError):  # closed, or its task cancelled (a cancel)
            log.info("generation stopped after %d of %d tokens", generated, s.max_new_tokens)
            raise
        yield text + decoder.flush()

    def _request(self, s: Settings) -> tuple[gpt2.BatchedGenerator, list[int], list[int], int]:
        """What a generation of `s` starts from: its model's decode loop, the prompt's ids, the
        ids kept (the library's own left truncation, so prompt + new tokens fit the context),
        and the seed (drawn when none was given, so every run can be repeated)."""
        loop = self.models.loop(s.model)
        ctx = loop.model.config.context_length
        if s.max_new_tokens >= ctx:
            raise ValueError(f"max_new_tokens must be below {s.model}'s context of {ctx} tokens, "
                             f"got {s.max_new_tokens}")
        prompt_ids = self.models.tokenizer(s.model).encode(s.prompt)  # the model's own tokenizer
        seed = secrets.randbelow(2**31) if s.seed is None else s.seed
        return loop, prompt_ids, prompt_ids[-(ctx - s.max_new_tokens):], seed

    def _store(self, run_id: str, s: Settings, loop: gpt2.BatchedGenerator, ids: list[int], n_prompt: int,
               capture: gpt2.AttentionCapture, seed: int, timing: tuple[float, float | None], dropped: int,
               ended: str) -> None:
        """`timing`: the whole run's seconds, and those until the first token (None: none came)."""
        run = Run(s.model, ids, n_prompt, capture, loop.model.config, seed, timing[0],
                  dropped=dropped, ended=ended, first_token_s=timing[1],
                  settings={k: v for k, v in s.__dict__.items() if k not in ("prompt", "model", "seed")},
                  tokenizer=self.models.tokenizer(s.model))
        self.runs.add(run, run_id)

    def run(self, run_id: str | None) -> Run:
        """The run, recomputed from its token ids (one forward pass with capture) if other
        users' traffic pushed its capture out of the store."""
        if not run_id:
            raise RunExpired("Generate some text first: the maps show a finished run.")
        if self.runs.pending(run_id):
            raise RunExpired("Still writing: the views show this run as soon as it ends (or is stopped).")
        run = self.runs.get(run_id)
        if run is not None:
            return run
        record = self.runs.record(run_id)
        if record is None:
            raise RunExpired("This run is unknown to the server (it restarted, or the run is very "
                              "old). Generate again to inspect it.")
        log.info("recomputing evicted run of %s (%d tokens)", record.model_name, len(record.ids))
        run = self.inspect_ids(record.model_name, list(record.ids))
        run = replace(run, n_prompt=record.n_prompt, seed=record.seed, seconds=record.seconds,
                      dropped=record.dropped, ended=record.ended, first_token_s=record.first_token_s,
                      settings=record.settings)
        self.runs.add(run, run_id)
        return run

    # -- views of a run (the page) and of any text (the API): the same functions -------------
    # Their torch work runs on the compute thread too: a request thread that computes once
    # keeps an OpenMP team, and every extra team slows every parallel region of the decode
    # loop (see gpt2.compute).
    def view(self, run: Run, layer: int, head: int | None, start: int | None, size: int) -> AttentionView:
        """One head (or the mean) of one layer, for a window of the run's text."""
        grid = self.all_heads(run, layer, start, size)
        return AttentionView(select_head(grid.weights, head), select_head(grid.earlier, head),
                             grid.labels, grid.window, layer, head)

    def all_heads(self, run: Run, layer: int, start: int | None, size: int) -> AttentionView:
        win = window(len(run.ids), start, size)
        weights, earlier = gpt2.compute.run(lambda: run.attention(layer, win))
        return AttentionView(weights.numpy(), earlier.numpy(),
                             tokens.labels(run.ids[win.start:win.stop], tokenizer=run.tokenizer), win, layer, None)

    def token_matrix(self, run: Run, layer: int, head: int | None) -> np.ndarray:
        """The whole map [T, T] of one head (or the mean): what the token view paints from."""
        check_layer(layer, run.config)
        return gpt2.compute.run(lambda: attention_matrix(run.capture, layer, head))

    def token_attention(self, run: Run, layer: int, head: int | None, position: int,
                        direction: str) -> TokenAttention:
        """One token's row ("from") or column ("to") of one head's map (or the mean's) over the
        whole text; `position` may count from the end (-1 = the last token)."""
        check_layer(layer, run.config)
        T = len(run.ids)
        if not -T <= position < T:
            raise ValueError(f"position must be in 0..{T - 1} (or -{T}..-1 from the end), got {position}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'from' or 'to', got {direction!r}")
        position %= T
        if direction == "from":
            weights = gpt2.compute.run(
                lambda: attention_rows(run.capture, layer, head, slice(position, position + 1))[0])
            return TokenAttention(tokens.labels(run.ids[:position + 1], tokenizer=run.tokenizer), weights, position)
        column = gpt2.compute.run(lambda: attention_column(run.capture, layer, head, position))
        return TokenAttention(tokens.labels(run.ids[position:], tokenizer=run.tokenizer), column, position)

    def lens(self, run: Run, rows: slice, k: int) -> gpt2.Lens:
        """The logit lens of `rows` from the run's kept block outputs (no forward pass over the
        text: each block's residual through ln_f and the LM head), on the compute thread."""
        return gpt2.compute.run(lambda: run.capture.lens(rows, k))

    def ablate(self, s: Settings, heads: dict[int, list[int]]) -> Knockout:
        """The same prompt, settings and seed twice, as two rows of the model's decode loop at
        once: as is, and with `heads` ({layer: [head, ...]}) knocked out. Greedy or seeded
        runs give exactly what a lone generation would."""
        loop, _, ids, seed = self._request(s)

        def run(ablation: gpt2.HeadAblation | None) -> list[int]:
            return loop.generate(torch.tensor([ids]), s.max_new_tokens, ablation=ablation,
                                 **sampling(s, seed, loop.model.config))[0, len(ids):].tolist()

        with gpt2.ablate_heads(loop.model, heads) as ablation, ThreadPoolExecutor(1) as pool:
            baseline = pool.submit(run, None)  # both rows step together
            ablated = run(ablation)
            return Knockout(ids, baseline.result(), ablated, seed, heads)

    def chosen_probs(self, model_name: str, ids: list[int], heads: dict[int, list[int]] | None) -> np.ndarray:
        """[T - 1]: the probability the model (with `heads` knocked out, if any) gives each
        token of `ids` after the ones before it; one forward pass on the compute thread."""

        def forward(model: gpt2.GPT) -> np.ndarray:
            idx = torch.tensor([ids], device=model.device)
            with contextlib.ExitStack() as stack:
                capture = stack.enter_context(gpt2.capture_attention(model, layers=[0]))
                if heads:
                    stack.enter_context(gpt2.ablate_heads(model, heads))
                with torch.inference_mode():
                    model(idx, last_only=True)
                out = []
                for start in range(0, len(ids) - 1, 64):
                    stop = min(start + 64, len(ids) - 1)
                    probs = capture.next_token_probs(rows=slice(start, stop))[0]
                    out.append(probs.gather(1, idx[0, start + 1:stop + 1, None].cpu())[:, 0])
            return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

        return self.compute(model_name, forward)

    def live_row(self, step: Step, layer: int, head: int | None) -> tuple[int, np.ndarray]:
        """What the token before the newest attended to when it chose the newest one, read from
        the running generation's capture (no extra forward pass). The decode loop may be steps
        ahead of this consumer and writes the capture as it goes, so it is read on the compute
        thread, between steps, at the position this step shows."""
        check_layer(layer, step.capture.model.config)
        position = len(step.ids) - 2
        return position, gpt2.compute.run(
            lambda: attention_rows(step.capture, layer, head, slice(position, position + 1))[0])

    def inspect_text(self, text: str, model_name: str) -> Run:
        """Capture one forward pass over any text (the stateless API's path): no generation."""
        return self.inspect_ids(model_name, self.text_ids(text, model_name))

    def text_ids(self, text: str, model_name: str) -> list[int]:
        """The ids a forward pass over `text` takes (its end, up to the context): the model is
        loaded for its context, nothing is computed, so a request's positions can be checked
        before any forward pass."""
        context = self.models.get(model_name).config.context_length
        return self.models.tokenizer(model_name).encode(text)[-context:]

    def inspect_ids(self, model_name: str, ids: list[int], layers: list[int] | None = None,
                    residuals: bool = True) -> Run:
        """One forward pass over `ids` (all of it prompt), keeping what the caller reads: the
        attention of `layers` (None: every layer) and, with `residuals`, every block's output
        (the logit lens). A plain pass, no KV cache: the capture keeps the keys of its own
        layers, so a request holds 2 x 4 x n_embd bytes a token per layer it asked for, not
        the whole model's keys and values (16 concurrent /next_tokens over 1,024 tokens of
        gpt2 held ~2.4 GB with every layer captured)."""

        def forward(model: gpt2.GPT) -> tuple[gpt2.AttentionCapture, float]:
            # every layer and block (a recomputed run): the values too, for gpt2.attribute
            every = layers is None and residuals
            with gpt2.capture_attention(model, layers=layers, residuals=residuals, values=every) as capture:
                started = time.perf_counter()
                with torch.inference_mode():  # the pass on this thread is the capture's own (gpt2.hooks)
                    model(torch.tensor([ids], device=model.device), last_only=True)
                seconds = time.perf_counter() - started
            return capture, seconds

        # What the capture will hold (Run.nbytes), counted with the run store's budget until
        # the request lets the run go: many at once on a small model, few on a large one.
        config = self.models.get(model_name).config
        n_layers = config.n_layer if layers is None else len(layers)
        release = self.runs.hold(4 * len(ids) * config.n_embd * (3 * n_layers + (config.n_layer if residuals else 1)))
        try:
            capture, seconds = self.compute(model_name, forward)
        except BaseException:
            release()
            raise
        run = Run(model_name, ids, len(ids), capture, capture.model.config, None, seconds,
                  tokenizer=self.models.tokenizer(model_name))
        run.in_flight = weakref.finalize(run, release)  # let go with the run (or when it is stored)
        return run
