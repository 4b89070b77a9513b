"""A guard for the modules the forward pass calls, while kernels compile on another thread."""
from __future__ import annotations

from torch import nn


class Pinned:
    """Mixed into every module the forward pass calls. While inductor compiles kernels in a
    background thread (`gpt2.fast.kernels`), torch.fx tracers swap `nn.Module.__call__` and
    `__getattr__` on nn.Module itself, process-wide, for the length of a trace: a request
    decoding on another thread at that moment went through the tracer and failed ("module
    is not installed as a submodule", tests/test_kernels.py). Our classes keep their own."""

    __call__ = nn.Module.__call__
    __getattr__ = nn.Module.__getattr__
