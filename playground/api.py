"""The documented API: plain values in, plain values out, no session needed.

`generate` streams text for the given settings; `attention`, `token_attention` and
`next_tokens` run one forward pass over any text (a finished generation's text included)
and return numbers for it, so a client never depends on what the server happens to keep.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import gradio as gr

import gpt2

from . import tokens, validate
from .errors import friendly
from .inspection import DEFAULT_WINDOW, MAX_WINDOW, rank_candidates
from .models import describe, load_error_message
from .service import MEAN, Service, parse_head


def register(service: Service, generate_concurrency: int) -> None:
    """Add the endpoints to the Blocks being built (call inside its `with`)."""
    names = service.models.names

    def generate(prompt: str, model: str = names[0], temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, max_new_tokens: int = 60, seed: int | None = None) -> Iterator[str]:
        """Continue `prompt`; streams the generated text (without the prompt). A prompt too long
        for the context keeps its end and says so in a warning (a `log` message)."""
        s = validate.settings(prompt, model, temperature, top_k, top_p, max_new_tokens, seed, offered=names)
        with closing(service.generate(s, notice=gr.Warning)) as steps:
            for step in steps:
                if step.n_generated:
                    yield step.text

    def attention(text: str, model: str = names[0], layer: int = 0, head: str = MEAN,
                  start: int | None = None, size: int = DEFAULT_WINDOW) -> dict:
        """Attention weights of `text` for one layer: head = 'mean', a head number, or 'all'.
        Returns the window's token labels and weights[query][key] (or [head][query][key])."""
        run = service.inspect_text(validate.prompt_text(text), validate.model_name(model, names))
        layer = validate.integer("layer", layer, 0, run.config.n_layer - 1)
        size = validate.integer("size", size, 1, MAX_WINDOW)
        start = None if start is None else validate.integer("start", start, 0, len(run.ids) - 1)
        every = str(head).strip().lower() == "all"
        if every:
            view = service.all_heads(run, layer, start, size)
        else:
            view = service.view(run, layer, parse_head(head, run.config.n_head), start, size)
        return {"model": model, "layer": layer,
                "head": "all" if every else MEAN if view.head is None else view.head,
                "start": view.window.start, "stop": view.window.stop, "total": view.window.total,
                "shown": view.window.describe(), "tokens": view.labels,
                "weights": view.weights.round(5).tolist(), "earlier": view.earlier.round(5).tolist()}

    def token_attention(text: str, model: str = names[0], layer: int = 0, head: str = MEAN,
                        position: int = -1, direction: str = "from") -> dict:
        """One token's attention over the whole of `text` (up to the model's context; a longer
        text keeps its end), for one layer and head = a head number or 'mean'. `position`
        counts tokens from 0 (-1 = the last). direction='from': what the token attends to,
        weights over keys 0..position; 'to': what attends to it, weights of the queries
        position..T-1. `tokens` are the labels of the tokens `weights` belongs to."""
        run = service.inspect_text(validate.prompt_text(text), validate.model_name(model, names))
        layer = validate.integer("layer", layer, 0, run.config.n_layer - 1)
        position = validate.integer("position", position, -len(run.ids), len(run.ids) - 1)
        found = service.token_attention(run, layer, parse_head(head, run.config.n_head), position,
                                        str(direction).strip().lower())
        return {"tokens": found.labels, "weights": found.weights.round(6).tolist(),
                "position": found.position}

    def next_tokens(text: str, model: str = names[0], k: int = 5) -> dict:
        """For each token of `text` after the first: the model's top-k guesses for it and the
        probability it gave the actual token (before any sampling settings)."""
        k = validate.integer("k", k, 1, 20)
        run = service.inspect_text(validate.prompt_text(text), validate.model_name(model, names))
        labels = tokens.labels(run.ids)
        return {"model": model, "tokens": labels, "positions": [
            {"position": p, "token": labels[p], "prob": round(c.chosen_prob, 6),
             "top": [{"token": t, "prob": round(q, 6)} for t, q in zip(tokens.labels(c.ids), c.probs)]}
            for p, c in enumerate(rank_candidates(run.capture, run.ids, k), start=1)]}

    def load_model(model: str) -> str:
        """Load a model ahead of use; returns its status line. A model that cannot load is an
        error saying why and how to fix it."""
        name = validate.model_name(model, names)
        try:
            return describe(name, service.models.get(name))
        except gpt2.WeightsError as error:
            raise gr.Error(load_error_message(name, error), print_exception=False) from None

    gr.api(friendly(generate), api_name="generate", concurrency_id="generate",
           concurrency_limit=generate_concurrency)
    gr.api(friendly(attention), api_name="attention", concurrency_id="generate")
    gr.api(friendly(token_attention), api_name="token_attention", concurrency_id="generate")
    gr.api(friendly(next_tokens), api_name="next_tokens", concurrency_id="generate")
    gr.api(friendly(load_model), api_name="load_model", concurrency_id="load")
