"""The documented API: plain values in, plain values out, no session needed.

`generate` streams text for the given settings; `attention`, `token_attention` and
`next_tokens` run one forward pass over any text (a finished generation's text included)
and return numbers for it, so a client never depends on what the server happens to keep.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import gradio as gr

import gpt2

from . import tokens, validate
from .errors import friendly
from .causal import LEVELS, Workbench
from .inspection import DEFAULT_WINDOW, MAX_WINDOW, rank_candidates
from .models import describe, load_error_message
from .service import DIRECTIONS, MEAN, Service, parse_head


def register(service: Service, generate_concurrency: int) -> None:
    """Add the endpoints to the Blocks being built (call inside its `with`)."""
    names = service.models.names

    def text_and_config(text: object, model: object) -> tuple[str, str, gpt2.GPTConfig]:
        """The text and model checked, and the model's config (a load if it is not loaded yet,
        never a forward pass): every argument is checked against it before any model work."""
        text, name = validate.prompt_text(text), validate.model_name(model, names)
        return text, name, service.models.get(name).config

    async def generate(prompt: str, model: str = names[0], temperature: float = 0.8, top_k: int = 40,
                       top_p: float = 0.95, max_new_tokens: int = 60,
                       seed: int | None = None) -> AsyncIterator[str]:
        """Continue a prompt; streams the generated text so far (without the prompt): the first token at
        once, then an update at most every 40 ms with every token made since.
        prompt: the text to continue (at most 20,000 characters).
        model: a name from the app's model list ("gpt2" runs at int8, "gpt2 · bf16" and "gpt2 · fp32" at
        those precisions, likewise the other sizes; "builtin" is the small built-in model; a Hub repo the
        server offers goes by its id, "org/name", "org/name · bf16", "org/name · fp32", and any repo id
        where the server allows it: its own tokenizer reads the prompt and writes the text).
        temperature: 0 = greedy; higher samples more freely (>= 0).
        top_k: sample among the k most likely tokens (0 = off, up to 50257).
        top_p: sample among the fewest tokens whose probabilities add up to p (in (0, 1], 1 = off).
        max_new_tokens: tokens to generate (1 to 512, and below the model's context).
        seed: a whole number >= 0 repeats a run exactly; None picks one at random.
        A prompt too long for the context keeps its end and says so in a warning (a `log` message).
        """
        s = validate.settings(prompt, model, temperature, top_k, top_p, max_new_tokens, seed, offered=names)
        async with aclosing(service.stream_text(s, notice=gr.Warning)) as texts:  # closed with this one
            async for text in texts:
                yield text

    def attention(text: str, model: str = names[0], layer: int = 0, head: str = MEAN,
                  start: int | None = None, size: int = DEFAULT_WINDOW) -> dict:
        """Attention weights over any text (one forward pass) for one layer and a window of tokens.
        text: the text to look at (at most 20,000 characters), e.g. a prompt and its generated text.
        model: a name from the app's model list, as for /generate.
        layer: the layer, 0 to the model's layers - 1.
        head: "mean" (the average over heads), a head number as text ("0", "1", ...), or "all".
        start: the window's first token; None shows the last `size` tokens.
        size: tokens in the window (1 to 128).
        Returns a dict: the window's token labels ("tokens"), weights[query][key] ([head][query][key]
        for "all"), and where the window lies ("start", "stop", "total", "shown").
        """
        size = validate.integer("size", size, 1, MAX_WINDOW)
        every = isinstance(head, str) and head.strip().lower() == "all"
        text, name, config = text_and_config(text, model)
        layer = validate.integer("layer", layer, 0, config.n_layer - 1)
        head_index = None if every else parse_head(head, config.n_head)
        ids = service.text_ids(text, name)
        start = None if start is None else validate.integer("start", start, 0, len(ids) - 1)
        run = service.inspect_ids(name, ids, layers=[layer], residuals=False)
        if every:
            view = service.all_heads(run, layer, start, size)
        else:
            view = service.view(run, layer, head_index, start, size)
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
        direction = validate.choice("direction", direction, DIRECTIONS)
        text, name, config = text_and_config(text, model)
        layer = validate.integer("layer", layer, 0, config.n_layer - 1)
        head_index = parse_head(head, config.n_head)
        ids = service.text_ids(text, name)
        position = validate.integer("position", position, -len(ids), len(ids) - 1)
        run = service.inspect_ids(name, ids, layers=[layer], residuals=False)
        found = service.token_attention(run, layer, head_index, position, direction)
        return {"tokens": found.labels, "weights": found.weights.round(6).tolist(),
                "position": found.position}

    def next_tokens(text: str, model: str = names[0], k: int = 5) -> dict:
        """The model's guesses at every position of a text, before any sampling settings.
        text: the text to look at (at most 20,000 characters).
        model: a name from the app's model list, as for /generate.
        k: guesses per position (1 to 20).
        Returns a dict: "tokens" (the text's token labels) and, for each token after the first,
        "positions": its probability ("prob") and the top k guesses for that place ("top").
        """
        k = validate.integer("k", k, 1, 20)
        text, name, _ = text_and_config(text, model)
        run = service.inspect_ids(name, service.text_ids(text, name), layers=[0], residuals=False)  # the last block's output
        labels = tokens.labels(run.ids, tokenizer=run.tokenizer)
        return {"model": model, "tokens": labels, "positions": [
            {"position": p, "token": labels[p], "prob": round(c.chosen_prob, 6),
             "top": [{"token": t, "prob": round(q, 6)} for t, q in zip(tokens.labels(c.ids, tokenizer=run.tokenizer),
                                                                       c.probs)]}
            for p, c in enumerate(gpt2.compute.run(lambda: rank_candidates(run.capture, run.ids, k)), start=1)]}

    def logit_lens(text: str, model: str = names[0], position: int = -1, k: int = 5) -> dict:
        """The logit lens: what the model would predict after every block, at one position of a text.
        text: the text to look at (at most 20,000 characters; a text longer than the context keeps its end).
        model: a name from the app's model list, as for /generate.
        position: the token whose next token is predicted, from 0 (-1 = the last).
        k: top tokens per layer (1 to 20).
        Returns {"position": int, "layers": [{"layer": i, "top": [{"token": str, "id": int, "prob": float}]}]},
        one entry per block: the residual stream after block i through the final LayerNorm and the
        tied LM head (the last block's entry is the model's own prediction). "token" is the token's
        text (invalid UTF-8 replaced).
        """
        k = validate.integer("k", k, 1, validate.MAX_LENS_K)
        text, name, _ = text_and_config(text, model)
        ids = service.text_ids(text, name)
        position = validate.integer("position", position, -len(ids), len(ids) - 1) % len(ids)
        run = service.inspect_ids(name, ids, layers=[0])  # every block's output; one layer's attention, the least kept
        lens = service.lens(run, slice(position, position + 1), k)
        return {"position": position, "layers": [
            {"layer": layer, "top": [{"token": t, "id": int(i), "prob": round(float(p), 6)}
                                     for t, i, p in zip(tokens.text(lens.ids[layer, 0, 0].tolist(), run.tokenizer),
                                                        lens.ids[layer, 0, 0].tolist(), lens.probs[layer, 0, 0])]}
            for layer in range(lens.ids.size(0))]}

    def ablate(prompt: str, model: str = names[0], heads: list[str] | None = None, max_new_tokens: int = 20,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = 0) -> dict:
        """Head knock-out: continue a prompt twice with the same settings and seed, as is and with some
        attention heads' outputs set to zero (each head's slice of the merged heads, before c_proj).
        prompt: the text to continue (at most 20,000 characters).
        model: a name from the app's model list, as for /generate.
        heads: the heads to knock out, as "layer.head" strings, e.g. ["1.0", "2.1"] (at most 64).
        max_new_tokens: tokens to generate (1 to 512, and below the model's context).
        temperature, top_k, top_p, seed: as for /generate (0 = greedy; a seed repeats both runs exactly).
        Returns {"baseline": str, "ablated": str, "baseline_ids": [int], "ablated_ids": [int]}: the two
        continuations (without the prompt) and their token ids.
        """
        s = validate.settings(prompt, model, temperature, top_k, top_p, max_new_tokens, seed, offered=names)
        config = service.models.get(s.model).config
        knockout = service.ablate(s, validate.heads(heads, config.n_layer, config.n_head))
        tokenizer = service.models.tokenizer(s.model)  # the model's own
        return {"baseline": tokenizer.decode(knockout.baseline), "ablated": tokenizer.decode(knockout.ablated),
                "baseline_ids": knockout.baseline, "ablated_ids": knockout.ablated}

    def load_model(model: str) -> str:
        """Load a model ahead of use, so the next request on it starts at once.
        model: a name from the app's model list, as for /generate.
        Returns its status line (name, precision, size); a model that cannot load is an error
        saying why and how to fix it.
        """
        name = validate.model_name(model, names)
        try:
            return describe(name, service.models.get(name))
        except gpt2.WeightsError as error:
            raise gr.Error(load_error_message(name, error), print_exception=False) from None

    # -- why this token (playground/causal.py; definitions in gpt2.attribution, .patching,
    # .saliency, .steer) --------------------------------------------------------------------
    workbench = Workbench(service)

    def token(name: str, id_: int) -> dict:
        return {"token": service.models.tokenizer(name).decode([id_]), "id": id_}

    def attribution(text: str, model: str = names[0], position: int = -1, target: int | None = None,
                    contrast: int | None = None) -> dict:
        """Direct logit attribution: why the model prefers `target` to `contrast` after `position`, split
        over every part that writes to the residual stream.
        text: the text (at most 20,000 characters; a text longer than the context keeps its end).
        model: a name from the app's model list, as for /generate.
        position: the token after which the next token is predicted, from 0 (-1 = the last).
        target: a token id; None = the token that follows `position` in the text (after the last: the
        model's top-1). contrast: a token id; None = the model's most likely token other than `target`.
        Returns {"position", "target": {"token", "id"}, "contrast": {"token", "id"}, "metric" (logit[target] -
        logit[contrast]), "heads" [n_layer][n_head], "attention_bias" [n_layer], "mlps" [n_layer],
        "embeddings", "final_bias"}: each part through the final LayerNorm with its scale frozen; they sum
        to "metric".
        """
        text, name, _ = text_and_config(text, model)
        ids = service.text_ids(text, name)
        a = workbench.attribution(name, ids, position, target, contrast)
        return {"position": a.position, "target": token(name, a.target), "contrast": token(name, a.contrast),
                "metric": round(a.metric, 6), "heads": a.heads.round(decimals=6).tolist(),
                "attention_bias": a.attention_bias.round(decimals=6).tolist(),
                "mlps": a.mlps.round(decimals=6).tolist(), "embeddings": round(a.embeddings, 6),
                "final_bias": round(a.final_bias, 6)}

    def patch(clean: str, corrupted: str, model: str = names[0], target: int | None = None,
              contrast: int | None = None, level: str = "heads") -> dict:
        """Activation patching, clean -> corrupted, of logit[target] - logit[contrast] at the last position.
        clean, corrupted: two texts of the same number of tokens (short: see the error for the model's cap).
        model: a name from the app's model list, as for /generate.
        target: a token id; None = clean's top-1. contrast: None = corrupted's top-1 (clean's runner-up if
        the same).
        level: "heads" (each head's output at every position from the clean run) or "residual" (the
        residual stream entering each block at each position).
        Returns {"metric_clean", "metric_corrupted", "target", "contrast", and "heads" [n_layer][n_head] or
        "tokens" and "residual" [n_layer][T]}: each cell (m_patched - m_corrupted) / (m_clean -
        m_corrupted), 0 = no effect, 1 = fully restored.
        """
        level = validate.choice("level", level, LEVELS)
        name = validate.model_name(model, names)
        clean_ids, corrupted_ids = (service.text_ids(validate.prompt_text(t), name) for t in (clean, corrupted))
        p = workbench.patch(name, clean_ids, corrupted_ids, target, contrast, level)
        out = {"metric_clean": round(p.metric_clean, 6), "metric_corrupted": round(p.metric_corrupted, 6),
               "target": token(name, p.target), "contrast": token(name, p.contrast)}
        grid = p.grid.round(decimals=6).tolist()
        if level == "heads":
            return {**out, "heads": grid}
        return {**out, "tokens": tokens.labels(clean_ids, tokenizer=service.models.tokenizer(name)), "residual": grid}

    def saliency(text: str, model: str = names[0], position: int = -1, target: int | None = None,
                 contrast: int | None = None) -> dict:
        """Input x gradient: how much each token up to `position` pushes logit[target] - logit[contrast].
        text, model, position, target, contrast: as for /attribution.
        Returns {"position", "tokens" (labels of tokens 0..position), "scores" [position + 1], "target",
        "contrast"}: the gradient of the metric with respect to each position's input embedding (token +
        position, as it enters block 0) times that embedding, summed over the embedding; computed in fp32.
        """
        text, name, _ = text_and_config(text, model)
        ids = service.text_ids(text, name)
        sal = workbench.saliency(name, ids, position, target, contrast)
        return {"position": sal.position,
                "tokens": tokens.labels(ids[:sal.position + 1], tokenizer=service.models.tokenizer(name)),
                "scores": sal.scores.round(decimals=6).tolist(), "target": token(name, sal.target),
                "contrast": token(name, sal.contrast)}

    def steer(prompt: str, model: str = names[0], plus: str = "Love", minus: str = "Hate", layer: int = 6,
              strength: float = 5.0, max_new_tokens: int = 20, temperature: float = 0.0, top_k: int = 0,
              top_p: float = 1.0, seed: int | None = 0) -> dict:
        """Steering by activation addition: continue a prompt as is and with strength x (mean residual of
        `plus` - mean residual of `minus`, entering block `layer`) added there at every position.
        prompt: the text to continue. model: as for /generate.
        plus, minus: the two texts whose difference is the direction (e.g. "Love" and "Hate").
        layer: the block whose input is steered (0 to the model's layers - 1).
        strength: how much of the vector is added (finite, |strength| <= 1000).
        max_new_tokens, temperature, top_k, top_p, seed: as for /generate; both texts share them.
        Returns {"baseline": str, "steered": str, "baseline_ids": [int], "steered_ids": [int]}.
        """
        s = validate.settings(prompt, model, temperature, top_k, top_p, max_new_tokens, seed, offered=names)
        out = workbench.steer(s, plus, minus, layer, strength)
        tokenizer = service.models.tokenizer(s.model)
        return {"baseline": tokenizer.decode(out.baseline), "steered": tokenizer.decode(out.steered),
                "baseline_ids": out.baseline, "steered_ids": out.steered}

    for fn in (generate, attention, token_attention, next_tokens, logit_lens, ablate, attribution, patch,
               saliency, steer):
        gr.api(friendly(fn), api_name=fn.__name__, concurrency_id="generate",
               concurrency_limit=generate_concurrency)
    gr.api(friendly(load_model), api_name="load_model", concurrency_id="load")
