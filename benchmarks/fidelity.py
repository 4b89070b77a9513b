"""Fidelity of the bf16 and int8 tiers against fp32, on the trained built-in model.

Random weights give near-uniform logits, so agreement on them proves nothing; the built-in
model is trained, and its held-out text (a corpus seed it never saw) is what it predicts well.
Prints a table and writes it into benchmarks/RESULTS.md as its "Fidelity" section.

    python benchmarks/fidelity.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import gpt2  # noqa: E402
from gpt2.training import corpus, restricted  # noqa: E402
from common import put_section  # noqa: E402
from gpt2.tiers import compare_tiers  # noqa: E402

HERE = Path(__file__).resolve().parent
MODEL_FILE = gpt2.weights.BUILTIN_FILE
HELD_OUT_SEED = 31337  # the built-in model was trained on seed 0; tests/test_fidelity.py uses this too
TIERS = ("bf16", "int8")


def held_out_rows(n_docs: int = 200, T: int = 256) -> torch.Tensor:
    ids = corpus.corpus_tokens(n_docs, seed=HELD_OUT_SEED)
    return ids[: len(ids) // T * T].view(-1, T)


def main() -> None:
    fp32 = gpt2.load_model(MODEL_FILE)
    rows = held_out_rows()
    vocab = restricted.trained_ids(fp32)
    lines = ["## Fidelity of the fast tiers", "",
             f"Command: `python benchmarks/fidelity.py`. Model: `gpt2/data/builtin-model.safetensors` "
             f"(trained; random weights would prove nothing). Text: {rows.numel()} tokens of the "
             f"built-in corpus at seed {HELD_OUT_SEED}, never trained on. Top-1 = the next-token "
             "argmax equals fp32's; logit errors over the model's trained ids.", "",
             "| tier | tokens | top-1 agreement with fp32 | max logit error | mean logit error |",
             "|---|---:|---:|---:|---:|"]
    for tier in TIERS:
        result = compare_tiers(fp32, gpt2.load_model(MODEL_FILE, **gpt2.TIERS[tier]), rows, vocab)
        lines.append(f"| {tier} | {result.tokens} | {100 * result.top1_agreement:.2f}% | "
                     f"{result.max_logit_error:.3f} | {result.mean_logit_error:.4f} |")
    print("\n".join(lines))
    put_section("fidelity", lines)


if __name__ == "__main__":
    main()
