"""Pre-train a GPT-2 from scratch: AdamW, warm-up + cosine schedule, gradient clipping, a
held-out split, periodic validation, resumable checkpoints and a loss curve.

Training runs over the corpus' own token ids only (`gpt2.training.restricted`): the softmax covers
those ids, and the saved model is a normal full-vocabulary GPT that never emits the others.
A fraction of each batch is repeated random segments (`gpt2.training.corpus`) whose maximum length
grows over training, so that induction heads form and keep working on longer repeats.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from . import corpus, restricted
from ..capture import capture_attention
from ..config import GPTConfig
from ..heads import head_scores
from ..model import GPT
from ..tokenizer import EOT_ID, encode
from .checkpoints import load_state, save_state, state_paths, write_loss_figure
from ..weights import save_model


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; the defaults are the recipe of `gpt2/data/builtin-model.safetensors`.

    Each step sees `batch_size * (1 - repeat_frac)` story windows of `seq_len + 1` tokens and
    about as many tokens again of repeated-segment rows (`corpus.repeated_segment_rows`),
    short rows whose longest segment grows from `max_seg_start` to `max_seg_end`.
    """
    steps: int = 20000
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    embed_std: float = 0.1  # larger than GPT-2's 0.02: tokens start distinguishable, heads form sooner
    pos_std: float = 0.1  # RMS of the sinusoidal position-embedding init (0: GPT-2's N(0, 0.02))
    repeat_frac: float = 0.5  # share of each batch's tokens in repeated-segment rows
    min_seg: int = 3
    max_seg_start: int = 6  # curriculum: longest repeated segment grows from this ...
    max_seg_end: int = 40  # ... to this, over the first `curriculum` share of the steps
    curriculum: float = 0.6
    corpus_docs: int = 20000  # built-in corpus size (ignored with a text file)
    val_fraction: float = 0.05
    eval_every: int = 250
    eval_batches: int = 8
    ckpt_every: int = 500
    seed: int = 0


INDUCTION_LENGTHS = (8, 16, 32)  # repeat lengths tracked during training


def sinusoidal_positions(n_pos: int, dim: int) -> Tensor:
    """[n_pos, dim] sin/cos position codes (Vaswani et al.) with unit RMS per entry.

    Only an init; the embeddings stay trainable. Why: a shift by one position is then one
    fixed rotation, so a previous-token head (half of an induction circuit) is a single
    linear map to learn instead of 256 independent position vectors to line up.
    """
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    codes = torch.zeros(n_pos, dim)
    codes[:, 0::2] = torch.sin(pos * freq)
    codes[:, 1::2] = torch.cos(pos * freq)[:, :dim // 2]
    return codes * math.sqrt(2)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def max_seg_at(step: int, cfg: TrainConfig) -> int:
    grow = min(1.0, step / max(1.0, cfg.curriculum * cfg.steps))
    return round(cfg.max_seg_start + grow * (cfg.max_seg_end - cfg.max_seg_start))


class Batches:
    """Held-out split and seeded batches in *local* ids (indices into `vocab`)."""

    def __init__(self, tokens: Tensor, cfg: TrainConfig, vocab_size: int):
        self.cfg = cfg
        self.vocab = torch.unique(torch.cat([tokens, torch.tensor([EOT_ID])]))  # global ids
        self.to_local = restricted.local_ids(self.vocab, vocab_size)
        self.segment_ids = self.vocab[self.vocab != EOT_ID]
        n_val = max(cfg.seq_len + 1, int(len(tokens) * cfg.val_fraction))
        if len(tokens) < n_val + cfg.seq_len + 1:
            raise ValueError(f"corpus of {len(tokens)} tokens is too short for seq_len={cfg.seq_len}")
        self.train_tokens, self.val_tokens = tokens[:-n_val], tokens[-n_val:]

    def _windows(self, tokens: Tensor, rows: int, generator: torch.Generator) -> Tensor:
        starts = torch.randint(0, len(tokens) - self.cfg.seq_len - 1, (rows,), generator=generator)
        return torch.stack([tokens[s:s + self.cfg.seq_len + 1] for s in starts.tolist()])

    def train_batch(self, step: int) -> list[Tensor]:
        """Local ids for `step`, the same for the same (seed, step): story windows
        [B', seq_len + 1] and/or repeated-segment rows [R, 1 + 3 * max_seg] that make up
        about `repeat_frac` of the tokens."""
        cfg = self.cfg
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        n_story = round(cfg.batch_size * (1 - cfg.repeat_frac))
        parts = [self._windows(self.train_tokens, n_story, generator)] if n_story else []
        if n_story < cfg.batch_size:
            max_seg = min(max_seg_at(step, cfg), len(self.segment_ids), cfg.seq_len // 3)
            length = 1 + 3 * max_seg  # the longest block fits, with >= 1 filler token
            rows = max(1, round((cfg.batch_size - n_story) * (cfg.seq_len + 1) / length))
            parts.append(corpus.repeated_segment_rows(self.segment_ids, self.train_tokens, rows,
                                                      length, cfg.min_seg, max_seg, generator))
        return [self.to_local[p] for p in parts]

    def val_batches(self) -> list[Tensor]:
        generator = torch.Generator().manual_seed(12345)
        return [self.to_local[self._windows(self.val_tokens, self.cfg.batch_size, generator)]
                for _ in range(self.cfg.eval_batches)]


def repeated_sequences(segment_ids: Tensor, rows: int, length: int, seed: int) -> Tensor:
    """[rows, 1 + 2 * length] global ids: EOT, then `length` distinct random ids, twice."""
    generator = torch.Generator().manual_seed(seed)
    segs = torch.stack([segment_ids[torch.randperm(len(segment_ids), generator=generator)[:length]]
                        for _ in range(rows)])
    return torch.cat([torch.full((rows, 1), EOT_ID), segs, segs], dim=1)


@torch.no_grad()
def induction_report(model: GPT, ids: Tensor) -> tuple[float, float]:
    """(best induction score over heads, best previous-token score) on ids [B, T]."""
    with capture_attention(model) as att:
        model(ids)
    scores = head_scores([att[i] for i in range(model.config.n_layer)], ids)
    return float(scores["induction"].max()), float(scores["previous_token"].max())


@torch.no_grad()
def evaluate(model: GPT, batches: Batches) -> float:
    model.eval()
    losses = [F.cross_entropy(model(b[:, :-1]).flatten(0, 1), b[:, 1:].flatten()).item()
              for b in batches.val_batches()]
    model.train()
    return sum(losses) / len(losses)


def load_tokens(text_path: str | Path | None, cfg: TrainConfig) -> Tensor:
    """The training text as ids: a UTF-8 file, or the built-in corpus (seed `cfg.seed`)."""
    if text_path is None:
        return corpus.corpus_tokens(cfg.corpus_docs, cfg.seed)
    return torch.tensor(encode(Path(text_path).read_text(encoding="utf-8")), dtype=torch.long)


def train(out: str | Path, model_config: GPTConfig, cfg: TrainConfig = TrainConfig(),
          text_path: str | Path | None = None, resume: bool = True, stop_at: int | None = None,
          progress: bool = True) -> dict:
    """Train, checkpointing beside `out`; return the history (losses, scores, timings).

    `out` receives the shippable full-vocabulary model (`gpt2.load_model(out)`) at every
    checkpoint and at the end. With `resume`, an existing checkpoint beside `out` is
    continued. `stop_at` ends the run early at that step (checkpointed), e.g. to resume later.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    batches = Batches(load_tokens(text_path, cfg), cfg, model_config.vocab_size)
    model = GPT(restricted.compact_config(model_config, batches.vocab))
    torch.nn.init.normal_(model.wte.weight, std=cfg.embed_std)
    if cfg.pos_std:
        with torch.no_grad():
            model.wpe.weight.copy_(sinusoidal_positions(*model.wpe.weight.shape) * cfg.pos_std)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, 0.95))
    probe_ids = {n: batches.to_local[repeated_sequences(batches.segment_ids, 8, n, seed=999)]
                 for n in INDUCTION_LENGTHS if 2 * n + 1 <= model_config.context_length}
    history: dict = {"step": [], "train_loss": [], "eval_step": [], "val_loss": [],
                     **{f"{role}_{n}": [] for role in ("induction", "previous") for n in probe_ids},
                     "seconds": 0.0}
    step = 0
    if resume and state_paths(out)[1].is_file():
        info = load_state(out, model, optimizer)
        step, history = info["step"], info["history"]
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)

    def checkpoint() -> None:
        info = {"step": step, "model_config": model_config.to_dict(), "train_config": asdict(cfg),
                "text_path": None if text_path is None else str(text_path),
                "vocab": batches.vocab.tolist(), "history": history}
        save_state(out, model, optimizer, info)
        save_model(restricted.expand(model, batches.vocab, model_config.vocab_size), out)
        write_loss_figure(state_paths(out)[2], history)

    model.train()
    bar = tqdm(total=end, initial=step, disable=not progress, dynamic_ncols=True)
    while step < end:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        parts = batches.train_batch(step)  # each [rows, len + 1]
        n_targets = sum(p[:, 1:].numel() for p in parts)
        loss = sum(F.cross_entropy(model(p[:, :-1]).flatten(0, 1), p[:, 1:].flatten(),
                                   reduction="sum") for p in parts) / n_targets
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        elapsed = time.perf_counter() - started
        history["seconds"] += elapsed
        history["step"].append(step)
        history["train_loss"].append(loss.item())
        postfix = {"loss": f"{loss.item():.3f}", "tok/s": f"{n_targets / elapsed:,.0f}"}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            history["eval_step"].append(step)
            history["val_loss"].append(evaluate(model, batches))
            model.eval()
            for n, ids in probe_ids.items():
                induction, previous = induction_report(model, ids)
                history[f"induction_{n}"].append(induction)
                history[f"previous_{n}"].append(previous)
            model.train()
            postfix.update(val=f"{history['val_loss'][-1]:.3f}",
                           ind="/".join(f"{history[f'induction_{n}'][-1]:.2f}" for n in probe_ids))
            bar.write(f"step {step}: " + " ".join(f"{k}={v}" for k, v in postfix.items())
                      + f" max_seg={max_seg_at(step, cfg)}")
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
        if step % cfg.ckpt_every == 0 or step == end:
            checkpoint()
    bar.close()
    return history
