"""Training over the ids a corpus uses, shipping a full-vocabulary GPT that never emits others.

Why: with the tied 50,257-way head a tiny model spends ~95% of its compute on the output
layer, almost all of it on ids the corpus never contains. So training runs a *compact* GPT
whose vocabulary is just the corpus ids (same class, `vocab_size=len(vocab)`; input ids
remapped), and `expand` turns it into a normal 50,257-id GPT afterwards: used rows of `wte`
get the trained vectors, unused rows one vector u chosen so their logit is a constant far
below every in-vocabulary logit, whatever the input.

The guarantee: the LM head reads h = g * n + b, where n = ln_f's normalised input has zero
mean and ||n|| <= sqrt(C). With u_i = c / g_i, the logit h.u = c * sum(n) + b.u = b.u, the
same for every input. `expand` rounds u to the storage dtype, then sets g_i = c / u_i
exactly (a <= 0.2% change to ln_f's gain, kept in float32) and picks c so that b.u equals
`UNUSED_LOGIT`. `logit_bounds` bounds both sides from the weights alone, for any input.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import GPTConfig
from ..model import GPT

UNUSED_LOGIT = -3000.0  # float32 softmax(x / T) is exactly 0 for unused ids up to T ~ 25


def local_ids(vocab: Tensor, vocab_size: int) -> Tensor:
    """Lookup [vocab_size]: global id -> index in `vocab` (-1 for ids outside it)."""
    table = torch.full((vocab_size,), -1, dtype=torch.long)
    table[vocab] = torch.arange(len(vocab))
    return table


def compact_config(config: GPTConfig, vocab: Tensor) -> GPTConfig:
    return GPTConfig(**{**config.to_dict(), "vocab_size": len(vocab)})


@torch.no_grad()
def expand(compact: GPT, vocab: Tensor, vocab_size: int,
           storage_dtype: torch.dtype = torch.bfloat16) -> GPT:
    """A full-vocabulary GPT (weights in `storage_dtype`, ln_f in float32) from a compact one."""
    C = compact.config.n_embd
    config = GPTConfig(**{**compact.config.to_dict(), "vocab_size": vocab_size})
    with torch.device("meta"):
        full = GPT(config)
    state = {k: v.detach().float().clone() for k, v in compact.state_dict().items()}
    gain, bias = state["ln_f.weight"], state["ln_f.bias"]
    gain = torch.where(gain.abs() < 1e-3, torch.full_like(gain, 1e-3).copysign(gain), gain)
    direction = (1.0 / gain).to(storage_dtype).float()  # u / c, rounded as it will be stored
    slope = float(bias @ direction)  # b.u / c
    if abs(slope) < 1e-4:
        raise ValueError("ln_f bias is orthogonal to 1/gain; cannot pin unused logits")
    c = UNUSED_LOGIT / slope
    unused_row = (c * direction).to(storage_dtype)
    wte = unused_row.float().expand(vocab_size, C).clone()
    wte[vocab] = state["wte.weight"]
    state["wte.weight"] = wte
    state["ln_f.weight"] = c / unused_row.float()
    state = {k: v if k.startswith("ln_f.") else v.to(storage_dtype) for k, v in state.items()}
    full.load_state_dict(state, assign=True)
    return full.eval()


@torch.no_grad()
def trained_ids(model: GPT) -> Tensor:
    """The ids `expand` kept from training, read back from the weights: every unused row u
    satisfies ln_f.weight * u = const (to float rounding); a trained row does not."""
    scaled = model.wte.weight.float() * model.ln_f.weight.float()  # [V, C]
    spread = (scaled - scaled.mean(-1, keepdim=True)).abs().amax(-1) / scaled.abs().amax(-1)
    return torch.nonzero(spread > 1e-4).flatten()


@torch.no_grad()
def logit_bounds(model: GPT, vocab: Tensor) -> tuple[float, float]:
    """(upper bound on any unused id's logit, lower bound on the best in-vocab logit), over
    *every* possible input, from the weights alone.

    For the final hidden state h = g * n + b with mean(n) = 0 and ||n|| <= sqrt(C):
    h.w = b.w + (g * w).n, and |(g * w).n| <= ||centred(g * w)|| sqrt(C). The best in-vocab
    logit is at least the logit of the mean in-vocab row (a max exceeds an average).
    """
    wte = model.wte.weight.float()
    gain, bias = model.ln_f.weight.float(), model.ln_f.bias.float()
    root_c = math.sqrt(wte.size(1))
    used = torch.zeros(wte.size(0), dtype=torch.bool)
    used[vocab] = True

    def spread(w: Tensor) -> Tensor:  # max |(g * w).n| over allowed n, per row
        gw = gain * w
        return (gw - gw.mean(-1, keepdim=True)).norm(dim=-1) * root_c

    unused = wte[~used]
    upper = float((unused @ bias + spread(unused)).max())
    mean_row = wte[used].mean(0)
    lower = float(mean_row @ bias - spread(mean_row))
    return upper, lower
