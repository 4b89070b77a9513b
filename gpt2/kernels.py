"""Compiled one-row matrix products: decoding one token at memory speed on a CPU.

Decoding reads every weight once per token, so its speed is how fast the weights stream.
PyTorch's CPU kernel for a one-row `F.linear` streams ~14 GB/s of fp32 on one thread; the
same product written as a multiply and a row sum and compiled by inductor (vectorised C++,
rows split over OpenMP threads) streams ~30 GB/s, about the machine's read bandwidth
(benchmarks/RESULTS.md). Prefill (many rows) stays on the GEMM kernels, which are fast.

`compile_kernels(model)` compiles these for a model's weights, by default in a background
thread: the model answers in eager mode until every kernel is built, then switches, so no
request waits for the compiler. Compiled with dynamic shapes: one kernel per dtype serves
every model size. Inductor keeps what it built on disk, so later processes start fast.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def _product(x: Tensor, weight: Tensor, scales: Tensor | None, bias: Tensor | None) -> Tensor:
    """One row x [1, in] times weight [out, in].T -> [1, out], accumulated in fp32 and
    returned in x's dtype; int8 weights come with per-row `scales` and are dequantised
    inside the reduction, never materialised."""
    y = (weight.float() * x.float()).sum(-1)  # [out]: one fused reduction
    if scales is not None:
        y = y * scales.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)[None]


Product = tuple[Tensor, Tensor | None, Tensor | None]  # (weight, scales, bias)


# dynamic=True: one kernel per kind of call (dtypes, scales or bias absent) serves every
# matrix size; x is always a fresh [1, n] row. All tiers together need 5 variants, below
# dynamo's recompile limit of 8 per function.
_compiled_product = torch.compile(_product, dynamic=True)


def _row(x: Tensor) -> Tensor:
    x = x.reshape(1, -1)
    return x.clone() if x.storage_offset() else x  # a slice's offset would need its own guards


def product(weight: Tensor, scales: Tensor | None = None, bias: Tensor | None = None) -> Product:
    """A matrix's kernel arguments, detached: parameters get static shapes under torch.compile,
    plain tensors share the dynamic-shape kernel."""
    return weight.detach(), scales, None if bias is None else bias.detach()


def linear(x: Tensor, p: Product) -> Tensor:
    """x [..., in] holding one row -> [..., out]."""
    return _compiled_product(_row(x), *p).view(*x.shape[:-1], -1)


def one_row(x: Tensor) -> bool:
    """Whether a product with `x` may use the compiled kernels: one row on the CPU, in
    inference mode (what they were built for; another variant would compile on the call)."""
    return x.numel() == x.size(-1) and x.is_cpu and torch.is_inference_mode_enabled()


@dataclass
class CompileStatus:
    """How `compile_kernels` went: `done` is set when it finished, well or not."""
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
    """Modules that can use the kernels: they have a `use_kernels` flag and a
    `run_kernels_once()` that calls their kernel on a dummy input."""
    return [m for m in model.modules() if hasattr(m, "use_kernels")]


def _build(model: nn.Module) -> None:
    """Run each layer's kernel once: compiles what is new, checks the guards of the rest."""
    with torch.inference_mode():
        for layer in _fast_layers(model):
            layer.run_kernels_once()


def compile_kernels(model: nn.Module, background: bool = True) -> CompileStatus:
    """Compile the one-row kernels for `model` and switch its layers to them once built.

    If compilation fails (no C++ compiler, say) the model stays eager and correct; the
    reason is in the returned status and the log.
    """
    status = CompileStatus()

    def work() -> None:
        start = time.perf_counter()
        if background and hasattr(os, "setpriority"):
            # Lowest priority, so requests running meanwhile keep the cores (on Linux this
            # applies to this thread only, and to the compiler processes it starts).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            _build(model)
        except Exception as error:  # noqa: BLE001 - any failure leaves the eager path in place
            status.error = f"{type(error).__name__}: {error}"
            log.warning("compiling the decode kernels failed; staying eager (%s)", status.error)
        else:
            for layer in _fast_layers(model):
                layer.use_kernels = True
        status.seconds = time.perf_counter() - start
        status.done.set()

    if background:  # not a daemon: interpreter shutdown under a running compile crashes
        threading.Thread(target=work, name="gpt2-compile").start()
    else:
        work()
    return status
