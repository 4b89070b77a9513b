"""Compiled one-row matrix products: decoding one token at memory speed on a CPU.

Decoding reads every weight once per token, so its speed is how fast the weights stream.
PyTorch's CPU kernel for a one-row `F.linear` streams ~14 GB/s of fp32 on one thread; the
same product written as a multiply and a row sum and compiled by inductor (vectorised C++,
rows split over OpenMP threads) streams ~30 GB/s, about the machine's read bandwidth
(benchmarks/RESULTS.md). Prefill (many rows) stays on the GEMM kernels, which are fast.

`compile_matvecs(model)` compiles these for a model's weights, by default in a background
thread: the model answers in eager mode until every kernel is built, then switches, so no
request waits for the compiler. Compiled with dynamic shapes: one kernel per dtype serves
every model size. Inductor keeps what it built on disk, so later processes start fast.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def _matvec(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x [1, in] @ weight[out, in].T (+ bias), accumulated in fp32."""
    y = (weight.float() * x.float()).sum(-1)  # [out]: inductor fuses this into one reduction
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _matvec_int8(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None) -> Tensor:
    """The int8 tier's product: dequantised inside the reduction, never materialised."""
    y = (weight.float() * x.float()).sum(-1) * scales.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


_compiled_matvec = torch.compile(_matvec, dynamic=True)
_compiled_matvec_int8 = torch.compile(_matvec_int8, dynamic=True)


# Parameters get static shapes under torch.compile (one kernel per matrix size); detached,
# they share one dynamic-shape kernel per dtype.
def matvec(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return _compiled_matvec(x, weight.detach(), None if bias is None else bias.detach())


def matvec_int8(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None) -> Tensor:
    return _compiled_matvec_int8(x, weight, scales, bias)


def one_row(x: Tensor) -> bool:
    """Whether a product with `x` may use the compiled kernels: one row, no autograd (the
    kernels were built for inference, and building another variant would stall the call)."""
    return x.numel() == x.size(-1) and torch.is_inference_mode_enabled()


@dataclass
class CompileStatus:
    """How `compile_matvecs` went: `done` is set when it finished, well or not."""
    done: threading.Event = field(default_factory=threading.Event)
    seconds: float | None = None
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.done.is_set() and self.error is None

    def __deepcopy__(self, memo: dict) -> "CompileStatus":
        return self  # a copied model shares the kernels, and so their status

    def wait(self, timeout: float | None = None) -> bool:
        """Block until compiled; True if the kernels are in use."""
        self.done.wait(timeout)
        return self.ready


def _fast_layers(model: nn.Module) -> list[nn.Module]:
    """Modules that can use the kernels: they have `use_matvec`, `matvec(x)` and
    `matvec_input()` (a one-row input of the right size and dtype)."""
    return [m for m in model.modules() if hasattr(m, "use_matvec")]


def _build(model: nn.Module) -> None:
    """Run each layer's kernel once: compiles what is new, checks the guards of the rest."""
    with torch.inference_mode():
        for layer in _fast_layers(model):
            layer.matvec(layer.matvec_input())


def compile_matvecs(model: nn.Module, background: bool = True) -> CompileStatus:
    """Compile the one-row kernels for `model` and switch its layers to them once built.

    If compilation fails (no C++ compiler, say) the model stays eager and correct; the
    reason is in the returned status and the log.
    """
    status = CompileStatus()

    def work() -> None:
        start = time.perf_counter()
        try:
            _build(model)
        except Exception as error:  # noqa: BLE001 - any failure leaves the eager path in place
            status.error = f"{type(error).__name__}: {error}"
            log.warning("compiling the decode kernels failed; staying eager (%s)", status.error)
        else:
            for layer in _fast_layers(model):
                layer.use_matvec = True
        status.seconds = time.perf_counter() - start
        status.done.set()

    if background:  # not a daemon: interpreter shutdown under a running compile crashes
        threading.Thread(target=work, name="gpt2-compile").start()
    else:
        work()
    return status
