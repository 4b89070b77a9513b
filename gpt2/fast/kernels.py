"""Decode kernels: a decode step's products and attention in our own C++ (`gpt2.fast.rowdot`).

Decoding reads every weight once per step, so its speed is how fast the weights stream; and
serving several requests at once (`gpt2.BatchedGenerator`) only pays if their rows share
that read without changing any row's result. The kernels do both: every row of a product
is computed exactly as the one-row path computes it (a fixed accumulation order per row),
weight rows outermost so that the rows of a step share each read; attention runs per row
over that row's own cache, the new key and value written in the same call. They serve
inputs with one position per sequence (decode steps, and the LM head's last position);
prefill stays on oneDNN's GEMM (`gpt2.fast.gemm`), which is fast for many rows.

`compile_kernels(model)` builds the library (a few seconds the first time on a machine, then
loaded from its cache), checks it against the eager math, and switches the model's layers to
it, by default from a background thread at the lowest priority: the model answers in eager
mode meanwhile. If it cannot be built (no C++ compiler, say) the model stays eager.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor, nn

from . import rowdot

log = logging.getLogger(__name__)


def serves(x: Tensor) -> bool:
    """Whether the kernels take `x`: one position per sequence ([B, 1, C], or a single row),
    on the CPU, in inference mode (the C code knows nothing of autograd)."""
    one_position = x.numel() == x.size(-1) or (x.dim() == 3 and x.size(1) == 1)
    return one_position and x.is_cpu and torch.is_inference_mode_enabled()


def linear(x: Tensor, weight: Tensor, scales: Tensor | None = None, bias: Tensor | None = None,
           out_dtype: torch.dtype | None = None, gelu: bool = False) -> Tensor:
    """x [..., in] @ weight [out, in].T (int8 weights times their per-row `scales`) + bias,
    GELU if asked -> [..., out] in `out_dtype` (default x's). For callers checked by `serves`."""
    lib = _library or library()
    if torch.autograd.profiler._is_profiler_enabled:  # named for torch.profiler, which sees no op here
        with torch.profiler.record_function("gpt2.fast.kernels.linear"):
            return lib.linear(x, weight, scales, bias, out_dtype, gelu)
    return lib.linear(x, weight, scales, bias, out_dtype, gelu)


@contextlib.contextmanager
def dequantized(weight: Tensor, scales: Tensor, dtype: torch.dtype) -> Iterator[Tensor]:
    """`with dequantized(w, scales, dtype) as weight:` the int8 tier's prefill GEMM weights,
    [out, in] in `dtype`, the values of `w.to(dtype) * scales[:, None]`, in one pass and in a
    buffer borrowed for the block. A prefill takes one layer's weights at a time, and writing
    fresh memory was most of the cost (the 48 matrices of 124M: 56 ms into new tensors, 7.5
    ms into a reused one; torch's way 82 ms). The pool keeps one buffer, of the largest size
    asked for, per prefill running at once."""
    with _pool_lock:
        fits = [b for b in _pool if b.dtype == dtype and b.numel() >= weight.numel()]
        buffer = fits[-1] if fits else torch.empty(weight.numel(), dtype=dtype)  # the last returned
        _pool[:] = [b for b in _pool if b is not buffer]
    try:
        yield (_library or library()).dequantize(weight, scales, dtype, out=buffer)
    finally:
        with _pool_lock:
            _pool[:] = [b for b in _pool if b.dtype != dtype or b.numel() >= buffer.numel()]
            if all(b.numel() <= buffer.numel() for b in _pool if b.dtype == dtype):
                _pool.append(buffer)


_pool: list[Tensor] = []  # dequantization buffers not in use
_pool_lock = threading.Lock()


def decode_attention(qkv: Tensor, rows: rowdot.DecodeRows, layer: int, n_head: int) -> Tensor:
    """A decode step's attention, row b over its own cache (`rows`): qkv [B, 1, 3C] -> [B, 1, C]."""
    lib = _library or library()
    if torch.autograd.profiler._is_profiler_enabled:
        with torch.profiler.record_function("gpt2.fast.kernels.decode_attention"):
            return lib.decode_attention(qkv, rows, layer, n_head)
    return lib.decode_attention(qkv, rows, layer, n_head)


_build_lock = threading.Lock()
_library: rowdot.Library | None = None  # this process's, once built and checked


def library() -> rowdot.Library:
    """This process's kernels, built (or loaded from the cache) and checked on first use.
    Raises `rowdot.BuildError` where they cannot be."""
    global _library
    with _build_lock:
        if _library is None:
            lib = rowdot.build()
            _self_test(lib)
            _library = lib
        return _library


def _self_test(lib: rowdot.Library) -> None:
    """The library against the eager math once, for each kind of product the tiers use: a
    compiler or CPU that builds wrong code must leave the model eager, not wrong."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 70, generator=g)
    bias, x = torch.randn(40, generator=g), torch.randn(3, 70, generator=g)
    scales = w.abs().amax(1) / 127
    w8 = torch.round(w / scales[:, None]).to(torch.int8)
    cases = [(x, w, None, bias, torch.float32),
             (x.bfloat16(), w.bfloat16(), None, bias.bfloat16(), torch.bfloat16),
             (x, w.bfloat16(), None, None, torch.float32),
             (x.bfloat16(), w8, scales.bfloat16(), bias.bfloat16(), torch.bfloat16),
             (x.bfloat16(), w8, scales, bias, torch.float32)]  # the int8 tier's LM head
    with torch.inference_mode():
        for xs, ws, ss, bs, out_dtype in cases:
            want = xs.double() @ ws.double().T * (1 if ss is None else ss.double())
            want = torch.nn.functional.gelu(want + (0 if bs is None else bs.double()), approximate="tanh")
            got = lib.linear(xs, ws, ss, bs, out_dtype, gelu=True).double()
            if not torch.allclose(got, want, rtol=1e-2, atol=1e-2 * want.abs().max().item()):
                raise rowdot.BuildError(f"the built kernels disagree with the eager math "
                                        f"({xs.dtype} x {ws.dtype})")


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
        """Block until built; True if the kernels are in use."""
        self.done.wait(timeout)
        return self.ready


def fast_layers(model: nn.Module) -> list[nn.Module]:
    """Modules that can use the kernels: they have a `use_kernels` flag."""
    return [m for m in model.modules() if hasattr(m, "use_kernels")]


def disable(model: nn.Module) -> None:
    """Back to eager, e.g. before converting the weights: call `compile_kernels` again after."""
    if model.compile_status is not None:
        model.compile_status.wait()  # it would switch the layers on when it finishes
    for layer in fast_layers(model):
        layer.use_kernels = False
    model.compile_status = None


NO_COMPILER = ("no C++ compiler found (g++/clang++, or $CXX): decoding runs without the compiled "
               "kernels; install build-essential (Debian/Ubuntu), the Xcode command line tools "
               "(macOS: xcode-select --install) or Visual Studio's C++ build tools (Windows)")


@functools.cache
def _say_no_compiler() -> None:
    """Once per process, in one line, however many models load."""
    log.warning(NO_COMPILER)


def compile_kernels(model: nn.Module, background: bool = True) -> CompileStatus:
    """Build the decode kernels (once per process) and switch `model`'s layers to them.

    The returned status is also `model.compile_status`. If the build fails (no C++ compiler,
    say) the model stays eager and correct; the reason is in the status and the log.
    """
    status = model.compile_status = CompileStatus()

    def work() -> None:
        start = time.perf_counter()
        if background and hasattr(os, "setpriority"):
            # Lowest priority, so requests running meanwhile keep the cores (on Linux this
            # applies to this thread only, and to the compiler it starts).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            off_cpu = {str(t.device) for t in (*model.parameters(), *model.buffers()) if not t.is_cpu}
            if off_cpu:
                raise ValueError(f"the decode kernels are CPU-only; this model is on "
                                 f"{', '.join(sorted(off_cpu))}")
            library()
        except rowdot.NoCompiler as error:
            status.error = f"{type(error).__name__}: {error}"
            _say_no_compiler()
        except Exception as error:  # noqa: BLE001 - any failure leaves the eager path in place
            status.error = f"{type(error).__name__}: {error}"
            log.warning("compiling the decode kernels failed; staying eager (%s)", status.error)
        else:
            for layer in fast_layers(model):
                layer.use_kernels = True
        status.seconds = time.perf_counter() - start
        status.done.set()

    if background:  # not a daemon: interpreter shutdown under a running build crashes
        threading.Thread(target=work, name="gpt2-compile").start()
    else:
        work()
    return status
