"""Fidelity of the bf16 and int8 tiers against fp32, on the trained built-in model.

Random weights give near-uniform logits, so agreement on them proves nothing; the built-in
model is trained, and its held-out text (a corpus seed it never saw) is what it predicts well.
Two paths per tier: a forward pass over each 256-token row (the prefill path: oneDNN's GEMMs),
and the same rows fed one token at a time through the KV cache (the decode path: the C++
kernels, the int8 tier's integer products and its int8 LM head), each against fp32's forward
pass. Prints a table and writes it into benchmarks/RESULTS.md as its "Fidelity" section.

    python benchmarks/fidelity.py
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import gpt2  # noqa: E402
from gpt2.training import corpus, restricted  # noqa: E402
from common import put_section  # noqa: E402
from gpt2.fast import rowdot  # noqa: E402
from gpt2.tiers import compare_tiers  # noqa: E402

HERE = Path(__file__).resolve().parent
MODEL_FILE = gpt2.weights.BUILTIN_FILE
HELD_OUT_SEED = 31337  # the built-in model was trained on seed 0; tests/test_fidelity.py uses this too
TIERS = ("bf16", "int8")


def held_out_rows(n_docs: int = 200, T: int = 256) -> torch.Tensor:
    ids = corpus.corpus_tokens(n_docs, seed=HELD_OUT_SEED)
    return ids[: len(ids) // T * T].view(-1, T)


@torch.inference_mode()
def decode_agreement(reference: gpt2.GPT, candidate: gpt2.GPT, rows: torch.Tensor) -> float:
    """Share of positions where the candidate, fed the row one token at a time through its KV
    cache (the decode kernels, which `compile_kernels` has switched on), predicts fp32's argmax."""
    want = reference(rows).argmax(-1)
    agree = 0
    for b in range(rows.size(0)):
        cache = gpt2.KVCache(candidate.config, 1, rows.size(1))
        for t in range(rows.size(1)):
            logits = candidate(rows[b:b + 1, t:t + 1], cache, last_only=True)
            agree += int(logits[0, -1].argmax() == want[b, t])
    return agree / rows.numel()


def measure(isa: str) -> list[dict]:
    """Both paths' agreement per tier, with the decode kernels of path `isa` (GPT2_CPU_ISA is
    set by `main` for this process, the tiers' stream dtype following it)."""
    fp32 = gpt2.load_model(MODEL_FILE)
    rows = held_out_rows()
    vocab = restricted.trained_ids(fp32)
    results = []
    for tier in TIERS:
        model = gpt2.load_model(MODEL_FILE, **gpt2.TIERS[tier])
        if not model.compile_status.wait():
            raise SystemExit(f"the decode kernels did not build: {model.compile_status.error}")
        result = compare_tiers(fp32, model, rows, vocab)
        results.append({"tier": tier, "path": model.compile_status.isa, "tokens": result.tokens,
                        "stream": str(model.wpe.weight.dtype).removeprefix("torch."),
                        "top1": result.top1_agreement, "max_error": result.max_logit_error,
                        "mean_error": result.mean_logit_error, "decode": decode_agreement(fp32, model, rows)})
    return results


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--isa":  # one path, in this process (see below)
        print(json.dumps(measure(sys.argv[2])))
        return
    lines = ["## Fidelity of the fast tiers", "",
             f"Command: `python benchmarks/fidelity.py`. Model: `gpt2/data/builtin-model.safetensors` "
             f"(trained; random weights would prove nothing). Text: {held_out_rows().numel()} tokens of "
             f"the built-in corpus at seed {HELD_OUT_SEED}, never trained on. Top-1 = the next-token "
             "argmax equals fp32's; logit errors over the model's trained ids. One process per "
             "decode path this CPU runs (`GPT2_CPU_ISA`); the int8 tier's decode path takes integer "
             "products of rows quantised to 15-bit integers (one scale a row).", "",
             f"CPU: {cpu_name()}; flags of interest: {' '.join(sorted(f for f in rowdot.cpu_flags() if FLAGS.match(f)))}", "",
             "| tier | decode path | stream | tokens | top-1 agreement with fp32 | max logit error "
             "| mean logit error | decode path: top-1 agreement |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for isa in rowdot.runnable_isas():
        env = {**os.environ, "GPT2_CPU_ISA": isa, "GPT2_KERNELS": "on"}
        out = subprocess.run([sys.executable, __file__, "--isa", isa], env=env, check=True, capture_output=True,
                             text=True).stdout
        for r in json.loads(out.splitlines()[-1]):
            lines.append(f"| {r['tier']} | {r['path']} | {r['stream']} | {r['tokens']} | {100 * r['top1']:.2f}% | "
                         f"{r['max_error']:.3f} | {r['mean_error']:.4f} | {100 * r['decode']:.2f}% |")
    print("\n".join(lines))
    put_section("fidelity", lines)


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.partition(":")[2].strip() for line in f if line.startswith("model name")), "unknown")


FLAGS = re.compile(r"^(avx2|avx512(f|bw|vl|_bf16|_vnni)|avx_vnni|fma|f16c|asimddp|bf16)$")


if __name__ == "__main__":
    main()
