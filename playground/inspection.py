"""What one run leaves behind for inspection, and how much of it the browser gets.

A run keeps its `gpt2.AttentionCapture` (per layer: the queries plus the generation's key
cache), not attention maps: rows of a layer's map are recomputed from those in
milliseconds, a block of rows at a time, so no T×T map of every head ever exists at once.
Head roles are scored once per run the same way and kept with it. Next-token candidates
are reduced to the top few per position right after the run, so the vocab-sized
distributions are never kept. Runs live in a small LRU store with a byte budget, so memory
stays bounded however many people use the app; a run pushed out is recomputed from its token
ids when its owner looks again. A page only holds the run's random id.
"""
from __future__ import annotations

import random
import secrets
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

import gpt2
import gpt2.heads

MAX_WINDOW = 128  # the largest heatmap (per head) sent to a browser
DEFAULT_WINDOW = 64
TOP_CANDIDATES = 10
ROLE_THRESHOLD = 0.3  # a head is named by a role from this score up (gpt2.strongest_roles)
_CHUNK = 64  # positions per LM-head pass when ranking candidates: bounds the vocab-sized temp
ROW_CHUNK = 128  # query rows per block when a whole map is read: [H, 128, T] floats at a time


@dataclass(frozen=True)
class Window:
    """Positions [start, stop) shown as both queries and keys (a causal map's square block)."""
    start: int
    stop: int
    total: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def describe(self) -> str:
        if self.size == self.total:
            return f"All {self.total} tokens shown."
        earlier = (f"; the first column sums each row's attention to tokens 0–{self.start - 1}"
                   if self.start else "")
        return (f"Showing tokens {self.start}–{self.stop - 1} of {self.total} "
                f"(window of {self.size}){earlier}.")


def window(total: int, start: int | None, size: int) -> Window:
    """Clamp a requested window to the text. `start=None` means the last `size` tokens,
    where the generated text is."""
    if total <= 0:
        raise ValueError("nothing to show: the run has no tokens")
    size = max(1, min(int(size), MAX_WINDOW, total))
    start = total - size if start is None else min(max(0, int(start)), total - size)
    return Window(start, start + size, total)


@dataclass(frozen=True)
class Candidates:
    """The model's top next tokens after one position (before temperature/top-k/top-p)."""
    ids: list[int]
    probs: list[float]
    chosen_prob: float  # probability the model gave the token that actually followed


@dataclass
class Run:
    """A finished (or stopped) generation: its tokens, capture, candidates and speed."""
    model_name: str
    ids: list[int]
    n_prompt: int
    capture: gpt2.AttentionCapture
    config: gpt2.GPTConfig
    seed: int | None
    seconds: float
    dropped: int = 0  # prompt tokens cut off the front to fit the context
    ended: str = "length"  # why generation ended: "length", "end of text" or "stopped"
    first_token_s: float | None = None  # seconds to the first token: the prompt's read, apart from decoding
    settings: dict | None = None  # the sampling settings it ran with (temperature, top_k, ...), for its export
    tokenizer: gpt2.Tokenizer | None = None  # the model's own (None: GPT-2's): what its ids read as
    in_flight: Callable[[], None] | None = field(default=None, init=False, repr=False)  # RunStore.hold's release
    _roles: dict[str, np.ndarray] | None = field(default=None, init=False, repr=False)
    _candidates: list[Candidates] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def n_generated(self) -> int:
        return len(self.ids) - self.n_prompt

    def nbytes(self) -> int:
        """Rough float32 memory held: per captured layer queries, keys and values, plus the
        kept block outputs (every block's for the logit lens: 4 * n_embd bytes per token and
        block)."""
        layers = len(getattr(self.capture, "layers", ())) or self.config.n_layer
        kept = len(getattr(self.capture, "blocks", ())) or 1
        return 4 * len(self.ids) * self.config.n_embd * (3 * layers + kept)

    def attention(self, layer: int, win: Window) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights [H, R, R] of the window's queries over the window's keys, and [H, R] the
        attention each of those queries gives to all keys before the window, summed."""
        check_layer(layer, self.config)
        probs = self.capture.probs(layer, rows=slice(win.start, win.stop))[0]  # [H, R, stop]
        return probs[:, :, win.start:win.stop], probs[:, :, :win.start].sum(-1)

    @property
    def roles(self) -> dict[str, np.ndarray]:
        """Role scores {role: [L, H]} over the whole text, computed on first use and kept."""
        with self._lock:  # two views asking at once compute them once
            if self._roles is None:
                self._roles = gpt2.compute.run(lambda: role_scores(self.capture, self.ids))
            return self._roles

    @property
    def candidates(self) -> list[Candidates]:
        """What the model expected at positions 1..T-1, computed on first use and kept: an LM
        head over every position (~50 ms for 64 tokens at 124M) that most API runs never need."""
        with self._lock:
            if self._candidates is None:
                self._candidates = gpt2.compute.run(lambda: rank_candidates(self.capture, self.ids))
            return self._candidates


def check_layer(layer: int, config: gpt2.GPTConfig) -> None:
    if not 0 <= layer < config.n_layer:
        raise ValueError(f"layer must be in 0..{config.n_layer - 1}, got {layer}")


def attention_rows(capture: gpt2.AttentionCapture, layer: int, head: int | None, rows: slice) -> np.ndarray:
    """[R, K] weights of the query rows `rows` over keys 0..K-1 (K = the end of `rows`) for
    one head, or the mean over heads when `head` is None."""
    probs = capture.probs(layer, rows=rows)[0]  # [H, R, K]
    return (probs.mean(0) if head is None else probs[head]).numpy()


def attention_matrix(capture: gpt2.AttentionCapture, layer: int, head: int | None) -> np.ndarray:
    """One head's (or the mean's) whole map [T, T], zero above the diagonal, read in blocks of
    ROW_CHUNK rows so that only [H, ROW_CHUNK, T] floats of every head exist at once."""
    T = capture.num_tokens
    out = np.zeros((T, T), dtype=np.float32)
    for start in range(0, T, ROW_CHUNK):
        stop = min(start + ROW_CHUNK, T)
        out[start:stop, :stop] = attention_rows(capture, layer, head, slice(start, stop))
    return out


def attention_column(capture: gpt2.AttentionCapture, layer: int, head: int | None,
                     position: int) -> np.ndarray:
    """Column `position` of one head's (or the mean's) map: the weight each query from
    `position` on gives that key, [T - position], read in blocks of ROW_CHUNK rows."""
    T = capture.num_tokens
    blocks = (slice(start, min(start + ROW_CHUNK, T)) for start in range(position, T, ROW_CHUNK))
    return np.concatenate([attention_rows(capture, layer, head, rows)[:, position] for rows in blocks])


def role_scores(capture: gpt2.AttentionCapture, ids: list[int]) -> dict[str, np.ndarray]:
    """`gpt2.head_scores` of every layer and head, {role: [L, H]}, from blocks of ROW_CHUNK
    query rows: never the [L, H, T, T] maps at once (13 MB of rows at a time at 1.5B, T=1,024)."""
    config = capture.model.config
    targets = gpt2.heads.role_targets(torch.tensor([ids]))  # role -> [1, T, T] bool
    sums = {role: torch.zeros(config.n_layer, config.n_head) for role in targets}
    counts = dict.fromkeys(targets, 0)  # scored queries: the same in every layer
    for layer in range(config.n_layer):
        for start in range(0, len(ids), ROW_CHUNK):
            stop = min(start + ROW_CHUNK, len(ids))
            probs = capture.probs(layer, rows=slice(start, stop))[None]  # [1, 1, H, R, stop]
            block = {role: t[:, start:stop, :stop] for role, t in targets.items()}
            for role, (total, count) in gpt2.heads.score_sums(probs, block, start).items():
                sums[role][layer] += total[0]
                counts[role] += count if layer == 0 else 0
    return {role: (total / counts[role] if counts[role] else torch.full_like(total, float("nan"))).numpy()
            for role, total in sums.items()}


def strongest_head(scores: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """The head worth showing first: the strongest induction head, else the strongest
    previous-token head, else the strongest head with any role (score >= ROLE_THRESHOLD);
    None when no head has one."""
    for roles in (["induction"], ["previous_token"], list(scores)):
        best = np.stack([np.nan_to_num(scores[role], nan=-np.inf) for role in roles]).max(0)  # [L, H]
        layer, head = np.unravel_index(np.argmax(best), best.shape)
        if best[layer, head] >= ROLE_THRESHOLD:
            return int(layer), int(head)
    return None


def head_roles(run: Run, layer: int) -> list[tuple[str, float] | None]:
    """Per head of `layer`: its strongest role (`gpt2.head_scores` over the whole text) and
    score, or None when no role reaches the library's threshold."""
    named = gpt2.strongest_roles({role: torch.from_numpy(s) for role, s in run.roles.items()},
                                 ROLE_THRESHOLD)
    return [named.get((layer, h)) for h in range(run.config.n_head)]


def repeated_random_text(model: gpt2.GPT, length: int = 12, copies: int = 2, seed: int = 0) -> str:
    """Random words the model was trained on, repeated: the text on which induction heads
    light up (each token of a later copy looks at what followed it in the earlier copy)."""
    tokenizer = gpt2.get_tokenizer()
    words = [w for w in (tokenizer.decode([i]) for i in gpt2.restricted.trained_ids(model).tolist())
             if len(w) > 2 and w[0] == " " and w[1:].isalpha()]
    picked = random.Random(seed).sample(words, min(length, len(words)))
    return "".join(picked) * copies


def rank_candidates(capture: gpt2.AttentionCapture, ids: list[int],
                    k: int = TOP_CANDIDATES) -> list[Candidates]:
    """For each token after the first: what the model expected there, from the capture's
    stored hidden states (no second forward pass)."""
    out: list[Candidates] = []
    T = len(ids)
    for start in range(0, T - 1, _CHUNK):
        stop = min(start + _CHUNK, T - 1)
        probs = capture.next_token_probs(rows=slice(start, stop))[0]  # [R, vocab]
        top = torch.topk(probs, k, dim=-1)
        following = torch.tensor(ids[start + 1:stop + 1])
        chosen = probs.gather(1, following[:, None])[:, 0]
        for row in range(stop - start):
            out.append(Candidates(top.indices[row].tolist(), top.values[row].tolist(), float(chosen[row])))
    return out


@dataclass(frozen=True)
class RunRecord:
    """What recomputing a run needs, once its capture was dropped: 4 bytes a token."""
    model_name: str
    ids: array  # 'I' (uint32) token ids
    n_prompt: int
    seed: int | None
    seconds: float
    dropped: int
    ended: str
    first_token_s: float | None
    settings: dict | None

    @classmethod
    def of(cls, run: Run) -> "RunRecord":
        return cls(run.model_name, array("I", run.ids), run.n_prompt, run.seed, run.seconds, run.dropped,
                   run.ended, run.first_token_s, run.settings)


HOLD_WAIT_S = 120.0  # how long a request waits for room for its capture before it is refused


class Busy(RuntimeError):
    """No room for a capture in flight within the run store's budget (RunStore.hold)."""


class RunStore:
    """Runs by random id. Captures are kept for the most recently used runs within a count
    and byte budget; a run pushed out keeps its record (ids and settings, a few KB), from
    which `Service.run` recomputes it for its owner, so other users' traffic never loses
    anyone's run. Records beyond `max_records` go too, oldest first.

    A generation reserves its id when it starts, so the page holds it from the first token;
    whoever asks for a reserved run (Stop, showing a run that is being stored) can wait for
    it instead of finding nothing."""

    def __init__(self, max_runs: int = 32, max_bytes: int = 1024**3, max_records: int = 10_000):
        self.max_runs, self.max_bytes, self.max_records = max_runs, max_bytes, max_records
        self._runs: OrderedDict[str, tuple[Run, int]] = OrderedDict()
        self._records: OrderedDict[str, RunRecord] = OrderedDict()
        self._pending: set[str] = set()  # reserved ids whose run is not stored yet
        self._held = 0  # bytes of captures in flight (`hold`), within the same budget
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def hold(self, nbytes: int, wait: float = HOLD_WAIT_S) -> Callable[[], None]:
        """Room for a capture in flight (a request's forward pass and its answer) within the
        store's byte budget: stored runs go first (their records recompute them), then it waits
        for other requests' captures to be let go; one alone always goes ahead. Returns the
        release (idempotent). Raises Busy after `wait` seconds."""
        def room() -> bool:
            while self._runs and self._used() + self._held + nbytes > self.max_bytes:
                self._runs.popitem(last=False)
            return self._held == 0 or self._used() + self._held + nbytes <= self.max_bytes

        with self._changed:
            if not self._changed.wait_for(room, timeout=wait):
                raise Busy(f"the server is busy: other requests hold {self._held / 2**20:,.0f} MB of "
                           f"{self.max_bytes / 2**20:,.0f} MB for inspections; try again in a moment")
            self._held += nbytes
        released = False

        def release() -> None:
            nonlocal released
            with self._changed:
                if not released:
                    released, self._held = True, self._held - nbytes
                    self._changed.notify_all()

        return release

    @property
    def held(self) -> int:
        return self._held

    def reserve(self) -> str:
        """A fresh id for a run that will be added (or released) later."""
        run_id = secrets.token_urlsafe(12)
        with self._lock:
            self._pending.add(run_id)
        return run_id

    def add(self, run: Run, run_id: str | None = None) -> str:
        """Store `run` under `run_id` (reserved, or a recomputed run's own), else a new id."""
        run_id = run_id or secrets.token_urlsafe(12)
        size = run.nbytes()
        if run.in_flight is not None:
            run.in_flight()  # a recomputed run's hold: stored, it counts as a stored run
        with self._changed:
            self._runs[run_id] = (run, size)
            self._runs.move_to_end(run_id)
            self._records[run_id] = RunRecord.of(run)
            self._records.move_to_end(run_id)
            while len(self._runs) > 1 and (len(self._runs) > self.max_runs
                                           or self._used() + self._held > self.max_bytes):
                self._runs.popitem(last=False)
            while len(self._records) > self.max_records:
                self._records.popitem(last=False)
            self._pending.discard(run_id)
            self._changed.notify_all()
        return run_id

    def pending(self, run_id: str | None) -> bool:
        """Reserved and not stored yet: its generation is still running."""
        with self._lock:
            return run_id in self._pending

    def release(self, run_id: str) -> None:
        """The reserved id will get no run (the generation failed or stopped before a token)."""
        with self._changed:
            self._pending.discard(run_id)
            self._changed.notify_all()

    def get(self, run_id: str | None, wait: float = 0.0) -> Run | None:
        """The run with its capture, or None when it never existed or its capture was dropped.
        With `wait`, a reserved run is waited for up to that many seconds."""
        with self._changed:
            if wait > 0:
                self._changed.wait_for(lambda: run_id not in self._pending, timeout=wait)
            item = self._runs.get(run_id or "")
            if item is None:
                return None
            self._runs.move_to_end(run_id)
            self._records.move_to_end(run_id)
            return item[0]

    def record(self, run_id: str | None) -> RunRecord | None:
        """What recomputing the run needs, or None for an id never issued (or very old)."""
        with self._lock:
            return self._records.get(run_id or "")

    def drop_model(self, model_name: str) -> None:
        """Drop the captures of a model the table dropped (they reference it); the records stay."""
        with self._lock:
            for run_id in [i for i, (run, _) in self._runs.items() if run.model_name == model_name]:
                del self._runs[run_id]

    def _used(self) -> int:
        return sum(size for _, size in self._runs.values())

    def __len__(self) -> int:
        """Runs whose capture is kept."""
        with self._lock:
            return len(self._runs)
