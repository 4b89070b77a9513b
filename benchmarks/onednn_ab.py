"""A/B of `gpt2.fast.gemm`: the same models with every non-kernel product through oneDNN (bias and
GELU in its epilogue) and through `F.linear` + `F.gelu` (the path before it), interleaved in
one process. Per tier (124M, random weights, compiled decode kernels): time to first token at
prompt 512 (transformers fp32 alongside, for the ratio the speed issue targets) and decode
tok/s at prompt 16, where the kernels do the products and oneDNN should change nothing.

    python benchmarks/onednn_ab.py    # -> benchmarks/ONEDNN.md (~4 min)
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import gpt2  # noqa: E402
from common import machine_line  # noqa: E402
from generation import OUR_TIERS, hf, make_tier, timed  # noqa: E402
from gpt2.fast import gemm  # noqa: E402

HERE = Path(__file__).resolve().parent
ROUNDS = 7
PROMPT, DECODE_PROMPT, NEW = 512, 16, 64


def without_onednn(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        serves, gemm._onednn_serves = gemm._onednn_serves, lambda *args: False
        try:
            return fn()
        finally:
            gemm._onednn_serves = serves
    return run


def seconds(fn: Callable[[], object]) -> float:
    return timed(fn, torch.device("cpu"))


def main() -> None:
    torch.manual_seed(0)
    config = gpt2.PRESETS["gpt2"]
    base = gpt2.GPT(config).eval()
    hf_run = hf(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
        vocab_size=config.vocab_size, n_positions=config.context_length)).eval(), "fp32").run
    prompt = torch.randint(0, config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    short = prompt[:, :DECODE_PROMPT]
    models = {tier: make_tier(base, tier) for tier in OUR_TIERS}
    for model in models.values():
        assert gpt2.compile_kernels(model, background=False).ready

    cases: dict[str, Callable[[], float]] = {
        "transformers fp32 | ttft": lambda: seconds(lambda: hf_run(prompt, 1))}
    for tier, model in models.items():
        ttft = lambda m=model: seconds(lambda: gpt2.generate(m, prompt, 1))  # noqa: E731
        decode = lambda m=model: 63 / (seconds(lambda: gpt2.generate(m, short, NEW))  # noqa: E731
                                       - seconds(lambda: gpt2.generate(m, short, 1)))
        cases[f"{tier} | ttft | oneDNN"] = ttft
        cases[f"{tier} | ttft | F.linear"] = without_onednn(ttft)
        cases[f"{tier} | decode | oneDNN"] = decode
        cases[f"{tier} | decode | F.linear"] = without_onednn(decode)
    for fn in cases.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, fn in cases.items():
            samples[name].append(fn())
    med = {name: statistics.median(values) for name, values in samples.items()}
    hf_s = med["transformers fp32 | ttft"]
    lines = [
        "# oneDNN products (`gpt2.fast.gemm`) on and off",
        "",
        "Command: `python benchmarks/onednn_ab.py`  ",
        machine_line(),
        "",
        f"124M, random weights, compiled decode kernels, batch 1, greedy; medians of {ROUNDS} "
        f"interleaved rounds. Time to first token at prompt {PROMPT} (x = transformers fp32's "
        f"time over ours: {hf_s:.3f} s); decode tok/s at prompt {DECODE_PROMPT} = 63 / "
        f"(t({NEW} new) - t(1 new)).",
        "",
        "| tier | TTFT s, oneDNN | TTFT s, F.linear | x transformers, oneDNN | x transformers, F.linear "
        "| decode tok/s, oneDNN | decode tok/s, F.linear |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for tier in models:
        on, off = med[f"{tier} | ttft | oneDNN"], med[f"{tier} | ttft | F.linear"]
        lines.append(f"| {tier} | {on:.3f} | {off:.3f} | {hf_s / on:.2f} | {hf_s / off:.2f} "
                     f"| {med[f'{tier} | decode | oneDNN']:.1f} | {med[f'{tier} | decode | F.linear']:.1f} |")
    (HERE / "ONEDNN.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
