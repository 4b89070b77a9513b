"""How the int8 tier's products should quantise their input rows: each scheme emulated in fp64
on the trained built-in model (weights per-row int8 as the tier's, every block Linear's input
quantised as the scheme says), top-1 next-token agreement with fp32 and logit errors over
held-out text. Chose the kernels' 15-bit rows (gpt2/fast/rowdot.cpp); writes INT8_ROWS.md.

The last two rows ask whether 8-bit rows (one vpdpbusd per 64 products, AMX's tile half as
wide) could keep 15-bit accuracy by giving a few columns 15 bits, as LLM.int8() does for
outlier features: the same columns for every row (the largest on training text), or each
row's own largest values.

    python benchmarks/int8_rows.py
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import gpt2  # noqa: E402
from fidelity import MODEL_FILE, held_out_rows  # noqa: E402
from gpt2.model import Linear  # noqa: E402
from gpt2.training import corpus  # noqa: E402

HERE = Path(__file__).resolve().parent
# name: (values sharing one scale, None for the whole row; largest integer), or a mixed scheme
SCHEMES = {"int8 weights only, rows in fp64": None,
           "blocks of 32, 8 bits (q8_0; the kernels until now)": (32, 127),
           "blocks of 128, 8 bits": (128, 127),
           "rows, 8 bits": (None, 127),
           "rows, 15 bits (the kernels now)": (None, 16383),
           "rows, 8 bits; 32 fixed columns per matrix in 15 bits (the largest on training text)": ("fixed", 32),
           "rows, 8 bits; each row's 16 largest values in 15 bits": ("largest", 16)}


def fake_quantised(x: torch.Tensor, block: int | None, largest: int) -> torch.Tensor:
    """x rounded as the scheme's integers times their scale (round half to even, as the kernels)."""
    n = x.size(-1)
    block = block or n
    v = F.pad(x, (0, -n % block)).unflatten(-1, (-1, block))
    d = v.abs().amax(-1, keepdim=True) / largest
    q = torch.where(d > 0, torch.round(v / d.clamp_min(1e-300)), torch.zeros_like(v))
    return (q * d).flatten(-2)[..., :n]


def in_two_parts(x: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
    """x with its `wide` values (a bool mask) in 15 bits under their own scale and the rest in 8
    bits under theirs: two integer products a row, each exact."""
    return torch.where(wide, fake_quantised(x * wide, None, 16383), fake_quantised(x * ~wide, None, 127))


def rounding(scheme: tuple, fixed_columns: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """How the scheme rounds a Linear's input x [..., in]."""
    if scheme[0] == "fixed":
        wide = torch.zeros(fixed_columns.numel(), dtype=torch.bool)
        wide[fixed_columns.topk(scheme[1]).indices] = True
        return lambda x: in_two_parts(x, wide)
    if scheme[0] == "largest":
        return lambda x: in_two_parts(x, torch.zeros_like(x, dtype=torch.bool).scatter_(
            -1, x.abs().topk(scheme[1], -1).indices, True))
    return lambda x: fake_quantised(x, *scheme)


def emulated(scheme: tuple | None, calibration: torch.Tensor) -> gpt2.GPT:
    model = gpt2.load_model(MODEL_FILE, compile=False).double()
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    for module in linears:
        w = module.weight.data
        scale = w.abs().amax(1, keepdim=True) / 127
        module.weight.data = torch.round(w / scale) * scale
    if scheme is None:
        return model
    largest_seen: dict[Linear, torch.Tensor] = {}  # each input column's largest |x| on the calibration text
    if scheme[0] == "fixed":
        def seen(module: Linear, args: tuple) -> None:
            column_max = args[0].abs().flatten(0, -2).amax(0)
            largest_seen[module] = torch.maximum(largest_seen.get(module, column_max), column_max)
        hooks = [m.register_forward_pre_hook(seen) for m in linears]
        model(calibration)
        for hook in hooks:
            hook.remove()
    for module in linears:
        rounded = rounding(scheme, largest_seen.get(module))
        module.forward = lambda x, gelu=False, forward=module.forward, rounded=rounded: forward(rounded(x), gelu)
    return model


def main() -> None:
    rows = held_out_rows(40, 256)
    calibration = corpus.corpus_tokens(40, seed=0)[:8 * 256].view(8, 256)  # text of the training seed
    started = datetime.datetime.now(datetime.timezone.utc)
    lines = ["# How the int8 products quantise their input rows", "",
             "Command: `python benchmarks/int8_rows.py`  ",
             f"Date: {started:%Y-%m-%d %H:%M} UTC. Model: the trained built-in model, in fp64; "
             f"text: {rows.numel()} held-out tokens ({rows.size(0)} rows of {rows.size(1)}). Each block Linear's "
             "weights are int8 per output row (the tier's); its input is quantised as the row says. "
             "Top-1: the next-token argmax equals fp32's. Emulated in torch, so the same on every CPU.", "",
             "| input rows | top-1 agreement with fp32 | max logit error | mean logit error |",
             "|---|---:|---:|---:|"]
    with torch.inference_mode():
        want = gpt2.load_model(MODEL_FILE, compile=False).double()(rows)
        top = want.argmax(-1)
        agreement = {}
        for name, scheme in SCHEMES.items():
            got = emulated(scheme, calibration)(rows)
            error = (got - want).abs()
            agreement[name] = (got.argmax(-1) == top).double().mean().item()
            lines.append(f"| {name} | {agreement[name]:.2%} | "
                         f"{error.max().item():.4f} | {error.mean().item():.5f} |")
            print(lines[-1], flush=True)
    names = list(SCHEMES)
    weights, blocks, rows8, rows15, fixed, largest = (agreement[names[i]] for i in (0, 1, 3, 4, 5, 6))
    lines += ["", f"Top-1 against the int8 weights alone: rows in 15 bits under one scale "
              f"{100 * (rows15 - weights):+.2f} points, 8-bit blocks of 32 {100 * (blocks - weights):+.2f}. "
              "And their products add up in integers across the whole row (one conversion a row, not one a "
              "block), which is what lets several rows share a pass over the weights (BATCHING-int8.md).", "",
              f"8-bit rows: {100 * (rows8 - weights):+.2f} points. With 32 fixed columns in 15 bits, "
              f"{100 * (fixed - weights):+.2f}: still a loss, for a second product over those columns in every "
              f"matrix. Only each row's own 16 largest values in 15 bits keep the accuracy "
              f"({100 * (largest - weights):+.2f}), and their weights sit at other columns in every row: a "
              "gather from each weight row for each row (not built; emulated here only). The kernels keep 15 bits."]
    (HERE / "INT8_ROWS.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
