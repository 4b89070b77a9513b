"""Issue 30's causal tools in the library: how fast at 124M, and how close the fast tiers are
to fp32.

Speed, on GPT-2 124M's shape with random weights (`gpt2.GPT(PRESETS["gpt2"])`, saved and
loaded as a checkpoint, decode kernels built), each tier:
- direct logit attribution at positions of a finished 1,024-token run (a 1,000-token prompt
  and 24 generated tokens, captured with `residuals=True, values=True`), read from the
  capture (`gpt2.attribute(..., capture=)`); target <= 0.1 s;
- activation patching of a 20-token prompt pair: every head (144 patched runs), target
  <= 2 s; the residual stream at every (layer, position) (12 x 20), target <= 3 s;
- saliency (input x gradient) of a 200-token text at its last position, target <= 1 s;
- steering: a baseline and a steered continuation as two rows of one decode loop
  (`gpt2.generate_steered`, 20-token prompt, 64 new tokens, sampled), a steered generation
  alone, and two plain rows together, each over the plain generation of the same request
  on the same loop; target <= 1.1x.

Agreement of the bf16 and int8 tiers with fp32, each tool asked for fp32's target and
contrast: on the built-in model (trained: its induction texts) and on the random 124M.

Every tool runs on the process's compute thread (`gpt2.compute.run`), where the app runs
them, and generation goes through a `gpt2.BatchedGenerator`, which steps there too: one
OpenMP team, as in the app (two threads computing on 2 cores make each other's parallel
regions wait, see `gpt2.compute`).

    python benchmarks/explain.py          # -> benchmarks/EXPLAIN.md (a few minutes on 2 cores)
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import gpt2  # noqa: E402
from gpt2.training import restricted  # noqa: E402
from gpt2.training.trainer import repeated_sequences  # noqa: E402
from common import cpu  # noqa: E402 - this script's folder

OUT = HERE / "EXPLAIN.md"
REPS = 5
TARGETS = {"attribution": 0.1, "patch heads": 2.0, "patch residual": 3.0, "saliency": 1.0, "steering": 1.1}


run = gpt2.compute.run


def timed(fn, reps: int = REPS) -> list[float]:
    """Wall seconds of `reps` calls of fn on the compute thread after one untimed call (each
    timed there: the hand-over is not counted)."""
    def once() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    run(once)
    return [run(once) for _ in range(reps)]


def cell(values: list[float], fmt: str = ".3f") -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}–{max(values):{fmt}}]"


def steered_alone(loop: gpt2.BatchedGenerator, prompt: torch.Tensor, vector: torch.Tensor, settings: dict) -> None:
    with gpt2.steer(loop.model, {6: vector}, 4.0) as steering:
        loop.generate(prompt, 64, steering=steering, **settings)


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 50257, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def speed(model: gpt2.GPT) -> dict[str, str]:
    clean = ids(20, 1)
    corrupted = clean[:6] + ids(3, 2) + clean[9:]
    text = ids(200, 3)
    row: dict[str, str] = {}
    loop = gpt2.BatchedGenerator(model)
    try:
        with gpt2.capture_attention(model, residuals=True, values=True) as capture:
            finished = loop.generate(torch.tensor(ids(1000, 4)), 24, capture=capture)[0].tolist()
        per_position = [statistics.median(timed(lambda p=p: gpt2.attribute(model, finished, p, capture=capture)))
                        for p in (0, 511, 999, 1023)]
        row["attribution"] = f"{max(per_position):.3f} (median per position: " \
                             + ", ".join(f"{t * 1e3:.0f}" for t in per_position) + " ms)"
        row["patch heads"] = cell(timed(lambda: gpt2.patch_heads(model, clean, corrupted), 3))
        row["patch residual"] = cell(timed(lambda: gpt2.patch_residual(model, clean, corrupted), 3))
        row["saliency"] = cell(timed(lambda: gpt2.saliency(model, text, 199), 3))
        prompt = torch.tensor(ids(20, 5))
        vector = run(lambda: gpt2.steering_vector(model, ids(8, 6), ids(8, 7), 6))
        settings = dict(temperature=1.0, top_k=40, seed=1)
        runs = {"plain": lambda: loop.generate(prompt, 64, **settings),
                "steered": lambda: steered_alone(loop, prompt, vector, settings),
                "pair": lambda: gpt2.generate_steered(loop, prompt, {6: vector}, 64, 4.0, **settings),
                "two plain rows": lambda: loop.generate_together(prompt, 64, **settings, steerings=[None, None])}
        for fn in runs.values():
            fn()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(REPS):  # interleaved: the load of the moment hits them all
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        best = {name: min(t) for name, t in times.items()}
        row["steering"] = (f"pair {best['pair'] / best['plain']:.2f}x; steered alone {best['steered'] / best['plain']:.2f}x; "
                           f"two plain rows {best['two plain rows'] / best['plain']:.2f}x (plain {best['plain']:.2f} s)")
    finally:
        loop.close()
    return row


def agreement(ref: gpt2.GPT, tier: gpt2.GPT, text: list[int], clean: list[int], corrupted: list[int],
              positions: list[int], layer: int) -> dict[str, str]:
    """How far each tool's numbers on `tier` are from fp32's (`ref`), for fp32's tokens."""
    rel = lambda got, want: float((got - want).abs().max() / want.abs().max())  # noqa: E731
    errors, totals, metrics = [], [], []
    for p in positions:
        want = run(lambda: gpt2.attribute(ref, text, p))
        got = run(lambda: gpt2.attribute(tier, text, p, want.target, want.contrast))
        parts = lambda a: torch.cat([a.heads.flatten(), a.attention_bias, a.mlps,  # noqa: E731
                                     torch.tensor([a.embeddings, a.final_bias])])
        errors.append(rel(parts(got), parts(want)))
        metrics.append((abs(got.metric - want.metric), want.metric))
        totals.append(abs(got.total() - got.metric))
    fp32 = [m for _, m in metrics]
    out = {"attribution": f"parts {max(errors):.3f}; metric off by ≤ {max(d for d, _ in metrics):.3f} "
                          f"(fp32's: {', '.join(f'{m:.2f}' for m in fp32)}); sum of parts minus metric ≤ "
                          f"{max(totals):.1e}"}
    for level, fn in (("patch heads", gpt2.patch_heads), ("patch residual", gpt2.patch_residual)):
        want = run(lambda: fn(ref, clean, corrupted))
        got = run(lambda: fn(tier, clean, corrupted, want.target, want.contrast))
        out[level] = f"{float((got.grid - want.grid).abs().max()):.3f}"
    sal = []
    for p in positions:
        want = run(lambda: gpt2.saliency(ref, text, p))
        got = run(lambda: gpt2.saliency(tier, text, p, want.target, want.contrast))
        sal.append(rel(got.scores, want.scores))
    out["saliency"] = f"{max(sal):.3f}"
    vector = run(lambda: gpt2.steering_vector(ref, text[:8], text[8:16], layer))
    want = gpt2.generate_steered(ref, torch.tensor(text[:10]), {layer: vector}, 32, 4.0)[1][0, 10:]
    got = gpt2.generate_steered(tier, torch.tensor(text[:10]),
                                {layer: run(lambda: gpt2.steering_vector(tier, text[:8], text[8:16], layer))},
                                32, 4.0)[1][0, 10:]
    same = int((got != want).nonzero()[0, 0]) if (got != want).any() else len(want)
    out["steering"] = f"{same}/32 greedy tokens before the first difference"
    return out


def machine() -> list[str]:
    model, flags = cpu()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return [f"- CPU: {model}, {os.cpu_count()} logical cores; flags: {flags}",
            f"- torch {torch.__version__}, Python {platform.python_version()}, {gpt2.compute.threads()} threads "
            f"on the compute thread; decode kernels: "
            f"{gpt2.fast.kernels.library().isa} path; the fast tiers' residual stream in "
            f"{str(gpt2.tiers.stream_dtype()).removeprefix('torch.')}",
            f"- load average at the end: {load} (the machine is shared: other processes ran meanwhile)"]


def main() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        path = gpt2.save_model(gpt2.GPT(gpt2.PRESETS["gpt2"]), Path(tmp) / "random-124m.safetensors")
        models = {}
        for tier, kwargs in gpt2.TIERS.items():
            models[tier] = run(lambda kwargs=kwargs: gpt2.load_model(path, **kwargs))
            models[tier].compile_status.wait(600)
        speeds = {tier: speed(m) for tier, m in models.items()}
        print(speeds)
        random_text = ids(64, 8)
        random_clean = random_text[:20]
        random_corrupted = random_clean[:6] + ids(3, 9) + random_clean[9:]
        agree_random = {tier: agreement(models["fp32"], models[tier], random_text, random_clean, random_corrupted,
                                         [10, 40, 63], 6) for tier in ("bf16", "int8")}
        print(agree_random)
    builtin = {tier: run(lambda kw=kw: gpt2.load_model(gpt2.BUILTIN, **kw)) for tier, kw in gpt2.TIERS.items()}
    vocab = restricted.trained_ids(builtin["fp32"])
    vocab = vocab[vocab != gpt2.EOT_ID]
    rows = repeated_sequences(vocab, 2, 24, 1234)
    text, other = rows[0].tolist(), rows[1].tolist()
    clean = text  # patching: the second copy's tokens after a corrupted first copy
    corrupted = text[:1] + other[1:25] + text[25:]
    agree_builtin = {tier: agreement(builtin["fp32"], builtin[tier], text, clean, corrupted, [30, 40, 48], 1)
                     for tier in ("bf16", "int8")}
    print(agree_builtin)
    seconds = time.perf_counter() - started

    tools = ["attribution", "patch heads", "patch residual", "saliency", "steering"]
    unit = {"steering": "x a plain generation"}
    lines = ["# The causal tools: speed and the tiers' agreement with fp32", "",
             "Command: `python benchmarks/explain.py` (this run: "
             f"{seconds:.0f} s). Library only (`gpt2.attribute`, `gpt2.patch_heads`, `gpt2.patch_residual`, "
             "`gpt2.saliency`, `gpt2.generate_steered`) on the compute thread, as the app runs them.", "",
             *machine(), "",
             "Timings are noisy: the machine's 2 cores were shared with other sessions' tests and benchmarks "
             "while this ran (see the load average: above 2, every run here got a fraction of the cores); "
             "medians with [min–max] over the repetitions; the min is the least disturbed run. Steering: "
             "the fastest of 5 interleaved runs of each over the fastest plain generation (20-token prompt, 64 "
             "sampled tokens, one `BatchedGenerator`): the baseline + steered pair as two rows of one loop, a "
             "steered generation alone, and two plain rows together (what a second row costs, steering or not: "
             "the pair's cost over a plain run is that row's, the steering adds nothing, its vector being added "
             "inside the compiled decode step).", "",
             "## Speed, GPT-2 124M (random weights), seconds", "",
             "| tool | target | fp32 | bf16 | int8 |", "|---|---|---|---|---|"]
    labels = {"attribution": "attribution at a position of a finished 1,024-token run (slowest of 4 positions)",
              "patch heads": "patching every head (144 runs), 20-token prompts",
              "patch residual": "patching the residual stream, 12 layers x 20 positions",
              "saliency": "saliency of a 200-token text",
              "steering": "steering, fastest run / fastest plain generation (64 tokens)"}
    for tool in tools:
        lines.append(f"| {labels[tool]} | ≤ {TARGETS[tool]} {unit.get(tool, 's')} | "
                     + " | ".join(speeds[t][tool] for t in gpt2.TIERS) + " |")
    lines += ["", "## Agreement with fp32", "",
              "Each tool on the tier, asked for fp32's target and contrast. Attribution: the largest difference of "
              "a part over the largest fp32 part, and the metric's difference, at 3 positions; patching: "
              "the largest difference of a normalised cell (1 = the full clean-corrupted difference); saliency: "
              "the largest score difference over the largest fp32 score, at 3 positions; steering: greedy steered "
              "tokens equal to fp32's (32 generated, strength 4).", ""]
    for name, table, desc in (("built-in model (trained, 3 x 4 heads)", agree_builtin,
                               "a repeated sequence of 24 trained ids (the induction heads' text), positions 30, 40, "
                               "48; patching: clean = that text, corrupted = its first copy replaced"),
                              ("GPT-2 124M, random weights", agree_random,
                               "64 random ids, positions 10, 40, 63; patching: 20-token prompts, 3 tokens replaced")):
        lines += [f"### {name}", "", desc + ".", "", "| tool | bf16 | int8 |", "|---|---|---|"]
        for tool in tools:
            lines.append(f"| {tool} | {table['bf16'][tool]} | {table['int8'][tool]} |")
        lines.append("")
    lines += ["## What precision each computation uses", "",
              "| tool | fp32 | bf16 / int8 tiers |", "|---|---|---|",
              "| attribution | fp32 (the reference) | the tier's own captured activations (residual stream in the "
              "tier's stream dtype, keys and values fp32 from the cache), decomposed in fp32 math with "
              "`attn.c_proj` widened to fp32 (int8: dequantised) |",
              "| patching | fp32 | the tier's own forward passes (its weights, its stream dtype); the metric in fp32 |",
              "| saliency | fp32 | fp32 arithmetic on the tier's weights widened to fp32 (int8 dequantised): "
              "gradients never go through bf16 rounding or integer products |",
              "| steering | fp32 | the tier's own generation; the vector averaged in fp32 and added in the stream "
              "dtype |", ""]
    OUT.write_text("\n".join(lines))
    print(OUT.read_text())


if __name__ == "__main__":
    main()
