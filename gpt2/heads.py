"""Name what attention heads do, from their attention probabilities and the token ids.

Every role is a *target set* of key positions per query position; a head's score for a
role is how much attention it puts on that set, measured above what uniform causal
attention would put there (TransformerLens' head detector scores raw attention mass on a
detection pattern; we read its definitions and add the chance correction, because on short
sequences uniform attention already puts 1/(q+1) on any single key, which makes "10x a
random model" meaningless for raw mass). Definitions, for query position q of row b:

- previous-token: target {q-1}; queries q >= 1.
- duplicate-token: targets {k < q : ids[k] == ids[q]}; queries with at least one target.
- induction: targets {k : 1 <= k <= q, ids[k-1] == ids[q], k-1 < q} (the token right after
  an earlier occurrence of the current token); queries with at least one target.
- first-token (attention sink): target {0}; queries q >= 1.

Per query, with m = attention mass on the targets and u = |targets| / (q+1) the mass
uniform attention over keys 0..q would give them, the chance-corrected score is
(m - u) / (1 - u): 1 when all attention is on the targets, 0 for uniform attention,
negative when a head avoids them. A role's score is the mean over its scored queries of
all rows. `relative_to_uniform=False` gives the raw mean mass m instead.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

ROLES = ("previous_token", "induction", "duplicate_token", "first_token")


def _stack_layers(attn_probs: Tensor | Sequence[Tensor] | Mapping[int, Tensor]) -> Tensor:
    """Accept [L, B, H, T, T], a list of [B, H, T, T], or {layer: [B, H, T, T]}."""
    if isinstance(attn_probs, Mapping):
        attn_probs = [attn_probs[k] for k in sorted(attn_probs)]
    if isinstance(attn_probs, Tensor):
        if attn_probs.dim() != 5:
            raise ValueError(f"attention must be [L, B, H, T, T], got {tuple(attn_probs.shape)}")
        return attn_probs.float()
    return torch.stack([p.float() for p in attn_probs])


def role_targets(ids: Tensor) -> dict[str, Tensor]:
    """Boolean target masks [B, T(query), T(key)] for each role, from ids [B, T]."""
    B, T = ids.shape
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    same = ids[:, :, None] == ids[:, None, :]  # [B, Tq, Tk]: ids[q] == ids[k]
    # same_prev[b, q, k] = ids[q] == ids[k-1], for k >= 1
    same_prev = torch.zeros_like(same)
    same_prev[:, :, 1:] = same[:, :, :-1]
    return {
        "previous_token": (k == q - 1).expand(B, T, T),
        "induction": same_prev & (k <= q),
        "duplicate_token": same & (k < q),
        "first_token": ((k == 0) & (q >= 1)).expand(B, T, T),
    }


def head_scores(attn_probs: Tensor | Sequence[Tensor] | Mapping[int, Tensor], ids: Tensor,
                relative_to_uniform: bool = True) -> dict[str, Tensor]:
    """Per role, a [L, H] tensor of scores (see the module docstring for definitions).

    `attn_probs`: per-layer softmax probabilities [B, H, T, T] (list, dict by layer, or one
    [L, B, H, T, T] tensor); `ids`: the token ids [B, T] that produced them. A role with no
    scored query in `ids` (e.g. induction on text without repeats) scores NaN. For long texts,
    `score_sums` over blocks of query rows gives the same scores without every T×T map at once.
    """
    probs = _stack_layers(attn_probs)  # [L, B, H, T, T]
    ids = ids.to("cpu")
    probs = probs.to("cpu")
    T = ids.size(1)
    if probs.shape[1] != ids.shape[0] or probs.shape[-1] != T:
        raise ValueError(f"attention {tuple(probs.shape)} does not match ids {tuple(ids.shape)}")
    sums = score_sums(probs, role_targets(ids), 0, relative_to_uniform)
    return {role: total / count if count > 0 else torch.full_like(total, float("nan"))
            for role, (total, count) in sums.items()}


def score_sums(probs: Tensor, targets: Mapping[str, Tensor], start: int = 0,
               relative_to_uniform: bool = True) -> dict[str, tuple[Tensor, int]]:
    """Per role, (sum of the per-query scores [L, H], number of scored queries) over the query
    rows start..start+R. `probs` [L, B, H, R, K] holds those rows over keys 0..K-1 (K >= the
    last row + 1; causal rows put nothing further); `targets` are `role_targets(ids)` cut to
    the same rows and keys, [B, R, K]. Summing these over blocks of rows and dividing gives
    `head_scores`."""
    R = probs.size(-2)
    n_keys = torch.arange(start + 1, start + R + 1, dtype=torch.float32)  # [R]: keys 0..q
    sums = {}
    for role, targets_of_role in targets.items():
        t = targets_of_role.float()  # [B, R, K]
        mass = (probs * t[None, :, None]).sum(-1)  # [L, B, H, R]
        uniform = t.sum(-1) / n_keys  # [B, R]
        scored = (t.sum(-1) > 0) & (uniform < 1)  # [B, R]
        per_query = mass  # [L, B, H, R]
        if relative_to_uniform:
            chance = uniform[None, :, None]  # [1, B, 1, R]
            per_query = (mass - chance) / (1 - chance).clamp_min(1e-9)
        weight = scored[None, :, None].float()  # [1, B, 1, R]
        sums[role] = ((per_query * weight).sum(dim=(1, 3)), int(scored.sum()))  # [L, H], count
    return sums


def strongest_roles(scores: Mapping[str, Tensor],
                    threshold: float = 0.3) -> dict[tuple[int, int], tuple[str, float]]:
    """{(layer, head): (role, score)} for every head whose best role scores >= `threshold`.

    Heads below the threshold are left out: most heads in a model do something these four
    patterns do not describe, and a label on them would be a guess.
    """
    roles = [r for r in scores if not torch.isnan(scores[r]).all()]
    if not roles:
        return {}
    stacked = torch.stack([torch.nan_to_num(scores[r], nan=float("-inf")) for r in roles])  # [R, L, H]
    best, which = stacked.max(dim=0)  # [L, H]
    return {(layer, head): (roles[int(which[layer, head])], float(best[layer, head]))
            for layer in range(best.size(0)) for head in range(best.size(1))
            if best[layer, head] >= threshold}
