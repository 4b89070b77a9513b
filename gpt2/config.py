"""Model hyper-parameters and OpenAI's four GPT-2 sizes."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    context_length: int = 1024  # n_positions in OpenAI's config.json
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_eps: float = 1e-5

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

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def num_params(self) -> int:
        """Parameters of the model (the LM head is tied to the token embedding), whatever
        precision they are stored in."""
        C = self.n_embd
        per_layer = 12 * C * C + 13 * C  # 4 matrices + 9C of biases + 2 LayerNorms
        return (self.vocab_size + self.context_length) * C + self.n_layer * per_layer + 2 * C

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_hf(cls, hf: dict) -> "GPTConfig":
        """Build from a Hugging Face `config.json` (GPT2Config field names)."""
        return cls(
            vocab_size=hf["vocab_size"],
            context_length=hf["n_positions"],
            n_embd=hf["n_embd"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
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
            "activation_function": "gelu_new",
        }


PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_embd=768, n_layer=12, n_head=12),  # 124M
    "gpt2-medium": GPTConfig(n_embd=1024, n_layer=24, n_head=16),  # 355M
    "gpt2-large": GPTConfig(n_embd=1280, n_layer=36, n_head=20),  # 774M
    "gpt2-xl": GPTConfig(n_embd=1600, n_layer=48, n_head=25),  # 1.5B
}
