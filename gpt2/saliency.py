"""Input saliency: input x gradient of the metric with respect to each position's input
embedding.

The **metric** at `position` is `logit[target] - logit[contrast]` of the model's next-token
prediction there; `target` None is the token that follows `position` in the text (after the
last position: the model's top-1), `contrast` None the model's most likely token other than
`target`. The input embedding of position p is e_p = wte[id_p] + wpe[p], the residual
stream as it enters block 0. Position p's score is `sum_d e_p,d * d metric / d e_p,d`, for
p = 0..position (later positions cannot change the prediction at `position`).

One forward and one backward pass over ids[:position + 1], with gradients for the input
only (no weight gradients), the last block computing the last position alone.

Precision: always fp32 arithmetic. An fp32 model's weights are used as they are; a bf16 or
int8 tier's are widened to fp32 (int8 dequantised) one matrix at a time as the pass reaches
it, so gradients never flow through bf16 rounding or integer products: the scores are
those of the tier's weights, not of its bf16 arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import passes
from .attribution import check_position
from .model import GPT


@dataclass(frozen=True)
class Saliency:
    """`scores` [position + 1] (fp32): input x gradient per position; `metric` the value
    whose gradient it is."""
    position: int
    target: int
    contrast: int
    metric: float
    scores: Tensor


def saliency(model: GPT, ids: object, position: int, target: int | None = None,
             contrast: int | None = None) -> Saliency:
    """Input x gradient of logit[target] - logit[contrast] at `position` of `ids` for each
    position 0..position (see the module's docstring)."""
    ids = passes.check_ids(model, ids)
    position = check_position(position, ids.numel())
    following = int(ids[position + 1]) if position + 1 < ids.numel() else None
    prefix = ids[None, :position + 1]
    with torch.inference_mode(False), torch.enable_grad():
        e = passes.embed(model, prefix).detach().float().requires_grad_(True)  # [1, P, C]
        final = passes.float_forward(model, e)[0, -1]  # [C]
        logits = passes.logits_at(model, final.detach())
        target, contrast = passes.default_tokens(model, logits, target, contrast, following)
        metric = passes.metric_of(model, final, passes.unembed_direction(model, target, contrast))
        (grad,) = torch.autograd.grad(metric, e)
    scores = (e.detach() * grad)[0].sum(-1)
    return Saliency(position, target, contrast, float(metric.detach()), scores)
