"""Forward passes by parts, without hooks: what the causal tools (`gpt2.attribution`,
`gpt2.patching`, `gpt2.saliency`, `gpt2.steer`) run and read.

The model's own modules compute each part (`ln_1`, `c_attn`, attention, `attn.c_proj`,
`ln_2`, the MLP) exactly as `GPT.forward` calls them, in the model's own dtype and tier, but
the pass can keep what it needs (the residual stream entering each block, the merged heads
that `attn.c_proj` reads, keys and values), start at any block from a residual stream given
to it, attend after a prefix of keys and values, and compute only the last position in the
last block. The parts are called through their `forward`, so no hook (a capture, a
knock-out, a steering: anyone's) sees or changes these passes, and nothing is registered:
they never touch another request's forward passes and run concurrently with anything.

`float_forward` is the same pass in fp32 arithmetic on the weights widened to fp32 (int8
weights dequantised) one product at a time, into the kernels' reused buffers, forward and
again backward: the one autograd runs through (`gpt2.saliency`).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .fast import kernels, rowdot
from .model import GPT, Block


def check_ids(model: GPT, ids: object, name: str = "ids") -> Tensor:
    """`ids` (a list of ints, or a [T] / [1, T] tensor) as a [T] int64 tensor on the model's
    device; ValueError naming `name` for an empty text, one longer than the context, or an
    id outside the vocabulary."""
    if isinstance(ids, Tensor):
        if ids.dim() == 2 and ids.size(0) == 1:
            ids = ids[0]
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"{name} must be one sequence of integer token ids, got a {ids.dtype} "
                             f"tensor of shape {tuple(ids.shape)}")
        values = ids.tolist()
    else:
        values = list(ids)
        if any(isinstance(i, bool) or not isinstance(i, int) for i in values):
            raise ValueError(f"{name} must be integer token ids")
    if not values:
        raise ValueError(f"{name} is empty: the text has no tokens")
    c = model.config
    if len(values) > c.context_length:
        raise ValueError(f"{name} has {len(values)} tokens, more than the context of {c.context_length}")
    bad = [i for i in values if not 0 <= i < c.vocab_size]
    if bad:
        raise ValueError(f"unknown token id {bad[0]} in {name}: ids are 0..{c.vocab_size - 1}")
    return torch.tensor(values, dtype=torch.long, device=model.device)


def check_token(model: GPT, token: object, name: str) -> int:
    """A target or contrast token id: an int in the vocabulary, or ValueError."""
    if isinstance(token, bool) or not isinstance(token, int):
        raise ValueError(f"{name} must be a token id (an integer), got {token!r}")
    if not 0 <= token < model.config.vocab_size:
        raise ValueError(f"unknown token id {token} for {name}: ids are 0..{model.config.vocab_size - 1}")
    return token


def check_layer(model: GPT, layer: object) -> int:
    n = model.config.n_layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"layer must be an integer in 0..{n - 1} (the model has {n} blocks), got {layer!r}")
    return layer


def embed(model: GPT, ids: Tensor, start: int = 0) -> Tensor:
    """The residual stream entering block 0 for ids [B, T] at positions start.., in the
    blocks' dtype, as `GPT.forward` makes it."""
    pos = torch.arange(start, start + ids.size(-1), device=ids.device)
    return (model.wte(ids) + model.wpe(pos)).to(model.wpe.weight.dtype)


def heads(block: Block, x: Tensor, past: tuple[Tensor, Tensor] | None = None,
          last_only: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Block `block`'s attention on the residual stream x [B, T, C] after the keys and values
    `past` ([1 or B, H, P, hd] each, positions before x's): the merged heads [B, T', C] that
    `attn.c_proj` reads (T' = 1 with `last_only`: the last position's query alone), and this
    pass's keys and values [B, H, T, hd]."""
    attn = block.attn
    B, T, C = x.shape
    qkv = attn.c_attn.forward(block.ln_1.forward(x))
    q, k, v = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
    if attn.upcast:
        q, k, v = q.float(), k.float(), v.float()
    keys, values = k, v
    if past is not None:
        pk, pv = past
        keys = torch.cat([pk.to(k.dtype).expand(B, -1, -1, -1), k], dim=2)
        values = torch.cat([pv.to(v.dtype).expand(B, -1, -1, -1), v], dim=2)
    P = keys.size(2) - T
    mask, causal = None, T > 1
    if last_only:
        q, causal = q[:, :, -1:], False  # one query sees every key
    elif P > 0 and T > 1:
        mask, causal = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(P), False
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal, scale=attn.scale)
    return y.to(x.dtype).transpose(1, 2).reshape(B, q.size(2), C), k, v


def finish(block: Block, x: Tensor, merged: Tensor) -> Tensor:
    """The rest of the block: x [B, T, C] (the stream entering it) plus `attn.c_proj` of the
    merged heads [B, T, C], then plus the MLP of that."""
    x = x + block.attn.c_proj.forward(merged)
    return x + block.mlp.forward(block.ln_2.forward(x))


def block_forward(block: Block, x: Tensor, past: tuple[Tensor, Tensor] | None = None,
                  last_only: bool = False) -> Tensor:
    """One block on x [B, T, C] (after `past`); with `last_only`, the last position's output
    [B, 1, C] alone (the others' keys and values still feed its attention)."""
    merged, _, _ = heads(block, x, past, last_only)
    return finish(block, x[:, -1:] if last_only else x, merged)


@dataclass
class Trace:
    """One pass over ids [B, T]: `resid[l]` the stream entering block l (`resid[n_layer]`
    the last block's output, before `ln_f`), and where asked, `merged[l]` the merged heads
    `attn.c_proj` read and `kv[l]` the block's keys and values."""
    resid: list[Tensor]
    merged: list[Tensor] = field(default_factory=list)
    kv: list[tuple[Tensor, Tensor]] = field(default_factory=list)


@torch.inference_mode()
def trace(model: GPT, ids: Tensor, merged: bool = False, kv: bool = False, stop: int | None = None) -> Trace:
    """A pass over ids [B, T] keeping each block's input (up to block `stop`, default all)."""
    x = embed(model, ids)
    out = Trace([x])
    for block in model.h[:stop]:
        z, k, v = heads(block, x)
        if merged:
            out.merged.append(z)
        if kv:
            out.kv.append((k, v))
        x = finish(block, x, z)
        out.resid.append(x)
    return out


def unembed_direction(model: GPT, target: int, contrast: int) -> Tensor:
    """`W_U[target] - W_U[contrast]` [C] in fp32: what the metric dots `ln_f`'s output with."""
    w = model.head_weight
    return w[target].float() - w[contrast].float()


def metric_of(model: GPT, final: Tensor, direction: Tensor) -> Tensor:
    """logit[target] - logit[contrast] from final residual streams [..., C]: `ln_f` and the
    LM head in fp32 math (the LM head's own precision, `GPT.logits`)."""
    ln = model.ln_f
    y = F.layer_norm(final.float(), (final.size(-1),), ln.weight.float(), ln.bias.float(), ln.eps)
    return y @ direction


@torch.inference_mode()
def logits_at(model: GPT, final: Tensor) -> Tensor:
    """The model's next-token logits [vocab] (fp32) from one final residual stream [C], through
    the model's own head (in the residual stream's dtype, as `GPT.forward` calls it)."""
    return model.head(final.view(1, 1, -1).to(model.ln_f.weight.dtype))[0, 0].float()


def default_tokens(model: GPT, logits: Tensor, target: int | None, contrast: int | None,
                   following: int | None) -> tuple[int, int]:
    """The metric's tokens: `target` (None: `following`, the token that comes next in the
    text, or where there is none the model's top-1) and `contrast` (None: the model's most
    likely token other than the target), both checked."""
    if target is None:
        target = following if following is not None else int(logits.argmax())
    target = check_token(model, target, "target")
    if contrast is None:
        contrast = int(logits.topk(2).indices[1]) if int(logits.argmax()) == target else int(logits.argmax())
    contrast = check_token(model, contrast, "contrast")
    if contrast == target:
        raise ValueError(f"target and contrast are the same token ({target}): the metric "
                         "logit[target] - logit[contrast] would be 0 everywhere")
    return target, contrast


def float_weights(linear: torch.nn.Module) -> tuple[Tensor, Tensor | None]:
    """A Linear's (or the int8 tier's Int8Linear's) weight [out, in] and bias in fp32,
    detached: the tier's values, widened (int8: times its per-row scales)."""
    w = linear.weight.detach()
    if w.dtype == torch.int8:
        w = w.float() * linear.scales.detach().float()[:, None]
    bias = None if linear.bias is None else linear.bias.detach().float()
    return w.float(), bias


@contextmanager
def _widened(linear: torch.nn.Module) -> Iterator[Tensor]:
    """A bf16 or int8 Linear's weight in fp32 for the block, in a buffer borrowed from the
    decode kernels' pool (no fresh 4-byte copy of the model per call); `float_weights`'s
    values (int8 times bf16 scales is exact in fp32)."""
    w = linear.weight.detach()
    if w.dtype != torch.int8:
        with kernels.widened(w, torch.float32) as weight:
            yield weight
        return
    try:
        kernels.library()  # the dequantising kernel
    except rowdot.BuildError:  # no kernels library here: a fresh copy
        yield float_weights(linear)[0]
        return
    with kernels.dequantized(w, linear.scales.detach(), torch.float32) as weight:
        yield weight


class _WidenedLinear(torch.autograd.Function):
    """x @ W.T + b for a bf16 or int8 Linear, in fp32, differentiable in x only: the weight
    is widened for the product and again for the backward's, never kept between them."""

    @staticmethod
    def forward(ctx, x: Tensor, linear: torch.nn.Module) -> Tensor:  # noqa: ANN001
        ctx.linear = linear
        bias = None if linear.bias is None else linear.bias.detach().float()
        with _widened(linear) as weight:
            return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        with _widened(ctx.linear) as weight:
            return grad @ weight, None


def _float_linear(linear: torch.nn.Module, x: Tensor) -> Tensor:
    if linear.weight.dtype == torch.float32:
        return F.linear(x, linear.weight.detach(), None if linear.bias is None else linear.bias.detach())
    return _WidenedLinear.apply(x, linear)


def _float_ln(ln: torch.nn.Module, x: Tensor) -> Tensor:
    return F.layer_norm(x, (x.size(-1),), ln.weight.detach().float(), ln.bias.detach().float(), ln.eps)


def float_forward(model: GPT, x: Tensor, last_only: bool = True) -> Tensor:
    """The blocks in fp32 arithmetic on x [B, T, C] (the stream entering block 0, fp32) with
    every weight widened to fp32: differentiable in x. Returns the last block's output
    ([B, 1, C] at the last position with `last_only`, else [B, T, C])."""
    n = len(model.h)
    for i, block in enumerate(model.h):
        attn, mlp = block.attn, block.mlp
        B, T, C = x.shape
        qkv = _float_linear(attn.c_attn, _float_ln(block.ln_1, x))
        q, k, v = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
        last = last_only and i == n - 1
        if last:
            q, x = q[:, :, -1:], x[:, -1:]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1 and not last, scale=attn.scale)
        x = x + _float_linear(attn.c_proj, y.transpose(1, 2).reshape(B, q.size(2), C))
        h = _float_linear(mlp.c_fc, _float_ln(block.ln_2, x))
        h = F.gelu(h, approximate="tanh") if mlp.act is None else mlp.act(h)
        x = x + _float_linear(mlp.c_proj, h)
    return x
