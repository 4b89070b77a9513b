"""Direct logit attribution: why the model prefers one token to another at a position, split
over everything that writes to the residual stream.

The **metric** at `position` is `logit[target] - logit[contrast]` of the model's next-token
prediction there ("why A rather than B"). Defaults: `target` None is the token that follows
`position` in the text (after the last position: the model's top-1); `contrast` None is the
model's most likely token other than `target`.

The final residual stream x at `position` (the last block's output) is a sum of components:
the embeddings (token + position), and for each block the output of each attention head
(its slice of the merged heads through the matching columns of `attn.c_proj`'s weight, no
bias), that layer's `attn.c_proj.bias`, and the MLP's output. `ln_f` is made linear by
freezing x's scale, as TransformerLens' `apply_ln_to_stack` does: each component c
contributes `((c - mean(c)) / sqrt(var(x) + eps) * ln_f.weight) . (W_U[target] -
W_U[contrast])`, and `ln_f.bias . (W_U[target] - W_U[contrast])` is the final bias's part.
The contributions sum to the metric exactly (to float rounding).

For a finished run this reads what `gpt2.capture_attention(model, residuals=True,
values=True)` kept (every layer: queries, keys, values, each block's output): each head's
output at `position` is its attention row (from the kept query and keys) over the kept
values; the MLP's output is the block's output minus its input minus the attention output
(the same vector the MLP added, to float rounding). No forward pass; a few matrix-vector
products per layer (at 124M ~2 ms). What it costs the run: the kept values, 4 * n_embd
bytes per token and layer (see `gpt2.capture`), on top of the lens's block outputs. Without
such a capture, `attribute` runs one forward pass over the text up to `position` (hookless,
`gpt2.passes`) and reads the same quantities from it.

Precision: fp32 models give the reference numbers. The bf16 and int8 tiers' numbers are
their own run's activations (the residual stream in `gpt2.tiers.stream_dtype()`, keys and
values fp32 from the cache or the stream's dtype in a plain pass), decomposed in fp32 math
with `attn.c_proj`'s weight widened to fp32 (int8: dequantised); agreement with fp32 is
measured in benchmarks/explain.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import passes
from .capture import AttentionCapture
from .model import GPT


@dataclass(frozen=True)
class Attribution:
    """The metric at `position` and its parts; `heads` [n_layer, n_head], `attention_bias`
    and `mlps` [n_layer] (fp32 tensors), `embeddings` and `final_bias` floats. Their sum
    (`total()`) is `metric`."""
    position: int
    target: int
    contrast: int
    metric: float
    heads: Tensor
    attention_bias: Tensor
    mlps: Tensor
    embeddings: float
    final_bias: float

    def total(self) -> float:
        return float(self.heads.sum() + self.attention_bias.sum() + self.mlps.sum()
                     + self.embeddings + self.final_bias)

    def ranked(self) -> list[tuple[str, float]]:
        """Every component as (name, contribution), largest magnitude first: "head 5.1",
        "attention bias 5", "mlp 5", "embeddings", "final bias"."""
        items = [(f"head {l}.{h}", float(v)) for (l, h), v in zip(
            ((l, h) for l in range(self.heads.size(0)) for h in range(self.heads.size(1))),
            self.heads.flatten())]
        items += [(f"attention bias {l}", float(v)) for l, v in enumerate(self.attention_bias)]
        items += [(f"mlp {l}", float(v)) for l, v in enumerate(self.mlps)]
        items += [("embeddings", self.embeddings), ("final bias", self.final_bias)]
        return sorted(items, key=lambda item: -abs(item[1]))


def check_position(position: object, length: int) -> int:
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < length:
        raise ValueError(f"position must be an integer in 0..{length - 1} (the text has {length} tokens), "
                         f"got {position!r}")
    return position


def capture_suffices(capture: AttentionCapture | None, model: GPT, tokens: int) -> bool:
    """Whether `capture` holds what `attribute` reads for `tokens` positions: every layer's
    queries, keys and values and every block's output, for one sequence."""
    n = model.config.n_layer
    return (capture is not None and capture.model is model and capture.keeps_values
            and capture.layers == list(range(n)) and capture.blocks == list(range(n))
            and capture.num_tokens >= tokens and capture.batch_size == 1)


@torch.inference_mode()
def attribute(model: GPT, ids: object, position: int, target: int | None = None,
              contrast: int | None = None, capture: AttentionCapture | None = None) -> Attribution:
    """Direct logit attribution of logit[target] - logit[contrast] at `position` of the text
    `ids` (see the module's docstring for the definitions and defaults). `capture`: the
    run's capture, read where it holds what is needed (`capture_suffices`), else one forward
    pass over ids[:position + 1]. With a capture, `ids` must be the text it recorded (a
    generation's prompt as the model saw it, after any left-truncation, then its tokens):
    the capture keeps activations, not ids, so it cannot tell."""
    ids = passes.check_ids(model, ids)
    position = check_position(position, ids.numel())
    c = model.config
    L, H, hd = c.n_layer, c.n_head, c.head_dim
    if capture_suffices(capture, model, position + 1):
        resid = [passes.embed(model, ids[None, position:position + 1], position)[0, 0].float()]
        resid += [capture.block_output(l, slice(position, position + 1))[0, 0].float() for l in range(L)]
        merged = []
        for layer in range(L):
            probs = capture.probs(layer, slice(position, position + 1))[0, :, 0]  # [H, position + 1]
            values = capture.values(layer, position + 1)[0].float()  # [H, position + 1, hd]
            merged.append(torch.einsum("hk,hkd->hd", probs, values))
        merged = torch.stack(merged)  # [L, H, hd]
    else:
        t = passes.trace(model, ids[None, :position + 1], merged=True)
        resid = [r[0, position].float() for r in t.resid]
        merged = torch.stack([z[0, position].float().view(H, hd) for z in t.merged])
    final = resid[L]
    following = int(ids[position + 1]) if position + 1 < ids.numel() else None
    target, contrast = passes.default_tokens(model, passes.logits_at(model, final), target, contrast, following)
    u = passes.unembed_direction(model, target, contrast)
    ln = model.ln_f
    g = ln.weight.float() * u
    scale = torch.sqrt(final.var(unbiased=False) + ln.eps)
    g = (g - g.mean()) / scale  # c . g == ((c - mean(c)) / scale * ln_f.weight) . u
    heads, biases, mlps = torch.zeros(L, H), torch.zeros(L), torch.zeros(L)
    for layer, block in enumerate(model.h):
        w, b = passes.float_weights(block.attn.c_proj)  # [C, C] (out, in)
        heads[layer] = (merged[layer] * (g @ w).view(H, hd)).sum(-1)
        biases[layer] = 0.0 if b is None else b @ g
        mlps[layer] = (resid[layer + 1] - resid[layer]) @ g - heads[layer].sum() - biases[layer]
    final_bias = float(ln.bias.float() @ u)
    metric = float(passes.metric_of(model, final, u))
    return Attribution(position, target, contrast, metric, heads, biases, mlps,
                       float(resid[0] @ g), final_bias)
