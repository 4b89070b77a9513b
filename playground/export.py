""""Download JSON": the whole run as one document, whatever tabs the page visited. Built from
the stored run (its capture and candidates), so the file never depends on what the browser
happened to load; the browser only saves it."""
from __future__ import annotations

import numpy as np

import gpt2

from . import tokens
from .inspection import Run

FORMAT = "gpt2-playground run 2"


def _token(token_id: int, prob: float, tokenizer: gpt2.Tokenizer | None = None) -> dict:
    return {"token": tokens.text([token_id], tokenizer)[0], "id": int(token_id), "prob": round(float(prob), 6)}


def attention(matrix: np.ndarray, start: int, stop: int) -> dict:
    """Rows start..stop-1 of one head's map [T, T] (the heatmap's window): what query q gives
    each key 0..q."""
    return {"start": start, "stop": stop,
            "weights": [matrix[q, :q + 1].round(6).tolist() for q in range(start, stop)]}


def logit_lens(lens: gpt2.Lens, position: int, tokenizer: gpt2.Tokenizer | None = None) -> dict:
    """One position's lens (a `lens` of that one row): per block, its top tokens, as /logit_lens."""
    return {"position": position, "layers": [
        {"layer": layer, "top": [_token(i, p, tokenizer) for i, p in zip(lens.ids[layer, 0, 0].tolist(),
                                                               lens.probs[layer, 0, 0].tolist())]}
        for layer in range(lens.ids.size(0))]}


def next_tokens(run: Run) -> list[dict]:
    """At each position after the first: the token that came, its probability, and the model's
    top candidates there (before temperature, top-k and top-p)."""
    return [{"position": p, **_token(run.ids[p], c.chosen_prob, run.tokenizer),
             "top": [_token(i, q, run.tokenizer) for i, q in zip(c.ids, c.probs)]}
            for p, c in enumerate(run.candidates, start=1)]


def run_document(run: Run, layer: int, head: int | None, shown: dict, lens: dict, summary: str) -> dict:
    """The file's content: `shown` is `attention(...)` of the selected layer and head, `lens` the
    lens at the selected position; `head` None is the mean over heads. Text is the run's
    model's own tokenizer's."""
    decode = (run.tokenizer or gpt2.tokenizer.gpt2_tokenizer()).decode
    return {"format": FORMAT, "model": run.model_name, "seed": run.seed,
            "prompt": decode(run.ids[:run.n_prompt]), "generated": decode(run.ids[run.n_prompt:]),
            "settings": {**(run.settings or {}), "seed": run.seed}, "summary": summary, "ended": run.ended,
            "dropped_prompt_tokens": run.dropped, "n_prompt": run.n_prompt, "token_ids": list(run.ids),
            "tokens": tokens.text(run.ids, run.tokenizer), "layer": layer, "head": "mean" if head is None else head,
            "attention": shown, "logit_lens": lens, "next_tokens": next_tokens(run)}
