"""Model hyper-parameters and OpenAI's four GPT-2 sizes.

Beyond the sizes, a config holds every field of transformers' `GPT2Config` that changes what
a GPT-2 computes (activation, attention scaling, MLP width, an untied LM head, end-of-text
ids), with OpenAI's values as defaults; `from_hf` refuses, naming the field, what this model
cannot compute.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from . import activations

GPT2_EOT_ID = 50256  # GPT-2's <|endoftext|>: OpenAI's bos_token_id and eos_token_id


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    context_length: int = 1024  # n_positions in OpenAI's config.json
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_eps: float = 1e-5
    n_inner: int | None = None  # the MLP's width; None: 4 * n_embd
    activation_function: str = "gelu_new"  # see gpt2.activations
    scale_attn_weights: bool = True  # q.k / sqrt(head_dim)
    scale_attn_by_inverse_layer_idx: bool = False  # and / (layer + 1)
    reorder_and_upcast_attn: bool = False  # attention in fp32 whatever the weights' dtype
    tie_word_embeddings: bool = True  # False: the LM head is a weight of its own
    bos_token_id: int | None = GPT2_EOT_ID
    eos_token_id: int | None = GPT2_EOT_ID

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
            raise ValueError(f"layer_norm_eps must be a positive number, got {eps!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_inner is not None and (isinstance(self.n_inner, bool) or not isinstance(self.n_inner, int)
                                         or self.n_inner < 1):
            raise ValueError(f"n_inner must be a whole number >= 1 or null, got {self.n_inner!r}")
        activations.check(self.activation_function)
        for name in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                     "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a token id >= 0 or null, got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    def attn_scale(self, layer: int) -> float | None:
        """What layer `layer` multiplies q.k by, as transformers' GPT2Attention: 1/sqrt(head_dim)
        if scale_attn_weights (else 1), divided by layer + 1 if scale_attn_by_inverse_layer_idx.
        None for GPT-2's own 1/sqrt(head_dim), which SDPA applies by default."""
        if self.scale_attn_weights and not self.scale_attn_by_inverse_layer_idx:
            return None
        scale = self.head_dim ** -0.5 if self.scale_attn_weights else 1.0
        return scale / (layer + 1) if self.scale_attn_by_inverse_layer_idx else scale

    @property
    def variant(self) -> str:
        """How the computation differs from OpenAI's GPT-2, beyond its sizes ("" where it does
        not): the fields and their values, e.g. "activation_function='relu'". Token ids and
        reorder_and_upcast_attn (a precision, which the fp32 model has anyway) are not listed."""
        changed = [] if self.activation_function in activations.TANH_GELU else [
            f"activation_function={self.activation_function!r}"]
        if self.mlp_width != 4 * self.n_embd:
            changed.append(f"n_inner={self.n_inner}")
        for name in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "tie_word_embeddings"):
            if getattr(self, name) != getattr(GPTConfig, name):
                changed.append(f"{name}={getattr(self, name)}")
        return ", ".join(changed)

    @property
    def kernel_compatible(self) -> bool:
        """Whether the model computes OpenAI's GPT-2 block and head (tanh GELU, a 4 * n_embd
        MLP, q.k / sqrt(head_dim), the LM head tied to the embedding): the only variant the
        compiled decode kernels (`gpt2.fast`) compute."""
        return not self.variant

    @property
    def num_params(self) -> int:
        """Parameters of the model, whatever precision they are stored in."""
        C, inner = self.n_embd, self.mlp_width
        per_layer = 4 * C * C + 2 * C * inner + 9 * C + inner  # 4 matrices, their biases, 2 LayerNorms
        head = 0 if self.tie_word_embeddings else self.vocab_size * C
        return (self.vocab_size + self.context_length) * C + self.n_layer * per_layer + 2 * C + head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_hf(cls, hf: dict) -> "GPTConfig":
        """Build from a Hugging Face `config.json` (GPT2Config field names, absent ones at
        GPT2Config's defaults). ValueError naming the field for what GPT-2 code cannot
        compute: another model_type, cross-attention, a quantised checkpoint."""
        refuse_unsupported(hf)
        return cls(
            vocab_size=hf["vocab_size"],
            context_length=hf["n_positions"],
            n_embd=hf["n_embd"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            n_inner=hf.get("n_inner"),
            activation_function=hf.get("activation_function", "gelu_new"),
            scale_attn_weights=hf.get("scale_attn_weights", True),
            scale_attn_by_inverse_layer_idx=hf.get("scale_attn_by_inverse_layer_idx", False),
            reorder_and_upcast_attn=hf.get("reorder_and_upcast_attn", False),
            tie_word_embeddings=hf.get("tie_word_embeddings", True),
            bos_token_id=hf.get("bos_token_id", GPT2_EOT_ID),
            eos_token_id=one_id(hf.get("eos_token_id", GPT2_EOT_ID)),
        )

    def to_hf(self) -> dict:
        """The `config.json` fields `transformers.GPT2Config` needs for the same model."""
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_positions": self.context_length,
            "n_ctx": self.context_length,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "layer_norm_epsilon": self.layer_norm_eps,
            "n_inner": self.n_inner,
            "activation_function": self.activation_function,
            "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "reorder_and_upcast_attn": self.reorder_and_upcast_attn,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }


def refuse_unsupported(hf: dict) -> None:
    """ValueError naming the field of a `config.json` that asks for what GPT-2 code cannot
    compute."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"model_type={hf['model_type']!r}: not a GPT-2 checkpoint (only model_type "
                         "'gpt2' is computed here)")
    if hf.get("add_cross_attention", False):
        raise ValueError(f"add_cross_attention={hf['add_cross_attention']!r}: cross-attention blocks "
                         "(GPT-2 as an encoder-decoder's decoder) are not computed here")
    if hf.get("quantization_config") is not None:
        quant = hf["quantization_config"]
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        raise ValueError(f"quantization_config (quant_method={method!r}): quantised checkpoints are "
                         "not read here; use the checkpoint's unquantised weights")


def one_id(value: object) -> object:
    """`eos_token_id` as one id: transformers allows a list; one entry is that id."""
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"eos_token_id={value!r}: one end-of-text id is supported, not {len(value)}")
        return value[0]
    return value


PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_embd=768, n_layer=12, n_head=12),  # 124M
    "gpt2-medium": GPTConfig(n_embd=1024, n_layer=24, n_head=16),  # 355M
    "gpt2-large": GPTConfig(n_embd=1280, n_layer=36, n_head=20),  # 774M
    "gpt2-xl": GPTConfig(n_embd=1600, n_layer=48, n_head=25),  # 1.5B
}
