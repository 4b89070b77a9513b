"""How the int8 tier's products should quantise their input rows: each scheme emulated in fp64
on the trained built-in model (weights per-row int8 as the tier's, every block Linear's input
quantised as the scheme says), top-1 next-token agreement with fp32 and logit errors over
held-out text. Chose the kernels' 15-bit rows (gpt2/fast/rowdot.cpp); writes INT8_ROWS.md.

    python benchmarks/int8_rows.py
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import gpt2  # noqa: E402
from fidelity import MODEL_FILE, held_out_rows  # noqa: E402
from gpt2.model import Linear  # noqa: E402

HERE = Path(__file__).resolve().parent
# name: (values sharing one scale, None for the whole row; largest integer)
SCHEMES = {"int8 weights only, rows in fp64": None,
           "blocks of 32, 8 bits (q8_0; the kernels until now)": (32, 127),
           "blocks of 128, 8 bits": (128, 127),
           "rows, 8 bits": (None, 127),
           "rows, 15 bits (the kernels now)": (None, 16383)}


def fake_quantised(x: torch.Tensor, block: int | None, largest: int) -> torch.Tensor:
    """x rounded as the scheme's integers times their scale (round half to even, as the kernels)."""
    n = x.size(-1)
    block = block or n
    v = F.pad(x, (0, -n % block)).unflatten(-1, (-1, block))
    d = v.abs().amax(-1, keepdim=True) / largest
    q = torch.where(d > 0, torch.round(v / d.clamp_min(1e-300)), torch.zeros_like(v))
    return (q * d).flatten(-2)[..., :n]


def emulated(scheme: tuple[int | None, int] | None) -> gpt2.GPT:
    model = gpt2.load_model(MODEL_FILE, compile=False).double()
    for module in model.modules():
        if isinstance(module, Linear):
            w = module.weight.data
            scale = w.abs().amax(1, keepdim=True) / 127
            module.weight.data = torch.round(w / scale) * scale
            if scheme is not None:
                forward = module.forward
                module.forward = lambda x, gelu=False, forward=forward: forward(fake_quantised(x, *scheme), gelu)
    return model


def main() -> None:
    rows = held_out_rows(40, 256)
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
            got = emulated(scheme)(rows)
            error = (got - want).abs()
            agreement[name] = (got.argmax(-1) == top).double().mean().item()
            lines.append(f"| {name} | {agreement[name]:.2%} | "
                         f"{error.max().item():.4f} | {error.mean().item():.5f} |")
            print(lines[-1], flush=True)
    weights, blocks, rows15 = (agreement[name] for name in list(SCHEMES)[:2] + list(SCHEMES)[-1:])
    lines += ["", f"Top-1 against the int8 weights alone: rows in 15 bits under one scale "
              f"{100 * (rows15 - weights):+.2f} points, 8-bit blocks of 32 {100 * (blocks - weights):+.2f}. "
              "And their products add up in integers across the whole row (one conversion a row, not one a "
              "block), which is what lets several rows share a pass over the weights (BATCHING-int8.md)."]
    (HERE / "INT8_ROWS.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
