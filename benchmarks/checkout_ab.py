"""This checkout's decode speed against another commit's, in the same minutes.

The machine's memory bandwidth drifts by up to 1.5x within minutes, so two runs of
generation.py an hour apart cannot tell a 5% change. Here each checkout runs in a process
of its own (held open, the kernels built before timing), asked in turn round after round:
decode ms per token = (t(65 new) - t(1 new)) / 64 on random 124M weights (seed 0), greedy,
prompt 16 (`--prompt`). Reports each side's median and the median of each round's own ratio,
and checks that both give the same ids. Writes benchmarks/AB.md.

With `--rows 1,4,8`: one decode step of N rows instead (N users' caches at the prompt, every
row active, as batching.py's step ceiling; the median of 16 steps), per N, and each side's
ceiling N x t(1) / t(N) from its medians: a change to the multi-row step, measured in the
same minutes as the commit before it. With `--prefill 4,8,16`: the prefill of the prompt's
first N tokens into a new cache instead (the median of 16), and the next token's id.

    python benchmarks/checkout_ab.py ea1e2b3 --tiers bf16,int8 --rounds 10
    python benchmarks/checkout_ab.py HEAD --tiers fp32,bf16,int8 --prompt 900 --out benchmarks/AB-long.md
    python benchmarks/checkout_ab.py 4ecdbd1 --tiers int8 --rows 1,4,8 --out benchmarks/AB-rows.md
    python benchmarks/checkout_ab.py 295b307 --tiers fp32,bf16,int8 --prefill 4,8,16 --out benchmarks/PREFILL.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout
from common import machine_line, spread  # noqa: E402

CHILD = r'''
import json, sys, time
import torch
sys.path.insert(0, sys.argv[1])
import gpt2
torch.set_num_threads(2)
model = gpt2.load_model(sys.argv[2], **gpt2.TIERS[sys.argv[3]])
assert model.compile_status.wait(), model.compile_status.error
P = int(sys.argv[4])
ids = torch.randint(0, 50257, (1, P), generator=torch.Generator().manual_seed(1))

def timed(n):
    start = time.perf_counter()
    out = gpt2.generate(model, ids, n)
    return time.perf_counter() - start, out

def new_cache(length):
    """The cache gpt2.generate makes (KVCache.for_model where the commit has it)."""
    make = getattr(gpt2.KVCache, "for_model", None)
    return make(model, 1, length) if make else gpt2.KVCache(model.config, 1, length)

def step_ms(n, steps=16):
    """Median ms of one decode step of n rows (the prompt in n caches), and row 0's ids."""
    caches = [new_cache(P + steps + 1) for _ in range(n)]
    times, got = [], []
    with torch.inference_mode():
        for cache in caches:
            logits = model(ids, cache, last_only=True)[:, -1]
        next_ids = logits.argmax(-1).repeat(n).view(n, 1)
        for _ in range(steps):
            start = time.perf_counter()
            logits = model(next_ids, gpt2.CacheBatch(caches), last_only=True)[:, -1]
            next_ids = logits.argmax(-1).view(n, 1)
            times.append(time.perf_counter() - start)
            got.append(int(next_ids[0, 0]))
    times.sort()
    return times[len(times) // 2] * 1e3, got

def prefill_ms(n, reps=16):
    """Median ms of the prefill of the prompt's first n tokens into a new cache, and the next id."""
    times = []
    with torch.inference_mode():
        for _ in range(reps):
            cache = new_cache(P + 1)
            start = time.perf_counter()
            logits = model(ids[:, :n], cache, last_only=True)[:, -1]
            times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e3, int(logits.argmax(-1))

ROWS = [int(n) for n in sys.argv[5].split(",")] if sys.argv[5] else []
PREFILL = [int(n) for n in sys.argv[6].split(",")] if sys.argv[6] else []
timed(8)
for n in ROWS:
    step_ms(n, 4)
for n in PREFILL:
    prefill_ms(n, 2)
print("ready", flush=True)
for _ in sys.stdin:
    if PREFILL:
        runs = {n: prefill_ms(n) for n in PREFILL}
        print(json.dumps({"ms": {n: ms for n, (ms, _) in runs.items()}, "ids": [i for _, i in runs.values()]}),
              flush=True)
        continue
    if ROWS:
        steps = {n: step_ms(n) for n in ROWS}
        print(json.dumps({"ms": {n: ms for n, (ms, _) in steps.items()}, "ids": steps[ROWS[0]][1]}), flush=True)
        continue
    one, _ = timed(1)
    many, out = timed(65)
    print(json.dumps({"ms": (many - one) / 64 * 1e3, "ids": out[0, P:].tolist()}), flush=True)
'''


def side(checkout: Path, weights: Path, tier: str, prompt: int, rows: str, prefill: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(checkout), str(weights), tier, str(prompt), rows,
                             prefill],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"{checkout} ({tier}) did not start")
    return proc


def ask(proc: subprocess.Popen) -> dict:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def compare(base: Path, weights: Path, tier: str, rounds: int, prompt: int, rows: str = "",
            prefill: str = "") -> list[str]:
    procs = {"base": side(base, weights, tier, prompt, rows, prefill),
             "this": side(ROOT, weights, tier, prompt, rows, prefill)}
    ms = {name: [] for name in procs}
    ids = {}
    try:
        for r in range(rounds):
            for name in (("base", "this") if r % 2 == 0 else ("this", "base")):  # alternate who goes first
                reply = ask(procs[name])
                ms[name].append(reply["ms"])
                ids[name] = reply["ids"]
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    same = "yes" if ids["base"] == ids["this"] else "NO"
    if prefill:
        return [f"| {tier} | {n} | {at_size(ms, n)[1]} | {'yes' if ids['base'][i] == ids['this'][i] else 'NO'} |"
                for i, n in enumerate(prefill.split(","))]
    if not rows:
        ratios = [b / t for b, t in zip(ms["base"], ms["this"])]
        return [f"| {tier} | {spread(ms['base'], '.2f')} | {spread(ms['this'], '.2f')} | {spread(ratios, '.3f')} | {same} |"]
    lines = []
    first = rows.split(",")[0]
    for n in rows.split(","):
        per, cells = at_size(ms, n)
        ceiling = {name: int(n) * statistics.median(m[first] for m in ms[name]) / statistics.median(per[name])
                   for name in ms}
        lines.append(f"| {tier} | {n} | {cells} | {ceiling['base']:.2f} | {ceiling['this']:.2f} | {same} |")
    return lines


def at_size(ms: dict[str, list[dict]], n: str) -> tuple[dict[str, list[float]], str]:
    """Each side's times at size n (a JSON key, so a string) and the table's cells for them:
    base, this, and each round's base ÷ this."""
    per = {name: [m[n] for m in ms[name]] for name in ms}
    ratios = [b / t for b, t in zip(per["base"], per["this"])]
    return per, f"{spread(per['base'], '.2f')} | {spread(per['this'], '.2f')} | {spread(ratios, '.3f')}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="the commit to compare against (any git revision)")
    p.add_argument("--tiers", default="bf16,int8")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens (a long one: decode over a long context)")
    p.add_argument("--rows", default="", help="decode steps of these many rows instead, e.g. 1,4,8 (the first: "
                   "the ceilings' one row)")
    p.add_argument("--prefill", default="", help="the prefill of a prompt's first N tokens instead, e.g. 4,8,16 "
                   "(at most --prompt)")
    p.add_argument("--out", type=Path, default=HERE / "AB.md")
    args = p.parse_args()
    if args.prefill and max(int(n) for n in args.prefill.split(",")) > args.prompt:
        p.error("--prefill lengths must be at most --prompt")
    import torch
    import transformers

    import gpt2

    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base], capture_output=True,
                         text=True, check=True).stdout.strip()
    this = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    started, start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base, weights = Path(tmp) / "base", Path(tmp) / "gpt2"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), rev], check=True)
        try:  # in the Hub's layout, which every commit reads (our own file's metadata grows fields)
            torch.manual_seed(0)
            hf = {k: v for k, v in gpt2.PRESETS["gpt2"].to_hf().items() if k not in ("model_type", "architectures")}
            transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf)).save_pretrained(weights)
            rows = [line for tier in args.tiers.split(",")
                    for line in compare(base, weights, tier, args.rounds, args.prompt, args.rows, args.prefill)]
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=True)
    lines = ["# This checkout against another commit", "",
             f"Command: `python benchmarks/checkout_ab.py {' '.join(sys.argv[1:])}`  ",
             f"Date: {started}, took {time.perf_counter() - start:.0f} s; base {rev}, this checkout {this} "
             "(with its uncommitted changes, if any)  ",
             machine_line(), "",
             (f"Random 124M weights (transformers' init, seed 0), prompt {args.prompt}, greedy, "
              + ("ms of the prefill of the prompt's first N tokens into a new cache (`model(ids, cache, "
                 "last_only=True)`, the median of 16), same id: the next token's argmax after it; " if args.prefill else
                 "ms of one decode step of N rows (the prompt in N caches, every row active; the median of "
                 "16 steps), ceiling = N × t(1 row) / t(N rows) from each side's medians; " if args.rows else
                 "decode ms per token = (t(65 new) − t(1 new)) / 64; ")
              + f"each checkout in a process of its own, asked in turn over {args.rounds} rounds (who goes first "
              "alternates). Median [min–max] over rounds; ratio = base ÷ this within each round (> 1: this "
              "checkout is faster)."), "",
             *([f"| tier | tokens | {rev} ms | {this} ms | ratio per round | same id |",
                "|---|---:|---:|---:|---:|---|"] if args.prefill else
               [f"| tier | rows | {rev} ms/step | {this} ms/step | ratio per round | {rev} ceiling | {this} ceiling "
                "| same ids |", "|---|---:|---:|---:|---:|---:|---:|---|"] if args.rows else
               [f"| tier | {rev} ms/token | {this} ms/token | ratio per round | same ids |", "|---|---:|---:|---:|---|"]),
             *rows, ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
