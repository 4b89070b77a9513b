"""GPT-2: pre-LayerNorm transformer with OpenAI's fused q,k,v projection (`c_attn`)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import TANH_GELU, Activation
from .config import GPTConfig
from .fast import gemm, kernels
from .kv_cache import CacheBatch, KVCache

Cache = KVCache | CacheBatch  # one generation's cache, or one per row of a batched step


class Linear(nn.Linear):
    """`nn.Linear` whose decode-step products (one position per sequence) run on
    `gpt2.fast.kernels` once `compile_kernels` has built them; everything else is
    `gpt2.fast.gemm.linear`. `gelu=True` returns GPT-2's tanh GELU of the output, fused into
    the kernel or the GEMM."""

    use_kernels = False

    def forward(self, x: Tensor, gelu: bool = False) -> Tensor:
        if self.use_kernels and kernels.serves(x):
            return kernels.linear(x, self.weight, bias=self.bias, gelu=gelu)
        if self.weight.dtype != x.dtype:  # bf16 weights in an fp32 stream (`gpt2.tiers.stream_dtype`)
            return self._widened(x, gelu)
        return gemm.linear(x, self.weight, self.bias, gelu)

    def _widened(self, x: Tensor, gelu: bool) -> Tensor:
        """The product in x's dtype: a short prefill on the kernels, which read the bf16
        weights as they are; else the weights widened a layer at a time into a reused buffer
        for the GEMM (never an emulated bf16 GEMM)."""
        if x.numel() <= 16 * x.size(-1) and self.use_kernels and kernels.serves_rows(x):
            return kernels.linear(x, self.weight, bias=self.bias, gelu=gelu)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if torch.is_grad_enabled() and x.requires_grad or not x.is_cpu:
            return gemm.linear(x, self.weight.to(x.dtype), bias, gelu)
        with kernels.widened(self.weight, x.dtype) as weight:
            return gemm.linear(x, weight, bias, gelu)


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` whose decode-step rows run on `gpt2.fast.kernels` with the kernels: the
    function the fused decode step (`kernels.decode_step`) calls too, so that a step gives
    the same bits whether its blocks run one by one (with hooks) or in one call."""

    use_kernels = False

    def forward(self, x: Tensor) -> Tensor:
        if self.use_kernels and kernels.serves(x) and x.dtype in (torch.float32, torch.bfloat16):
            return kernels.layer_norm(x, self.weight, self.bias, self.eps)
        return super().forward(x)


class RequestLinear(Linear):
    """A Linear called with the generation's KV cache (or a batched step's `CacheBatch`) as a
    second positional argument, which the math ignores: forward hooks (`gpt2.hooks`: capture,
    head knock-out) read it from `args` to tell which request, or which row, a call belongs
    to. Used for `c_attn` and `attn.c_proj`."""

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:  # noqa: ARG002
        return super().forward(x)


class FusedQKV(RequestLinear):
    """OpenAI's `c_attn`: x -> [q | k | v] in one matmul."""


class CausalSelfAttention(nn.Module):
    use_kernels = False  # decode steps' attention in `gpt2.fast.kernels`, as in `Linear`

    def __init__(self, config: GPTConfig, layer_idx: int, device: torch.device | str | None = None):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.scale = config.attn_scale(layer_idx)  # None: SDPA's 1/sqrt(head_dim), GPT-2's
        self.upcast = config.reorder_and_upcast_attn
        self.c_attn = FusedQKV(config.n_embd, 3 * config.n_embd, device=device)
        self.c_proj = RequestLinear(config.n_embd, config.n_embd, device=device)  # reads the merged heads

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        B, T, C = x.shape
        qkv = self.c_attn(x, cache)  # [B, T, 3C]
        if cache is not None and T == 1 and self.use_kernels and kernels.serves(qkv):
            rows = cache.decode_rows()  # None: a cache the kernel cannot read
            if rows is not None:
                return self.c_proj(kernels.decode_attention(qkv, rows, self.layer_idx, self.n_head), cache)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in qkv.split(C, dim=2))  # each [B, H, T, hd]
        if self.upcast:
            q, k, v = q.float(), k.float(), v.float()
        if isinstance(cache, CacheBatch):  # each row over its own cache
            y = torch.cat([attend(q[i:i + 1], k[i:i + 1], v[i:i + 1], c, self.layer_idx, self.scale)
                           for i, c in enumerate(cache.caches)])
        else:
            y = attend(q, k, v, cache, self.layer_idx, self.scale)
        heads = y.to(x.dtype).transpose(1, 2).reshape(B, T, C)  # head h in columns [h*hd, (h+1)*hd)
        return self.c_proj(heads, cache)


def attend(q: Tensor, k: Tensor, v: Tensor, cache: KVCache | None, layer: int,
           scale: float | None = None) -> Tensor:
    """Causal attention of q over k, v [B, H, T, hd], after the cached keys and values if any;
    q.k times `scale` (None: 1/sqrt(hd))."""
    mask = None  # None: causal from position 0, or a single query that sees every key
    if cache is not None:
        k, v, mask = cache.update(layer, k, v)  # k, v: [B, H, keys, hd]
        # On the CPU in fp32 (bf16 SDPA is slow there), a bf16 cache's values widened exactly
        work = torch.float32 if k.is_cpu else k.dtype
        q, k, v = q.to(work), k.to(work), v.to(work)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and q.size(2) > 1,
                                          scale=scale)


class MLP(nn.Module):
    """c_fc, GELU, c_proj; GPT-2's tanh GELU runs inside c_fc's call (fused into its GEMM on
    the CPU), so a forward hook on `mlp.c_fc` sees the activations after the GELU. Another
    `activation_function` is its own module, `mlp.act` (as in transformers), after c_fc."""

    def __init__(self, config: GPTConfig, device: torch.device | str | None = None):
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.mlp_width, device=device)
        self.c_proj = Linear(config.mlp_width, config.n_embd, device=device)
        name = config.activation_function
        self.act = None if name in TANH_GELU else Activation(name)

    def forward(self, x: Tensor) -> Tensor:
        if self.act is None:
            return self.c_proj(self.c_fc(x, gelu=True))
        return self.c_proj(self.act(self.c_fc(x)))


class UntiedHead(nn.Module):
    """The LM head of a checkpoint with `tie_word_embeddings: false`: a [vocab, C] weight of
    its own (`lm_head.weight`), which `GPT.logits` reads as it reads the tied embedding."""

    def __init__(self, config: GPTConfig, device: torch.device | str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.vocab_size, config.n_embd, device=device))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int, device: torch.device | str | None = None):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_eps, device=device)
        self.attn = CausalSelfAttention(config, layer_idx, device)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_eps, device=device)
        self.mlp = MLP(config, device)

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """`model(idx)` -> logits [B, T, vocab]; with a `KVCache`, `idx` continues the cached text;
    with a `CacheBatch`, row i of `idx` continues the text of the batch's cache i."""

    use_kernels = False  # the LM head's decode-step kernel, as in `Linear`
    compile_status: kernels.CompileStatus | None = None  # set by `gpt2.load_model`

    def __init__(self, config: GPTConfig, device: torch.device | str | None = None):
        super().__init__()
        self.config = config
        # Empty weights (`_weight`): reset_parameters below initialises them, and nn.Embedding's
        # own init on the meta device (gpt2.load_model) would import sympy & co., 74 MB of RSS.
        self.wte = nn.Embedding(config.vocab_size, config.n_embd,
                                _weight=torch.empty(config.vocab_size, config.n_embd, device=device))
        self.wpe = nn.Embedding(config.context_length, config.n_embd,
                                _weight=torch.empty(config.context_length, config.n_embd, device=device))
        self.h = nn.ModuleList(Block(config, i, device) for i in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_eps, device=device)
        self.lm_head = None if config.tie_word_embeddings else UntiedHead(config, device)
        self.int8_head: nn.Module | None = None  # the int8 tier's LM head (gpt2.fast.int8.Int8Head)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
        for name, p in self.named_parameters():
            if p.is_meta:
                continue
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln_" in name or name.startswith("ln_"):
                nn.init.ones_(p)
            else:
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    @property
    def head_weight(self) -> Tensor:
        """The LM head's weight [vocab, C]: the token embedding, or an untied head's own."""
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def residual_stream(self, idx: Tensor, cache: Cache | None = None) -> Tensor:
        """The last block's output [B, T, C], before `ln_f`."""
        return self._run(idx, cache, head=False)[0]

    def _run(self, idx: Tensor, cache: Cache | None, head: bool) -> tuple[Tensor, Tensor | None]:
        """The residual stream after the last block, and the logits where a decode step's one
        library call computed them too (`kernels.decode_step`; asked for with `head`)."""
        T = idx.size(1)
        piece = cache is not None and (T == 1 or T <= kernels.prefill_rows(self))  # a decode step, or a short piece
        fused = kernels.decode_step(self, idx, cache, head) if piece else None
        if fused is None and piece and T > 1 and kernels.decodes(self, idx):
            # Hooks the one call cannot run (a knock-out): the piece a token at a time through
            # the modules, whose one-token steps give the one call's bits.
            return torch.cat([self._run(idx[:, t:t + 1], cache, head=False)[0] for t in range(T)], dim=1), None
        if fused is not None:
            x, logits = fused
        else:
            if cache is None:
                if T > self.config.context_length:
                    raise ValueError(f"{T} positions exceed the context window of {self.config.context_length}")
                pos = torch.arange(T, device=idx.device)
            else:
                pos = cache.positions(T)  # [T], or [B, T] for a CacheBatch
            x = (self.wte(idx) + self.wpe(pos)).to(self.wpe.weight.dtype)  # the blocks' dtype
            for block in self.h:
                x = block(x, cache)  # positional: capture hooks read it from args
            logits = None
        if cache is not None:
            cache.advance(T)
        return x, logits

    def hidden_states(self, idx: Tensor, cache: Cache | None = None) -> Tensor:
        """Final LayerNorm output [B, T, C]: what the LM head reads."""
        return self.ln_f(self.residual_stream(idx, cache))

    def head(self, x: Tensor) -> Tensor:
        """`ln_f` and the LM head on the residual stream x [..., C] -> fp32 logits: the int8
        tier's own head where it has one, else the tied embedding (`logits`)."""
        if self.int8_head is not None:
            return self.int8_head(x, self.head_weight, self.ln_f)
        return self.logits(self.ln_f(x))

    def logits(self, hidden: Tensor) -> Tensor:
        """The LM head, tied to the token embedding (as in OpenAI's checkpoints) or untied:
        fp32 logits from fp32 math, even where the weight is stored in bf16 (the fast tiers),
        because rounding logits to bf16 flips near-tied predictions (see `gpt2.tiers`). One
        exception: eager decoding of a fast tier on the CPU (see below)."""
        weight = self.head_weight
        if self.use_kernels and kernels.serves(hidden):  # bf16 hidden: its products are exact in fp32
            return kernels.linear(hidden, weight, out_dtype=torch.float32)
        if weight.dtype == torch.float32:
            return gemm.linear(hidden.float(), weight)
        if hidden.numel() == hidden.size(-1) and hidden.is_cpu:
            # The CPU has no bf16 GEMV with fp32 output and converting the weight would cost
            # more than the whole step: until the kernels are ready, logits rounded to bf16.
            return gemm.linear(hidden.to(weight.dtype), weight).float()
        # Many rows: the weight converted a slice at a time, so no full fp32 copy exists.
        hidden = hidden.float()
        logits = hidden.new_empty(*hidden.shape[:-1], weight.size(0))
        for start in range(0, weight.size(0), 8192):
            rows = weight[start:start + 8192]
            logits[..., start:start + rows.size(0)] = gemm.linear(hidden, rows.float())
        return logits

    def forward(self, idx: Tensor, cache: Cache | None = None, last_only: bool = False) -> Tensor:
        # last_only: the head on the last position alone (a fused step's head is per row: the same bits)
        x, logits = self._run(idx, cache, head=not last_only or idx.size(1) == 1)
        if logits is not None:
            return logits
        return self.head(x[:, -1:] if last_only else x)
