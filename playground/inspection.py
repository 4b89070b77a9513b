"""What one run leaves behind for inspection, and how much of it the browser gets.

A run keeps its `gpt2.AttentionCapture` (per layer: the queries plus the generation's key
cache), not attention maps: a layer's T×T map for every head is recomputed from those in
milliseconds, for only the window being looked at. Next-token candidates are reduced to
the top few per position right after the run, so the vocab-sized distributions are never
kept. Runs live in a small LRU store with a byte budget, so memory stays bounded however
many people use the app; a run pushed out is recomputed from its token ids when its owner
looks again. A page only holds the run's random id.
"""
from __future__ import annotations

import random
import secrets
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

import gpt2

MAX_WINDOW = 128  # the largest map (per head) sent to a browser
DEFAULT_WINDOW = 48
TOP_CANDIDATES = 10
_CHUNK = 64  # positions per LM-head pass when ranking candidates: bounds the vocab-sized temp


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
        return (f"Showing tokens {self.start}–{self.stop - 1} of {self.total} (window of {self.size}); "
                f"attention to keys before token {self.start} is not drawn.")


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
    """A finished generation: its tokens, capture, candidates and speed."""
    model_name: str
    ids: list[int]
    n_prompt: int
    capture: gpt2.AttentionCapture
    config: gpt2.GPTConfig
    seed: int | None
    seconds: float
    candidates: list[Candidates] = field(default_factory=list)  # for positions 1..T-1
    dropped: int = 0  # prompt tokens cut off the front to fit the context

    @property
    def n_generated(self) -> int:
        return len(self.ids) - self.n_prompt

    def nbytes(self) -> int:
        """Rough float32 memory held: per layer queries, keys and values, plus hidden states."""
        return 4 * len(self.ids) * self.config.n_embd * (3 * self.config.n_layer + 1)

    def attention(self, layer: int, win: Window) -> torch.Tensor:
        """Weights [H, R, R] of the window's queries over the window's keys."""
        if not 0 <= layer < self.config.n_layer:
            raise ValueError(f"layer must be in 0..{self.config.n_layer - 1}, got {layer}")
        probs = self.capture.probs(layer, rows=slice(win.start, win.stop))  # [1, H, R, stop]
        return probs[0, :, :, win.start:win.stop]


def head_roles(run: Run, layer: int) -> list[tuple[str, float] | None]:
    """Per head of `layer`: its strongest role (`gpt2.head_scores` over the whole text) and
    score, or None when no role reaches the library's threshold."""
    probs = run.capture.probs(layer)  # [1, H, T, T]
    scores = gpt2.head_scores({layer: probs}, torch.tensor([run.ids]))
    named = gpt2.strongest_roles(scores)
    return [named.get((0, h)) for h in range(run.config.n_head)]


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

    @classmethod
    def of(cls, run: Run) -> "RunRecord":
        return cls(run.model_name, array("I", run.ids), run.n_prompt, run.seed, run.seconds, run.dropped)


class RunStore:
    """Finished runs by random id. Captures are kept for the most recently used runs within
    a count and byte budget; a run pushed out keeps its record (ids and settings, a few KB),
    from which `Service.run` recomputes it for its owner, so other users' traffic never loses
    anyone's run. Records beyond `max_records` go too, oldest first."""

    def __init__(self, max_runs: int = 32, max_bytes: int = 1024**3, max_records: int = 10_000):
        self.max_runs, self.max_bytes, self.max_records = max_runs, max_bytes, max_records
        self._runs: OrderedDict[str, tuple[Run, int]] = OrderedDict()
        self._records: OrderedDict[str, RunRecord] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, run: Run) -> str:
        run_id = secrets.token_urlsafe(12)
        self.put(run_id, run)
        return run_id

    def put(self, run_id: str, run: Run) -> None:
        """Store `run` under `run_id` (a new id, or a recomputed run's own)."""
        size = run.nbytes()
        with self._lock:
            self._runs[run_id] = (run, size)
            self._runs.move_to_end(run_id)
            self._records[run_id] = RunRecord.of(run)
            self._records.move_to_end(run_id)
            while len(self._runs) > 1 and (len(self._runs) > self.max_runs or self._used() > self.max_bytes):
                self._runs.popitem(last=False)
            while len(self._records) > self.max_records:
                self._records.popitem(last=False)

    def get(self, run_id: str | None) -> Run | None:
        """The run with its capture, or None when it never existed or its capture was dropped."""
        with self._lock:
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
