"""What building the decode kernels costs a fresh process, and what its first request feels.

`gpt2.load_model` returns at once and builds the decode kernels (`gpt2.fast.kernels`: a C++
library compiled by the system's compiler) in a background thread; requests run eager until
they are ready. Each case below is a fresh Python process that loads the 124M config (random
weights, saved once) and at once runs a request (prompt 16, 64 new tokens, greedy), then
waits for the kernels and runs it again:
- cold: the kernel cache (`GPT2_KERNEL_DIR`) empty (a first start on a new machine or Space);
- warm: the library the cold run left (every later start);
- eager: `compile=False`, for reference.

    python benchmarks/compile_probe.py    # -> the compile section of benchmarks/RESULTS.md
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, machine_line, put_section

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIER_NAMES = ("fp32", "int8")

CHILD = """
import json, sys, time, torch
import gpt2
compile = sys.argv[2] == "1"
t0 = time.perf_counter()
model = gpt2.load_model(sys.argv[1], compile=compile, **gpt2.TIERS[sys.argv[3]])
loaded = time.perf_counter() - t0
idx = torch.randint(50257, (1, 16), generator=torch.Generator().manual_seed(0))

def request():
    t = time.perf_counter()
    first = None
    for i, _ in enumerate(gpt2.stream(model, idx, 64)):
        if i == 0:
            first = time.perf_counter() - t
    return first, time.perf_counter() - t

first_ttft, first_total = request()
ready = None
if compile:
    assert model.compile_status.wait(), model.compile_status.error
    ready = time.perf_counter() - t0
second_ttft, second_total = request()
print(json.dumps(dict(load_s=loaded, first_ttft_s=first_ttft, first_total_s=first_total,
                      ready_after_load_s=ready,
                      compile_s=model.compile_status.seconds if compile else None,
                      second_ttft_s=second_ttft, second_total_s=second_total)))
"""


def run_case(checkpoint: Path, cache_dir: Path, compile: bool, tier: str) -> dict:
    env = {**os.environ, "GPT2_KERNEL_DIR": str(cache_dir), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(checkpoint), "1" if compile else "0",
                          tier], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import gpt2

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = gpt2.save_model(gpt2.GPT(gpt2.PRESETS["gpt2"]), Path(tmp) / "gpt2-random.safetensors")
        for tier in TIER_NAMES:
            cache = Path(tmp) / f"kernels-{tier}"
            for case, compile in (("cold", True), ("warm", True), ("eager", False)):
                result = run_case(checkpoint, cache, compile, tier)
                rows.append((tier, case, result))
                print(tier, case, json.dumps(result), flush=True)
    lines = [
        "## Building the decode kernels: cost at start-up and the first request",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/compile_probe.py'])}`  ",
        machine_line(),
        "",
        "Each row is a fresh process: load the 124M config (random weights), run a request at "
        "once (prompt 16, 64 new tokens, greedy) while the kernels build in the background, "
        "wait for them, run the request again. Cold = the kernel cache (`GPT2_KERNEL_DIR`) "
        "empty; warm = the library the cold run left; eager = `compile=False`. Seconds.",
        "",
        "| tier | case | load | 1st request: first token | 1st request: total | kernels ready after load "
        "| compile_kernels | 2nd request: first token | 2nd request: total |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tier, case, r in rows:
        lines.append(f"| {tier} | {case} | {fmt(r['load_s'])} | {fmt(r['first_ttft_s'])} | "
                     f"{fmt(r['first_total_s'])} | {fmt(r['ready_after_load_s'])} | {fmt(r['compile_s'])} | "
                     f"{fmt(r['second_ttft_s'])} | {fmt(r['second_total_s'])} |")
    put_section("compile", lines)
    print(f"wrote its section into {RESULTS}")


if __name__ == "__main__":
    main()
