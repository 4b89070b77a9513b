"""The MLP activations a GPT-2 `config.json` may name (`activation_function`), computed as
transformers' `ACT2FN` computes them.

OpenAI's `gelu_new` and the other spellings of the same tanh approximation (`TANH_GELU`)
are not here: the model fuses that one into `c_fc`'s product (`gpt2.model.MLP`), and the
compiled decode kernels compute it. Every other parameter-free activation of `ACT2FN` is a
function below. `prelu` and `xielu` carry learned weights of their own, which a GPT-2
checkpoint has no place for in this model: they are refused (`LEARNED`).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The same function, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), to float rounding.
TANH_GELU = frozenset({"gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast", "gelu_accurate"})
LEARNED = frozenset({"prelu", "xielu"})


def _gelu_10(x: Tensor) -> Tensor:
    return torch.clip(F.gelu(x), -10, 10)


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def _laplace(x: Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> Tensor:
    return 0.5 * (1.0 + torch.erf((x - mu).div(sigma * math.sqrt(2.0))))


def _relu2(x: Tensor) -> Tensor:
    return torch.square(F.relu(x))


def _sqrt_softplus(x: Tensor) -> Tensor:
    return F.softplus(x).sqrt()


def _linear(x: Tensor) -> Tensor:
    return x


FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu, "gelu_python": F.gelu, "gelu_10": _gelu_10, "quick_gelu": _quick_gelu,
    "relu": F.relu, "relu2": _relu2, "relu6": F.relu6, "leaky_relu": F.leaky_relu,
    "silu": F.silu, "swish": F.silu, "mish": F.mish, "hardswish": F.hardswish,
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "laplace": _laplace,
    "sqrtsoftplus": _sqrt_softplus, "linear": _linear,
}
NAMES = TANH_GELU | FUNCTIONS.keys()  # every activation_function a model computes


def check(name: object) -> None:
    """Raise ValueError naming `activation_function` unless the model computes it."""
    if isinstance(name, str) and name in LEARNED:
        raise ValueError(f"activation_function={name!r} has learned weights of its own, which this "
                         "GPT-2 does not load")
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"activation_function={name!r} is not one transformers' GPT-2 computes "
                         f"(one of {', '.join(sorted(NAMES))})")


class Activation(nn.Module):
    """The MLP's activation where it is not GPT-2's tanh GELU (that one is fused into
    `c_fc`): a module, like transformers' `mlp.act`, so hooks and copies see it."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = FUNCTIONS[name]

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name
