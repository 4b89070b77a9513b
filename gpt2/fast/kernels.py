"""Compiled one-row matrix products: decoding one token at memory speed on a CPU.

Decoding reads every weight once per token, so its speed is how fast the weights stream.
For a one-row product in fp32, PyTorch's `F.linear` streams ~16 GB/s, oneDNN's GEMM (the
eager path, `gpt2.fast.gemm`) ~27 GB/s; the same product written as a multiply and a row sum and
compiled by inductor (vectorised C++, rows split over OpenMP threads) ~32 GB/s
(benchmarks/KERNELS.md; the machine's read bandwidth itself moves between runs, RESULTS.md).
Prefill (many rows) stays on oneDNN's GEMM, which is fast.

`compile_kernels(model)` compiles these for a model's weights, by default in a background
thread: the model answers in eager mode until every kernel is built, then switches, so no
request waits for the compiler. Compiled with dynamic shapes: one kernel per kind of call
(the tiers' dtypes) serves every model size. Inductor keeps what it built on disk, so later
processes start fast. Requests call inductor's code directly, not through torch.compile's
wrapper: dynamo's guards and the AOT wrappers cost ~20 us a call, 49 calls a token
(`gpt2.fast.inductor` settles once what they would check).
Caveat: while dynamo compiles it saves and restores torch's global RNG, so draws another
thread makes from it meanwhile may repeat; seeded generation uses its own generator.
"""
from __future__ import annotations

import concurrent.futures.process  # noqa: F401 - see `compile_kernels`: their exit hooks first
import concurrent.futures.thread  # noqa: F401
import contextlib
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from . import cache, inductor

log = logging.getLogger(__name__)


def _product(x: Tensor, weight: Tensor, scales: Tensor | None, bias: Tensor | None,
             out_dtype: torch.dtype) -> Tensor:
    """One row x [1, in] times weight [out, in].T -> [1, out], accumulated in fp32; int8
    weights come with per-row `scales` and are dequantised inside the reduction, never
    materialised."""
    y = (weight.float() * x.float()).sum(-1)  # [out]: one fused reduction
    if scales is not None:
        y = y * scales.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)[None]


_Key = tuple[torch.dtype | None, ...]
# One list per kind of call; a second kernel only for sizes outside the first one's ranges.
_KERNELS: dict[_Key, list[inductor.Kernel]] = {}


def _key(x: Tensor, weight: Tensor, scales: Tensor | None, bias: Tensor | None,
         out_dtype: torch.dtype) -> _Key:
    return (x.dtype, weight.dtype, scales if scales is None else scales.dtype,
            bias if bias is None else bias.dtype, out_dtype)


def linear(x: Tensor, weight: Tensor, scales: Tensor | None = None, bias: Tensor | None = None,
           out_dtype: torch.dtype | None = None) -> Tensor | None:
    """x [..., in] holding one row -> [..., out] in `out_dtype` (default: x's), or None where
    no kernel was built for these dtypes and sizes (weights converted after the build, say):
    the caller then runs its eager path. For callers checked by `one_row`: the compiled code
    knows nothing of autograd."""
    out_dtype = out_dtype or x.dtype
    for kernel in _KERNELS.get(_key(x, weight, scales, bias, out_dtype), ()):
        if kernel.covers(*weight.shape):
            with _profiler_range():
                inputs = inductor.inputs(x.reshape(1, -1), weight, scales, bias)
                return kernel.call(inputs)[0].view(*x.shape[:-1], -1)
    return None


def _profiler_range() -> contextlib.AbstractContextManager:
    """Names the compiled call for torch.profiler (benchmarks/overhead_audit.py), which
    otherwise sees no op there; free when not profiling."""
    if torch.autograd.profiler._is_profiler_enabled:
        return torch.profiler.record_function("gpt2.fast.kernels.linear")
    return contextlib.nullcontext()


def one_row(x: Tensor) -> bool:
    """Whether a product with `x` may use the compiled kernels: one row on the CPU, in
    inference mode (the compiled code bypasses autograd)."""
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
    `kernel_example()` that gives the arguments of a one-row `linear` call like theirs."""
    return [m for m in model.modules() if hasattr(m, "use_kernels")]


_BUILD_LOCK = threading.Lock()  # dynamo is not thread-safe while it compiles
NO_COMPILER = ("no C++ compiler found (g++/clang++, or $CXX): decoding runs without the compiled "
               "kernels; install build-essential (Debian/Ubuntu), the Xcode command line tools "
               "(macOS: xcode-select --install) or Visual Studio's C++ build tools (Windows)")


@functools.cache
def _compiler_missing() -> bool:
    """Whether inductor finds no C++ compiler; said once per process, in one line (inductor's
    own error is many lines, and would come again for every model)."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except RuntimeError:  # inductor's InvalidCxxCompiler; a missing cl.exe on Windows
        log.warning(NO_COMPILER)
        return True
    return False


def _stand_ins(key: _Key, out_features: int, in_features: int) -> tuple:
    """Random arguments of one kind of call, from a private generator (not torch's global one)."""
    x_dtype, w_dtype, s_dtype, b_dtype, out_dtype = key
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, in_features, generator=g).to(x_dtype),
            (torch.randn(out_features, in_features, generator=g) * 4).to(w_dtype),
            None if s_dtype is None else torch.rand(out_features, generator=g).to(s_dtype),
            None if b_dtype is None else torch.randn(out_features, generator=g).to(b_dtype),
            out_dtype)


def _ensure_kernel(args: tuple) -> None:
    """A kernel for this call's dtypes and sizes. The first of each kind is compiled on
    GPT-2-sized stand-ins: inductor's on-disk cache keeps a dynamic-shape kernel tuned to
    whatever sizes built it first (24x16 stand-ins made fp32 decoding 1.7x slower); sizes
    outside its ranges (inductor specialises reductions over 4096) get their own."""
    key, (out_features, in_features) = _key(*args), args[1].shape
    with _BUILD_LOCK:
        built = _KERNELS.get(key) or [inductor.compile_product(_product, *_stand_ins(key, 2304, 768))]
        if not any(k.covers(out_features, in_features) for k in built):
            own_size = _stand_ins(key, out_features, in_features)
            built = [*built, inductor.compile_product(_product, *own_size)]
            if not built[-1].covers(out_features, in_features):
                raise RuntimeError(f"no kernel takes a {out_features}x{in_features} weight")
        _KERNELS[key] = built  # rebound, never mutated: readers iterate it


def _build(model: nn.Module) -> None:
    """Compile what the model's layers need and no earlier build made, then run each
    layer's kernel once (the compiled code checks the layer's sizes and strides). Requests
    never enter dynamo, so compiling while other models serve is safe."""
    with torch.inference_mode():
        for layer in _fast_layers(model):
            args = layer.kernel_example()
            if any(t is not None and not t.is_cpu for t in args[:4]):
                raise ValueError(f"the one-row kernels are CPU-only; this model is on {args[1].device}")
            _ensure_kernel(args)
            linear(*args)


def compile_kernels(model: nn.Module, background: bool = True) -> CompileStatus:
    """Compile the one-row kernels for `model` and switch its layers to them once built.

    The returned status is also `model.compile_status`. If compilation fails (no C++
    compiler, say) the model stays eager and correct; the reason is in the status and the log.
    Inductor's on-disk cache goes to a private folder (`gpt2.fast.cache`).
    """
    status = model.compile_status = CompileStatus()
    try:
        cache.use_private_inductor_cache()
    except OSError as error:  # an unsafe or unwritable cache: no compiled code at all
        status.error = f"{type(error).__name__}: {error}"
        log.warning("not compiling the decode kernels; staying eager (%s)", status.error)
        status.done.set()
        return status

    def work() -> None:
        start = time.perf_counter()
        if background and hasattr(os, "setpriority"):
            # Lowest priority, so requests running meanwhile keep the cores (on Linux this
            # applies to this thread only, and to the compiler processes it starts).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            with _BUILD_LOCK:  # one check, and one warning, however many models load at once
                missing = _compiler_missing()
            if missing:
                status.error = NO_COMPILER
            else:
                _build(model)
        except Exception as error:  # noqa: BLE001 - any failure leaves the eager path in place
            status.error = f"{type(error).__name__}: {error}"
            log.warning("compiling the decode kernels failed; staying eager (%s)", status.error)
        if status.error is None:
            for layer in _fast_layers(model):
                layer.use_kernels = True
        status.seconds = time.perf_counter() - start
        status.done.set()

    if background:  # not a daemon: interpreter shutdown under a running compile crashes
        thread = threading.Thread(target=work, name="gpt2-compile")
        thread.start()
        # At exit, wait for it before the thread pools inductor compiles with refuse new work
        # (they would fail it with "cannot schedule new futures after interpreter shutdown").
        # Hooks run last registered first, and concurrent.futures registered its own on import.
        threading._register_atexit(thread.join)
    else:
        work()
    return status
