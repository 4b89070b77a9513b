"""Activation patching, clean -> corrupted: which heads, and which (layer, position) of the
residual stream, carry what makes the clean prompt's answer differ from the corrupted one's.

Two prompts of the same token count; the **metric** is `logit[target] - logit[contrast]` at
the last position. Defaults: `target` None is the clean prompt's top-1 there; `contrast`
None is the corrupted prompt's top-1, or where that is the target, the clean prompt's most
likely token other than the target.

- `patch_heads`: for each (layer, head), the corrupted run with that head's output (its
  slice of the merged heads `attn.c_proj` reads) at every position taken from the clean run.
- `patch_residual`: for each (layer, position), the corrupted run with the residual stream
  entering block `layer` at `position` taken from the clean run.

Each cell is normalised: `(m_patched - m_corrupted) / (m_clean - m_corrupted)`, 0 = no
effect, 1 = the clean metric fully restored.

The patched passes run as rows of batched forwards (`gpt2.passes`, no hooks), and each
starts where it first differs from the corrupted run: a head patched in layer l reuses the
corrupted run's blocks before l (and its attention in block l); a residual patched at
position t reuses the corrupted run's keys and values before t (before the start of t's
band of positions, `RESIDUAL_BANDS`) in every block; the last
block computes the last position alone. The rows are cut into chunks of at most
`MAX_TOKENS` positions per forward, which bounds the memory (at 124M, ~0.1 GB).

Precision: every pass runs in the model's own tier (fp32, or the bf16 / int8 tier's weights
and residual stream, `gpt2.tiers`); the metric is `ln_f` and the LM head's rows in fp32
math. fp32 models give the reference numbers; benchmarks/explain.py measures the tiers'
agreement.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import passes
from .model import GPT

MAX_TOKENS = 8192  # positions (rows x tokens) per batched forward
# Residual patching: the positions are cut into this many bands; a band's rows start at its
# first position (the keys and values before it are the corrupted run's). More bands skip
# more recomputation (all T: half of it) but make more, smaller products: 4 does 1.25x the
# least work in 4 x n_layer block calls.
RESIDUAL_BANDS = 4


@dataclass(frozen=True)
class Patching:
    """`grid` [n_layer, n_head] (heads) or [n_layer, T] (residual): normalised effects;
    `patched` the raw metric of each patched run."""
    level: str
    target: int
    contrast: int
    metric_clean: float
    metric_corrupted: float
    grid: Tensor
    patched: Tensor


def _prompts(model: GPT, clean: object, corrupted: object) -> tuple[Tensor, Tensor]:
    clean = passes.check_ids(model, clean, "clean")
    corrupted = passes.check_ids(model, corrupted, "corrupted")
    if clean.numel() != corrupted.numel():
        raise ValueError(f"the clean and corrupted prompts must have the same number of tokens: "
                         f"clean has {clean.numel()}, corrupted has {corrupted.numel()}")
    return clean[None], corrupted[None]


def _setup(model: GPT, clean: Tensor, corrupted: Tensor, target: int | None, contrast: int | None,
           **kw) -> tuple[passes.Trace, passes.Trace, int, int, Tensor, float, float]:
    c, k = passes.trace(model, clean, **kw), passes.trace(model, corrupted, **kw)
    clean_logits = passes.logits_at(model, c.resid[-1][0, -1])
    if target is None:
        target = int(clean_logits.argmax())
    target = passes.check_token(model, target, "target")
    if contrast is None:
        contrast = int(passes.logits_at(model, k.resid[-1][0, -1]).argmax())
        if contrast == target:
            contrast = int(clean_logits.topk(2).indices[1]) if int(clean_logits.argmax()) == target \
                else int(clean_logits.argmax())
    contrast = passes.check_token(model, contrast, "contrast")
    if contrast == target:
        raise ValueError(f"target and contrast are the same token ({target}): the metric "
                         "logit[target] - logit[contrast] would be 0 everywhere")
    u = passes.unembed_direction(model, target, contrast)
    m_clean = float(passes.metric_of(model, c.resid[-1][0, -1], u))
    m_corrupted = float(passes.metric_of(model, k.resid[-1][0, -1], u))
    if m_clean == m_corrupted:
        raise ValueError(f"the metric is the same on both prompts ({m_clean:.6g}): there is no "
                         "difference for patching to restore")
    return c, k, target, contrast, u, m_clean, m_corrupted


def _result(level, target, contrast, m_clean, m_corrupted, patched: Tensor) -> Patching:
    grid = (patched - m_corrupted) / (m_clean - m_corrupted)
    return Patching(level, target, contrast, m_clean, m_corrupted, grid, patched)


def _chunks(n_layer: int, rows_per_layer: int, tokens: int) -> list[range]:
    """Ranges of start layers whose rows (rows_per_layer each, `tokens` positions) fit
    MAX_TOKENS together (at least one layer)."""
    per = max(1, MAX_TOKENS // max(1, rows_per_layer * tokens))
    return [range(a, min(a + per, n_layer)) for a in range(0, n_layer, per)]


@torch.inference_mode()
def patch_heads(model: GPT, clean: object, corrupted: object, target: int | None = None,
                contrast: int | None = None) -> Patching:
    """Patch each head's output, at every position, from the clean run into the corrupted
    one (see the module's docstring): `grid` [n_layer, n_head]."""
    clean, corrupted = _prompts(model, clean, corrupted)
    c, k, target, contrast, u, m_clean, m_corrupted = _setup(model, clean, corrupted, target, contrast,
                                                             merged=True)
    cfg = model.config
    L, H, hd, T = cfg.n_layer, cfg.n_head, cfg.head_dim, clean.size(1)
    patched = torch.empty(L, H)
    for layers in _chunks(L, H, T):
        x = None  # rows started so far [R, T, C]: head h of layer l at row (l - start) * H + h
        for layer in range(layers.start, L):
            block, last = model.h[layer], layer == L - 1
            if x is not None:
                x = passes.block_forward(block, x, last_only=last)
            if layer in layers:  # this layer's rows: the corrupted run with one head from the clean run
                merged = k.merged[layer].expand(H, T, -1).clone()
                for h in range(H):
                    cols = slice(h * hd, (h + 1) * hd)
                    merged[h, :, cols] = c.merged[layer][0, :, cols]
                resid = k.resid[layer].expand(H, T, -1)
                new = passes.finish(block, resid[:, -1:] if last else resid, merged[:, -1:] if last else merged)
                x = new if x is None else torch.cat([x, new])
        patched[layers.start:layers.stop] = passes.metric_of(model, x[:, -1], u).view(-1, H).cpu()
    return _result("heads", target, contrast, m_clean, m_corrupted, patched)


@torch.inference_mode()
def patch_residual(model: GPT, clean: object, corrupted: object, target: int | None = None,
                   contrast: int | None = None) -> Patching:
    """Patch the residual stream entering each block at each position from the clean run
    into the corrupted one (see the module's docstring): `grid` [n_layer, T]."""
    clean, corrupted = _prompts(model, clean, corrupted)
    c, k, target, contrast, u, m_clean, m_corrupted = _setup(model, clean, corrupted, target, contrast,
                                                             kv=True)
    L, T = model.config.n_layer, clean.size(1)
    patched = torch.empty(L, T)
    band = -(-T // RESIDUAL_BANDS)
    for s in range(0, T, band):  # rows patching positions s..e-1: positions before s are the corrupted run's
        e, n = min(s + band, T), T - s
        for layers in _chunks(L, e - s, n):
            x = None  # rows [R, n, C]: (start layer, position) in layer-major order
            for layer in range(layers.start, L):
                block, last = model.h[layer], layer == L - 1
                if layer in layers:
                    new = k.resid[layer][:, s:].expand(e - s, n, -1).clone()
                    for t in range(s, e):
                        new[t - s, t - s] = c.resid[layer][0, t]
                    x = new if x is None else torch.cat([x, new])
                past = None
                if s > 0:
                    pk, pv = k.kv[layer]
                    past = (pk[:, :, :s], pv[:, :, :s])
                x = passes.block_forward(block, x, past, last_only=last)
            patched[layers.start:layers.stop, s:e] = passes.metric_of(model, x[:, -1], u).view(-1, e - s).cpu()
    return _result("residual", target, contrast, m_clean, m_corrupted, patched)


LEVELS = {"heads": patch_heads, "residual": patch_residual}


def patch(model: GPT, clean: object, corrupted: object, level: str = "heads", target: int | None = None,
          contrast: int | None = None) -> Patching:
    """`patch_heads` (level "heads") or `patch_residual` (level "residual")."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(map(repr, LEVELS))}, got {level!r}")
    return LEVELS[level](model, clean, corrupted, target, contrast)
