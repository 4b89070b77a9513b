"""Compiled one-row matrix products: decoding one token at memory speed on a CPU.

Decoding reads every weight once per token, so its speed is how fast the weights stream.
PyTorch's CPU kernel for a one-row `F.linear` streams ~14 GB/s of fp32 on one thread; the
same product written as a multiply and a row sum and compiled by inductor (vectorised C++,
rows split over OpenMP threads) streams ~30 GB/s, about the machine's read bandwidth
(benchmarks/RESULTS.md). Prefill (many rows) stays on the GEMM kernels, which are fast.

`compile_kernels(model)` compiles these for a model's weights, by default in a background
thread: the model answers in eager mode until every kernel is built, then switches, so no
request waits for the compiler. Compiled with dynamic shapes: one kernel per kind of call
(the tiers' dtypes) serves every model size. Inductor keeps what it built on disk, so later
processes start fast.
Caveat: while dynamo compiles it saves and restores torch's global RNG, so draws another
thread makes from it meanwhile may repeat; seeded generation uses its own generator.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

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


# The kinds of call the tiers make: (x, weight, scales, bias) dtypes, None where absent.
_VARIANTS = (
    (torch.float32, torch.float32, None, torch.float32),  # fp32 blocks
    (torch.float32, torch.float32, None, None),  # fp32 LM head
    (torch.bfloat16, torch.bfloat16, None, torch.bfloat16),  # bf16 blocks
    (torch.float32, torch.bfloat16, None, None),  # LM head of the bf16 and int8 tiers
    (torch.bfloat16, torch.int8, torch.bfloat16, torch.bfloat16),  # int8 blocks
)


@functools.cache
def _compiled_product() -> Callable:
    """dynamic=True: one kernel per kind of call serves every matrix size (x is always a fresh
    [1, n] row), 5 in all, below dynamo's recompile limit of 8 per function. Built on first
    use, so that `import gpt2` does not load the compiler."""
    return torch.compile(_product, dynamic=True)


def _row(x: Tensor) -> Tensor:
    x = x.reshape(1, -1)
    return x.clone() if x.storage_offset() else x  # a slice's offset would need its own guards


def product(weight: Tensor, scales: Tensor | None = None, bias: Tensor | None = None) -> Product:
    """A matrix's kernel arguments, detached: parameters get static shapes under torch.compile,
    plain tensors share the dynamic-shape kernel."""
    return weight.detach(), scales, None if bias is None else bias.detach()


def linear(x: Tensor, p: Product) -> Tensor:
    """x [..., in] holding one row -> [..., out]."""
    return _compiled_product()(_row(x), *p).view(*x.shape[:-1], -1)


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

    def __getstate__(self) -> dict:  # a pickled model (torch.save) keeps the outcome, not the lock
        self.done.wait()
        return {"seconds": self.seconds, "error": self.error}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)
        self.done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until compiled; True if the kernels are in use."""
        self.done.wait(timeout)
        return self.ready


def disable(model: nn.Module) -> None:
    """Back to eager, e.g. before converting the weights: call `compile_kernels` again after."""
    if model.compile_status is not None:
        model.compile_status.wait()  # it would switch the layers on when it finishes
    for layer in _fast_layers(model):
        layer.use_kernels = False
    model.compile_status = None


def _fast_layers(model: nn.Module) -> list[nn.Module]:
    """Modules that can use the kernels: they have a `use_kernels` flag and a
    `run_kernels_once()` that calls their kernel on a dummy input."""
    return [m for m in model.modules() if hasattr(m, "use_kernels")]


_BUILD_LOCK = threading.Lock()  # dynamo is not thread-safe while it compiles


@functools.cache
def _build_every_variant() -> None:
    """Compile all kinds of call once per process, on stand-ins, so that building a
    second model (another tier, say) only checks guards: no compiling while other threads
    are calling the kernels."""
    out_features, in_features = 2304, 768  # GPT-2 sized: inductor tunes (threads, say) to these
    for x_dtype, w_dtype, s_dtype, b_dtype in _VARIANTS:
        with torch.inference_mode(False):  # like a model's weights (dispatch keys are guarded)
            weight = torch.ones(out_features, in_features).to(w_dtype)
            scales = None if s_dtype is None else torch.ones(out_features, dtype=s_dtype)
            bias = None if b_dtype is None else torch.zeros(out_features, dtype=b_dtype)
        with torch.inference_mode():  # like activations
            linear(torch.zeros(1, in_features, dtype=x_dtype), (weight, scales, bias))


def _build(model: nn.Module) -> None:
    """Compile what is new, then run each layer's kernel again with recompiling forbidden.
    Both happen here rather than on a request: hitting dynamo's recompile limit (past which
    it would silently run the uncompiled Python, far slower than eager) raises, and so does
    a kernel whose guards would not hold from one call to the next."""
    with _BUILD_LOCK, torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        _build_every_variant()
        with torch.inference_mode():
            for layer in _fast_layers(model):
                layer.run_kernels_once()
            with torch.compiler.set_stance("fail_on_recompile"):
                for layer in _fast_layers(model):
                    layer.run_kernels_once()


def compile_kernels(model: nn.Module, background: bool = True) -> CompileStatus:
    """Compile the one-row kernels for `model` and switch its layers to them once built.

    The returned status is also `model.compile_status`. If compilation fails (no C++
    compiler, say) the model stays eager and correct; the reason is in the status and the log.
    """
    status = model.compile_status = CompileStatus()

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
