"""What the built-in model's induction heads do: knock them out and measure the copying.

On a repeated random sequence (EOT, L random trained ids, the same L ids again) a model that
copies predicts the second copy almost perfectly. Knocking out the induction heads (those
whose `gpt2.head_scores` induction score is >= 0.3 on these sequences) should break that,
and knocking out as many other heads should not. Loss is over the second copy's tokens
2..L (the first token of a copy cannot be predicted), as in docs/BUILTIN_MODEL.md.

    python benchmarks/induction_knockout.py   # -> benchmarks/KNOCKOUT.md (~10 s)
"""
from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import gpt2  # noqa: E402
from gpt2.training import restricted  # noqa: E402
from gpt2.training.trainer import repeated_sequences  # noqa: E402

ROWS, SEED, CONTROLS = 64, 1234, 20


@torch.no_grad()
def copy_stats(model: gpt2.GPT, rows: torch.Tensor, length: int,
               heads: dict[int, list[int]]) -> tuple[float, float, float]:
    """(loss on the first copy, loss on the second copy, top-1 accuracy on the second copy)
    with `heads` knocked out."""
    with gpt2.ablate_heads(model, heads):
        logits = model(rows[:, :-1]).float()
    losses = F.cross_entropy(logits.transpose(1, 2), rows[:, 1:], reduction="none")  # [B, T-1]
    # rows: EOT, copy 1 at 1..L, copy 2 at L+1..2L; position p predicts token p+1
    first = losses[:, 1:length].mean()  # tokens 2..L of copy 1
    second = slice(length + 1, 2 * length)  # predicting tokens 2..L of copy 2
    accuracy = (logits[:, second].argmax(-1) == rows[:, second.start + 1:second.stop + 1]).float().mean()
    return float(first), float(losses[:, second].mean()), float(accuracy)


def main() -> None:
    model = gpt2.load_model(gpt2.BUILTIN, compile=False)
    c = model.config
    vocab = restricted.trained_ids(model)
    vocab = vocab[vocab != gpt2.EOT_ID]
    lines = ["# Knocking out the built-in model's induction heads", "",
             "Command: `python benchmarks/induction_knockout.py`. Model: `gpt2.load_model(\"builtin\")` "
             f"({c.n_layer} layers x {c.n_head} heads). {ROWS} sequences per length: `<|endoftext|>`, L random "
             f"distinct trained ids, the same L again (seed {SEED}). Loss in nats/token over tokens 2..L of a copy; "
             f"control: as many heads drawn at random among those outside the circuit (neither induction nor "
             f"the previous-token head), mean over {CONTROLS} draws "
             f"(seed {SEED}). torch {torch.__version__}.", ""]
    for length in (12, 24):
        rows = repeated_sequences(vocab, ROWS, length, SEED)
        with gpt2.capture_attention(model) as att, torch.no_grad():
            model(rows)
        scores = gpt2.head_scores([att[i] for i in range(c.n_layer)], rows)
        induction = {(layer, head) for layer in range(c.n_layer) for head in range(c.n_head)
                     if scores["induction"][layer, head] >= 0.3}
        prev = max(((layer, head) for layer in range(c.n_layer) for head in range(c.n_head)),
                   key=lambda lh: float(scores["previous_token"][lh]))
        others = [lh for lh in itertools.product(range(c.n_layer), range(c.n_head))
                  if lh not in induction | {prev}]  # outside the copying circuit
        as_dict = lambda hs: {layer: [h for l2, h in hs if l2 == layer] for layer, _ in hs}  # noqa: E731
        name = lambda hs: ", ".join(f"{layer}.{h}" for layer, h in sorted(hs))  # noqa: E731
        cases = [("none", set()), (f"induction heads ({name(induction)})", induction),
                 (f"the previous-token head ({name({prev})})", {prev})]
        rng = random.Random(SEED)
        control = [copy_stats(model, rows, length, as_dict(set(rng.sample(others, len(induction)))))
                   for _ in range(CONTROLS)]
        lines += [f"## Repeat length {length}", "",
                  "| knocked out | loss, first copy | loss, second copy | top-1 on the second copy |",
                  "|---|---|---|---|"]
        for label, heads in cases:
            first, second, accuracy = copy_stats(model, rows, length, as_dict(heads))
            lines.append(f"| {label} | {first:.2f} | **{second:.2f}** | {accuracy:.1%} |")
        mean = [sum(x) / len(x) for x in zip(*control)]
        lines += [f"| {len(induction)} other heads, at random (control) | {mean[0]:.2f} | **{mean[1]:.2f}** | {mean[2]:.1%} |", ""]
        print("\n".join(lines[-len(cases) - 4:]))
    (HERE / "KNOCKOUT.md").write_text("\n".join(lines).rstrip() + "\n")


if __name__ == "__main__":
    main()
