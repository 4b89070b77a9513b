"""The products of a 124M decode step, done each way we tried, and prefill pieces.

Decode: the 48 block matrices of the 124M config (12 layers x c_attn, attn c_proj, c_fc, mlp
c_proj; random weights, distinct tensors so that they stream from memory as in a real step,
not from cache), per tier: `gpt2.fast.kernels.linear` (our C++, the decode path) for 1, 4
and 8 rows (a batched step of 4 or 8 requests); the multiply-and-row-sum it replaced,
compiled by inductor (called through torch.compile's wrapper here, ~20 us a call more than
the direct call the library made); PyTorch's own kernel and oneDNN's (`gpt2.fast.gemm.linear`,
the eager path) for 1 and 8 rows; for int8 `torch._weight_int8pack_mm` (1 row, and 8: a short
prompt's prefill). Greedy decoding's argmax over 50,257 logits: torch's and the library's.
Prefill at 512 tokens: one layer's attention (flash SDPA, fp32 and bf16), its four products
through `F.linear`, through `gpt2.fast.gemm.linear` and through oneDNN with weights pre-packed in
its layout (faster, but a second copy of every weight: not used), and c_fc + GELU with the
GELU as its own pass or in oneDNN's epilogue.
Medians of 30 repetitions, ms.

    python benchmarks/kernel_variants.py    # -> benchmarks/KERNELS.md
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from common import machine_line, median_ms  # noqa: E402
from gpt2.fast import gemm, kernels  # noqa: E402

HERE = Path(__file__).resolve().parent
SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12  # (out, in) per layer


def ms(fn: Callable[[], object]) -> float:
    return median_ms(fn, reps=30, warmup=5)


def interleaved_ms(cases: dict[str, Callable[[], object]], reps: int = 30) -> dict[str, float]:
    """Median ms of each case over `reps` rounds that run every case once, so that a busy
    neighbour slows them all alike rather than whichever ran at the time."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()
    for _ in range(reps):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def product(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None, bias: torch.Tensor | None,
            out_dtype: torch.dtype) -> torch.Tensor:
    """The one-row product as the inductor-compiled kernels computed it (before gpt2.fast.rowdot)."""
    y = (weight.float() * x.float()).sum(-1)
    if scales is not None:
        y = y * scales.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)[None]


def decode_rows() -> list[tuple[str, str, float]]:
    compiled = torch.compile(product, dynamic=True)
    rows = []
    f32, bf16, i8 = torch.float32, torch.bfloat16, torch.int8
    for tier, w_dtype in (("fp32", f32), ("bf16", bf16), ("int8", i8)):
        act = bf16 if w_dtype == i8 else w_dtype  # the tier's activations
        mats = []
        for out_f, in_f in SHAPES:
            if w_dtype == i8:
                weight = torch.randint(-127, 128, (out_f, in_f), dtype=i8)
                scales = torch.rand(out_f, dtype=bf16) / 127
            else:
                weight, scales = torch.randn(out_f, in_f).to(w_dtype), None
            mats.append((weight, scales, torch.randn(out_f).to(act), torch.randn(8, 1, in_f).to(act)))
        x_inductor = f32 if w_dtype == i8 else w_dtype  # the row dtype the inductor kernels took
        with torch.inference_mode():
            compiled(mats[0][3][0, 0].to(x_inductor), mats[0][0], mats[0][1], mats[0][2], act)
            cases = {
                f"gpt2.fast.kernels.linear, {n} row{'s' * (n > 1)} (C++, the decode path)":
                    lambda n=n: [kernels.linear(x[:n], w, s, b) for w, s, b, x in mats] for n in (1, 4, 8)}
            replaced = ("inductor-compiled multiply + row sum, 1 row, through torch.compile's wrapper "
                        "(replaced)")
            cases[replaced] = lambda: [compiled(x[0, 0].to(x_inductor), w, s, b, act) for w, s, b, x in mats]
            if w_dtype == i8:
                for n in (1, 8):  # 8: a short prompt's prefill, which the int8 tier gives the kernels now
                    cases[f"torch._weight_int8pack_mm + bias, {n} row{'s' * (n > 1)}"] = \
                        lambda n=n: [torch._weight_int8pack_mm(x[:n, 0], w, s).add_(b) for w, s, b, x in mats]
            else:
                cases["F.linear (PyTorch's kernel), 1 row"] = \
                    lambda: [F.linear(x[:1], w, b) for w, s, b, x in mats]
                for n in (1, 8):
                    cases[f"gpt2.fast.gemm.linear (oneDNN; the eager path), {n} row{'s' * (n > 1)}"] = \
                        lambda n=n: [gemm.linear(x[:n], w, b) for w, s, b, x in mats]
            rows += [(tier, name, t) for name, t in interleaved_ms(cases).items()]
    return rows


def argmax_rows() -> list[tuple[str, str, float]]:
    """Greedy decoding's argmax over GPT-2's 50,257 logits, for the rows of a step."""
    rows = []
    for n in (1, 8):
        logits = torch.randn(n, 50257)
        cases = {f"torch.argmax, {n} row{'s' * (n > 1)}": lambda: logits.argmax(-1),
                 f"gpt2.fast.kernels.argmax (C++), {n} row{'s' * (n > 1)}": lambda: kernels.argmax(logits)}
        rows += [("argmax", name, t) for name, t in interleaved_ms(cases, reps=200).items()]
    return rows


def prefill_rows() -> list[tuple[str, str, float]]:
    q, k, v = (torch.randn(1, 12, 512, 64) for _ in range(3))
    rows = []
    with torch.inference_mode():
        rows += [("prefill 512", "flash SDPA, fp32, one layer",
                  ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))),
                 ("prefill 512", "flash SDPA, bf16, one layer",
                  ms(lambda: F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(),
                                                            is_causal=True)))]
        for dtype, tier in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            x = {n: torch.randn(1, 512, n).to(dtype) for n in (768, 3072)}
            layer = [(torch.randn(out_f, in_f).to(dtype), torch.randn(out_f).to(dtype))
                     for out_f, in_f in SHAPES[:4]]
            c_fc = layer[2]
            packed = [torch.ops.mkldnn._reorder_linear_weight(w, 512) for w, _ in layer]
            rows += [
                (f"prefill 512, {tier}", "one layer's 4 products, F.linear",
                 ms(lambda: [F.linear(x[w.size(1)], w, b) for w, b in layer])),
                (f"prefill 512, {tier}", "one layer's 4 products, gpt2.fast.gemm.linear (oneDNN)",
                 ms(lambda: [gemm.linear(x[w.size(1)], w, b) for w, b in layer])),
                (f"prefill 512, {tier}", "the same, weights pre-packed for oneDNN (a second copy; not used)",
                 ms(lambda: [torch.ops.mkldnn._linear_pointwise(x[w.size(1)], p, b, "none", [], "")
                             for (w, b), p in zip(layer, packed)])),
                (f"prefill 512, {tier}", "c_fc, then GELU (tanh) as its own pass",
                 ms(lambda: F.gelu(F.linear(x[768], *c_fc), approximate="tanh"))),
                (f"prefill 512, {tier}", "c_fc with GELU in oneDNN's epilogue (gpt2.fast.gemm.linear)",
                 ms(lambda: gemm.linear(x[768], *c_fc, gelu=True))),
            ]
    return rows


def main() -> None:
    kernels.library()  # built, so that kernels.argmax uses it
    rows = decode_rows() + argmax_rows() + prefill_rows()
    lines = [
        "# Kernel variants: one decode step's matrix products, and prefill pieces",
        "",
        "Command: `python benchmarks/kernel_variants.py`  ",
        machine_line(),
        "",
        "Decode rows: the 48 block matrices of the 124M config (ms for all 48, median of 30 "
        "rounds that run each of a tier's variants once), one row (a decode step of one "
        "request) or several (a batched step, or a short prompt's prefill). Argmax: over "
        "50,257 fp32 logits per row. Prefill rows: one layer at 512 tokens.",
        "",
        "| tier | variant | ms |",
        "|---|---|---:|",
        *(f"| {tier} | {name} | {t:.2f} |" for tier, name, t in rows),
    ]
    (HERE / "KERNELS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
