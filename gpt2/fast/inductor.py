"""Compile a one-row product with inductor and keep the generated code, to call it directly.

torch.compile's wrapper costs ~20 us a call (dynamo's guards, the AOT wrappers) and decoding
makes 49 one-row products a token, so `gpt2.fast.kernels` calls inductor's code itself. What the
wrapper would check on every call is settled here, once: the order of the code's inputs, the
sizes it was specialised for (dynamo's shape guards, as ranges), and its result against the
eager math. Shapes and strides are still checked on every call, by inductor's size asserts
(forced on).
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

Product = Callable[..., Tensor]  # (x, weight, scales, bias, out_dtype) -> [1, out]


@dataclass(frozen=True)
class Kernel:
    call: Callable[[list], tuple[Tensor, ...]]  # inductor's code: `inputs(...)` -> (y,)
    sizes: tuple[tuple[int, int], ...]  # (lowest, highest) out and in features it may take

    def covers(self, out_features: int, in_features: int) -> bool:
        (out_lo, out_hi), (in_lo, in_hi) = self.sizes
        return out_lo <= out_features <= out_hi and in_lo <= in_features <= in_hi


def inputs(row: Tensor, weight: Tensor, scales: Tensor | None, bias: Tensor | None) -> list:
    """The compiled code's inputs, in the order `_capture` checked: the weight's sizes, then
    the tensors in the order the product first reads them."""
    return [weight.size(0), weight.size(1), weight, row] + [t for t in (scales, bias) if t is not None]


def compile_product(product: Product, x: Tensor, weight: Tensor, scales: Tensor | None,
                    bias: Tensor | None, out_dtype: torch.dtype) -> Kernel:
    """`product` compiled for these arguments' dtypes, with dynamic sizes. Raises if anything
    is not as expected, so that the caller stays eager."""
    # A fresh code object: dynamo caches and counts compilations per code object, and each
    # kind of call is compiled once, here, never on a request.
    fn = types.FunctionType(product.__code__.replace(), product.__globals__, product.__name__)
    found: list = []
    compiled = torch.compile(fn, dynamic=True, fullgraph=True, backend=_capture(found))
    # Without the AOT cache, so that the graph reaches inductor (and `found`).
    with torch._functorch.config.patch(enable_autograd_cache=False), \
            torch._inductor.config.patch(size_asserts=True):
        compiled(x, weight, scales, bias, out_dtype)
    if len(found) != 1:
        raise RuntimeError("dynamo did not hand the graph to inductor (is it disabled?)")
    output, sizes = found[0]
    kernel = Kernel(output.current_callable, sizes)
    want = product(x, weight, scales, bias, out_dtype).float()
    got = kernel.call(inputs(x, weight, scales, bias))[0].float()
    if not torch.allclose(got, want, rtol=1e-2, atol=1e-2):
        raise RuntimeError("the compiled code disagrees with the eager math")
    return kernel


def _capture(found: list) -> Callable:
    """A torch.compile backend: inductor compiles the graph as usual, and `found` gets its
    output and the size range each size input was specialised for."""
    from torch._guards import TracingContext
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        inputs = {n.name: n.meta["example_value"] for n in gm.graph.nodes if n.op == "placeholder"}
        names, sizes = list(inputs)[2:], list(inputs.values())[:2]
        tensors = [n for n in ("l_weight_", "l_x_", "l_scales_", "l_bias_") if n in inputs]
        if names != tensors or list(map(str, sizes)) != list(map(str, inputs["l_weight_"].shape)):
            raise RuntimeError(f"unexpected graph inputs {list(inputs)}: this torch orders them differently")
        outputs = []

        def inner(*args, **kwargs):  # noqa: ANN002, ANN003 - inductor's signature
            outputs.append(compile_fx_inner(*args, **kwargs))
            return outputs[-1]

        compiled = compile_fx(gm, example_inputs, inner_compile=inner)
        shape_env = TracingContext.get().fake_mode.shape_env
        ranges = [shape_env.var_to_range[size.node.expr] for size in sizes]  # dynamo's size guards
        bounds = tuple((int(r.lower), int(r.upper) if r.upper.is_Integer else sys.maxsize) for r in ranges)
        found.extend((output, bounds) for output in outputs)
        return compiled

    return backend
