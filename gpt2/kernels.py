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
processes start fast. Requests call inductor's code directly, not through torch.compile's
wrapper: dynamo's guards and the AOT wrappers cost ~20 us a call, 49 calls a token.
Caveat: while dynamo compiles it saves and restores torch's global RNG, so draws another
thread makes from it meanwhile may repeat; seeded generation uses its own generator.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

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
_KERNELS: dict[_Key, Callable[[list], tuple[Tensor]]] = {}  # filled by `_build`, one per kind


def _key(x: Tensor, weight: Tensor, scales: Tensor | None, bias: Tensor | None,
         out_dtype: torch.dtype) -> _Key:
    return (x.dtype, weight.dtype, scales if scales is None else scales.dtype,
            bias if bias is None else bias.dtype, out_dtype)


def linear(x: Tensor, weight: Tensor, scales: Tensor | None = None, bias: Tensor | None = None,
           out_dtype: torch.dtype | None = None) -> Tensor:
    """x [..., in] holding one row -> [..., out], in `out_dtype` (default: x's).

    Calls inductor's compiled code directly, without dynamo's guards and AOT wrappers (~20 us
    a call, 1 ms per token of 124M: benchmarks/KERNELS.md): the compiled code checks sizes
    and strides itself, the key checks dtypes, and `one_row` keeps autograd out."""
    out_dtype = out_dtype or x.dtype
    row = x.reshape(1, -1)
    kernel = _KERNELS.get(_key(x, weight, scales, bias, out_dtype))
    if kernel is None:  # dtypes changed after the build (model.float(), say): same math, eager
        return _product(row, weight, scales, bias, out_dtype).view(*x.shape[:-1], -1)
    with _profiler_range():
        return kernel(_inputs(row, weight, scales, bias))[0].view(*x.shape[:-1], -1)


def _inputs(row: Tensor, weight: Tensor, scales: Tensor | None, bias: Tensor | None) -> list:
    """The compiled graph's inputs, in the order `_capture` checked: sizes, then tensors as
    `_product` first reads them."""
    return [weight.size(0), weight.size(1), weight, row] + [t for t in (scales, bias) if t is not None]


def _profiler_range() -> contextlib.AbstractContextManager:
    """Names the compiled call for torch.profiler (benchmarks/overhead_audit.py), which
    otherwise sees no op there; free when not profiling."""
    if torch.autograd.profiler._is_profiler_enabled:
        return torch.profiler.record_function("gpt2.kernels.linear")
    return contextlib.nullcontext()


def one_row(x: Tensor) -> bool:
    """Whether a product with `x` may use the compiled kernels: one row on the CPU, in
    inference mode (the compiled code bypasses autograd)."""
    return x.numel() == x.size(-1) and x.is_cpu and torch.is_inference_mode_enabled()


def _capture(found: list) -> Callable:
    """A torch.compile backend: inductor compiles the graph as usual, and `found` gets the
    compiled code itself, checked to take the inputs in the order `linear` passes them."""
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        inputs = {n.name: n.meta["example_value"] for n in gm.graph.nodes if n.op == "placeholder"}
        tensors = [n for n in ("l_weight_", "l_x_", "l_scales_", "l_bias_") if n in inputs]
        expected = [str(size) for size in inputs["l_weight_"].shape] + tensors
        if [str(v) for v in list(inputs.values())[:2]] + list(inputs)[2:] != expected:
            raise RuntimeError(f"unexpected graph inputs {list(inputs)} (not sizes, then "
                               f"{tensors}): this torch orders them differently")

        def inner(*args, **kwargs):  # noqa: ANN002, ANN003 - inductor's signature
            compiled = compile_fx_inner(*args, **kwargs)
            found.append(compiled)
            return compiled

        return compile_fx(gm, example_inputs, inner_compile=inner)

    return backend


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


def _compile(key: _Key) -> Callable[[list], tuple[Tensor]]:
    """Inductor's code for one kind of call (`_key`), compiled with dynamic shapes on
    GPT-2-sized stand-ins: inductor's on-disk cache keeps a dynamic-shape kernel tuned to
    whatever sizes built it first (24x16 stand-ins made fp32 decoding 1.7x slower)."""
    x_dtype, w_dtype, s_dtype, b_dtype, out_dtype = key
    out_features, in_features = 2304, 768
    x = torch.randn(1, in_features, dtype=x_dtype)
    weight = (torch.randn(out_features, in_features) * 4).to(w_dtype)
    scales = None if s_dtype is None else torch.rand(out_features, dtype=s_dtype)
    bias = None if b_dtype is None else torch.randn(out_features, dtype=b_dtype)
    found: list = []
    compiled = torch.compile(_product, dynamic=True, fullgraph=True, backend=_capture(found))
    # Without the AOT cache, so that the graph reaches inductor (and `found`); with dynamo's
    # recompile limit an error rather than a silent fallback to the uncompiled Python.
    with torch._functorch.config.patch(enable_autograd_cache=False), \
            torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        compiled(x, weight, scales, bias, out_dtype)
    if len(found) != 1:  # dynamo reused the graph of an earlier, failed build
        raise RuntimeError("the kernel did not reach inductor; restart the process")
    kernel = found[0].current_callable
    # Called directly, nothing but this check ties the kernel to `_product`'s meaning.
    want = _product(x, weight, scales, bias, out_dtype).float()
    if not torch.allclose(kernel(_inputs(x, weight, scales, bias))[0].float(), want, rtol=1e-2, atol=1e-2):
        raise RuntimeError(f"the compiled kernel for {key} disagrees with its eager math")
    return kernel


def _build(model: nn.Module) -> None:
    """Compile the kinds of call the model makes that no earlier build compiled, then run
    each layer's kernel once: the compiled code checks the layer's sizes and strides, so a
    mismatch fails here, not on a request. Requests never enter dynamo, so compiling while
    other models serve is safe."""
    with torch.inference_mode():
        for layer in _fast_layers(model):
            args = layer.kernel_example()
            key = _key(*args)
            if key not in _KERNELS:
                with _BUILD_LOCK:
                    if key not in _KERNELS:
                        _KERNELS[key] = _compile(key)
            linear(*args)


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
