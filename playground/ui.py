"""The Gradio Blocks page and its wiring; the work itself happens in `service`.

The page's own events carry only a random run id in `gr.State` and stay private; every
action also has a stateless, documented endpoint (see `api`). Expected failures (bad
input, missing weights, an expired run) become `gr.Error` messages; anything else is
logged on the server and reported without a traceback. Data flows one way: service ->
figures and the token view's payload -> components.
"""
from __future__ import annotations

import asyncio
import html
import logging
import re
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import gradio as gr

import gpt2

import json

import numpy as np
from gradio.components.plot import PlotData

from . import api, explain, export, figures, page_script, token_view, tokens, validate
from .errors import friendly, to_gr_error
from .inspection import (DEFAULT_WINDOW, MAX_WINDOW, ROLE_THRESHOLD, Run, RunStore, head_roles,
                         repeated_random_text, strongest_head, window)
from .models import (BUILTIN, TIER_SEPARATOR, ModelTable, describe, load_error_message, offered_sources,
                     start_model, with_tiers)
from .service import MEAN, Service, Step, head_name, parse_head, select_head

# The built-in model's induction heads, measured in benchmarks/KNOCKOUT.md (their knock-out
# raises the second copy's loss from 0.09 to 5.55 nats/token).
BUILTIN_INDUCTION_HEADS = "1.0, 1.2, 1.3, 2.1"
LENS_K = 5  # top tokens per layer in the page's lens table
LINK_FIELDS = ("prompt", "model", "temperature", "top_k", "top_p", "max_new_tokens", "seed", "stop_at_end")
# A link generates by itself only what a plain visit could cost: on a model already loaded (or the
# page's own), at most this many new tokens. Anything more waits for a click on Generate.
LINK_AUTORUN_TOKENS = 128
LINK_WAITS = ("The link's settings are filled in: press Generate to run them (a link generates by itself "
              f"only on a model already loaded, up to {LINK_AUTORUN_TOKENS} new tokens).")

log = logging.getLogger(__name__)

# What the Knock-out and Compare tabs say before they have a result (instead of empty plots).
KNOCKOUT_EMPTY = ('<p class="empty-state">Type heads as <code>layer.head</code>, or add the selected one, and '
                  'press <b>Knock out</b>: the prompt in the form runs twice with its settings and seed, as is '
                  'and with those heads zeroed, and the two texts appear here side by side.</p>')
COMPARE_EMPTY = ('<p class="empty-state">Pick a second model or tier and press <b>Compare</b>: the prompt in '
                 'the form runs on both with the same settings and seed, and the two texts appear here with '
                 'the first difference marked, then what a chosen token attends to in each.</p>')

TITLE = "GPT-2 Playground"
INTRO = ("Write a prompt and watch GPT-2 continue it token by token, then look inside: "
         "which earlier tokens each token attended to, and what else the model considered.")
SPAM_PROMPT = ("Is the following text 'spam'? Answer with 'yes' or 'no':'You are a winner you have "
               "been specially selected to receive $1000 cash or a $2000 award.'")
EXAMPLES = {  # label -> prompt, temperature, max new tokens
    "Unicorns (news)": ["In a shocking finding, scientists discovered a herd of unicorns living in a remote "
                        "valley.", 0.8, 80],
    "Programming lessons": ["The three most important things I learned in my first year of programming "
                            "were", 0.7, 60],
    "Spam or not? (greedy)": [SPAM_PROMPT, 0.0, 5],
    "Capital of France (greedy)": ["Q: What is the capital of France?\nA:", 0.0, 10],
    "A village by the sea": ["Once upon a time, in a small village by the sea,", 0.9, 80],
}
BUILTIN_EXAMPLES = {  # its own world: template stories and dialogues whose names and things recur
    "Mira's red kite": ["Once upon a time, there was a girl named Mira. Mira had a red kite.", 0.8, 60],
    "Tom and Lily at the park": ["Tom and Lily went to the park with the ball. At the park, Tom met a dog.",
                                 0.8, 60],
    "Nora's drum": ["One rainy day, Nora woke up early. She wanted to show the drum to Ben.", 0.7, 60],
    "Sam and Zoe (dialogue)": ["Sam: Where is my shiny coin?\nZoe: I saw your coin at the beach.\nSam:",
                               0.5, 40],
    "Leo's map (greedy)": ["Leo found a green map under the bed. One day, Leo took the map to the", 0.0, 30],
}
# Generation and API events admitted at once (every one of them names this limit: Gradio gives
# a concurrency id the smallest limit among its events, so one left at the default would set
# it). A knock-out is two rows of a decode step, so this many fill a step (MAX_BATCH rows);
# more wait in Gradio's queue, whose size stays capped.
GENERATE_CONCURRENCY = gpt2.batching.MAX_BATCH // 2
VIEW_CONCURRENCY = 8
LIVE_INTERVAL_S = 0.25  # at most 4 token-view updates a second while a run streams
STOP_WAIT_S = 30.0  # how long Stop waits for the stopped generation to store its run
STOP_POLL_S = 0.05  # how often that wait looks (a coroutine's sleep: no thread, no queue slot)
CSS = """
#title h1 { margin-bottom: 0; }
#stats { min-height: 1.5em; }
#page-keys { display: none !important; }
body.views-stale .tabitem:not(:has(#token-view))::before {
  content: "Previous run: these views follow when the new run is ready."; display: block;
  padding: 6px 10px; margin-bottom: 8px; border-radius: 6px; background: var(--color-accent-soft);
  font-size: 0.9em; }
body.views-stale :is(#attention-heatmap, #window-note, #head-overview, #all-heads, #token-probs, #candidates,
  #candidates-note, #lens-table, #lens-grid) { opacity: 0.4; }
#token-view .tv-bar { display: flex; flex-wrap: wrap; gap: 6px 12px; justify-content: space-between;
  align-items: center; margin-bottom: 6px; }
#token-view .tv-caption { font-size: 0.9em; flex: 1 1 100%; }
#token-view .tv-dir { display: inline-flex; gap: 4px; }
#token-view .tv-dir button, #token-view .tv-relative { border: 1px solid var(--border-color-primary);
  padding: 2px 10px;
  border-radius: 6px; font-size: 0.85em; cursor: pointer; background: transparent !important;
  color: var(--body-text-color) !important; }
#token-view .tv-dir button.on, #token-view .tv-relative.on { background: var(--color-accent-soft) !important;
  border-color: var(--color-accent); }
#token-view.live .tv-dir { opacity: 0.5; }
#token-view .tv-legend:not([data-scale]) { display: none; }
#token-view .tv-legend { display: inline-flex; align-items: center; gap: 6px; font-size: 0.8em;
  white-space: nowrap; }
#token-view .tv-ramp { position: relative; width: 80px; height: 10px; border-radius: 3px;
  border: 1px solid var(--border-color-primary);
  background: linear-gradient(to right, rgba(249,115,22,0), rgba(249,115,22,0.425) 25%,
  rgba(249,115,22,0.6) 50%, rgba(249,115,22,0.85)); }
#token-view .tv-legend[data-scale=relative] .tv-ramp { background: linear-gradient(to right,
  rgba(249,115,22,0), rgba(249,115,22,0.85)); }
#token-view .tv-mark { position: absolute; top: -3px; bottom: -3px; width: 2px; margin-left: -1px;
  background: var(--body-text-color); }
#token-view .tv-text { position: relative; white-space: pre-wrap; overflow-wrap: anywhere;
  font-family: var(--font-mono); font-size: 13px; line-height: 2; max-height: 28rem; overflow-y: auto;
  padding: 8px 10px; border: 1px solid var(--border-color-primary); border-radius: 8px; }
#token-view .tv-text:focus { outline: 2px solid var(--color-accent); }
#token-view .tok { cursor: pointer; border-radius: 3px;
  box-shadow: inset 0 0 0 1px rgba(128, 128, 128, 0.2); }
#token-view .tok.gen { text-decoration: underline dotted rgba(128, 128, 128, 0.7); }
#token-view .tok.sel { outline: 2px solid #e11d48; }
#token-view .tok.newest { outline: 2px dashed #e11d48; }
#token-view .tv-info { font-size: 0.85em; opacity: 0.8; min-height: 1.4em; margin-top: 4px; }
#attention-heatmap, #all-heads, #head-overview, #lens-grid, #compare-rows { overflow-x: auto !important; }
.sbs { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; }
@media (max-width: 640px) { .sbs { grid-template-columns: 1fr; }
  .js-plotly-plot .modebar-container { display: none !important; }  /* no toolbar over titles */
  #layer, #head { min-width: 100% !important; } }  /* stacked: "mean over heads" and its arrow fit */
.sbs-col { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px; min-width: 0; }
.sbs-title { font-weight: 600; font-size: 0.9em; margin-bottom: 4px; }
.sbs-text { white-space: pre-wrap; overflow-wrap: anywhere; font-family: var(--font-mono); font-size: 13px;
  line-height: 1.7; max-height: 20rem; overflow-y: auto; }
.sbs-prompt { opacity: 0.55; }
.sbs mark.first-diff { background: #fde047; color: #111; outline: 2px solid #e11d48; border-radius: 3px; }
.sbs .after-diff { text-decoration: underline dotted rgba(225, 29, 72, 0.6); }
.sbs-note, .lens-caption { font-size: 0.85em; opacity: 0.85; margin: 6px 0; }
.empty-state { font-size: 0.9em; opacity: 0.8; padding: 10px 0; }
.lens-scroll { overflow-x: auto; }
.lens table { border-collapse: collapse; font-size: 12px; }
.lens th, .lens td { padding: 3px 8px; border: 1px solid var(--border-color-primary); white-space: nowrap;
  text-align: left; }
.lens code { font-size: 12px; }
"""


def _examples(examples: dict[str, list]) -> gr.Dataset:
    return gr.Dataset(samples=list(examples.values()), sample_labels=list(examples))


def _max_new_limit(config: gpt2.GPTConfig) -> int:
    """The largest max-new-tokens a model takes: below its context, and the app's cap."""
    return min(validate.MAX_NEW_TOKENS, config.context_length - 1)


def _layer_choices(config: gpt2.GPTConfig) -> list[tuple[str, int]]:
    return [(f"layer {i}", i) for i in range(config.n_layer)]


def _head_choices(config: gpt2.GPTConfig) -> list[tuple[str, str]]:
    return [("mean over heads", MEAN)] + [(f"head {h}", str(h)) for h in range(config.n_head)]


def _head_value(head: int | None) -> str:
    return MEAN if head is None else str(head)


def compare_default(names: list[str], model: str) -> str:
    """What Compare offers against `model`: another tier of the same model (its exact fp32
    first), else another model; comparing a model with itself shows nothing."""
    base = model.split(TIER_SEPARATOR)[0]
    tiers = [n for n in names if n != model and n.split(TIER_SEPARATOR)[0] == base]
    others = sorted(tiers, key=lambda n: not n.endswith("fp32")) or [n for n in names if n != model]
    return others[0] if others else model


def _selection(config: gpt2.GPTConfig, layer: Any, head: Any) -> tuple[int, int | None]:
    """The page's layer and head, made to fit `config` (another model may have fewer)."""
    layer = min(max(0, int(layer)), config.n_layer - 1) if layer is not None else config.n_layer - 1
    try:
        return layer, parse_head(head, config.n_head)
    except ValueError:
        return layer, None


class Page:
    """Handlers bound to one app's service (no module-level state)."""

    def __init__(self, service: Service, live_interval: float | None = LIVE_INTERVAL_S,
                 first: str | None = None):
        self.service = service
        self.names = service.models.names
        self.first = first or self.names[0]  # the model the page opens on
        self._stopping: set[str | None] = set()  # sessions whose Stop is waiting for its run
        self.live_interval = live_interval  # None: no token view while streaming

    # -- model status ----------------------------------------------------------------------
    def model_status(self, name: str, max_new: Any = None,
                     progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[tuple]:
        """Load (or download) a model, saying so, then fit the settings to it: max new tokens up
        to its limit, stop at end of text on for the built-in model, its layers and heads, its
        examples. A failure is a message, never an error."""
        keep = (gr.skip(),) * 5
        if name not in self.names:
            yield (f"⚠ Unknown model {validate.shown(name)}.", *keep)
            return
        if not self.service.models.loaded(name):
            yield (f"Loading **{name}**… (the first use of a preset downloads its weights)", *keep)
        try:
            progress(0, desc=f"Loading {name}")
            model = self.service.models.get(name)
        except Exception as error:  # noqa: BLE001 - shown in the page, the app keeps running
            if not isinstance(error, gpt2.WeightsError):
                log.exception("loading %s failed", name)
            yield ("⚠ " + load_error_message(name, error), *keep)
            return
        config, limit = model.config, _max_new_limit(model.config)
        too_many = max_new is not None and int(max_new) > limit  # else a value typed meanwhile stands
        slider = gr.Slider(maximum=limit, value=limit) if too_many else gr.Slider(maximum=limit)
        yield (describe(name, model), slider,
               gr.Checkbox(value=name == BUILTIN),
               gr.Dropdown(choices=_layer_choices(config), value=config.n_layer - 1),
               gr.Dropdown(choices=_head_choices(config), value=MEAN),
               _examples(BUILTIN_EXAMPLES if name == BUILTIN else EXAMPLES))

    def induction_example(self) -> tuple:
        """A repeated random sequence for the built-in model: prompt, model, temperature, length."""
        try:
            text = repeated_random_text(self.service.models.get(BUILTIN))
        except Exception as error:  # noqa: BLE001
            raise to_gr_error(error) from None
        return text, BUILTIN, 0.0, 12

    # -- generation --------------------------------------------------------------------------
    @friendly
    def generate(self, prompt: Any, model: Any, temperature: Any, top_k: Any, top_p: Any,
                 max_new_tokens: Any, seed: Any, stop_at_end: Any = False, layer: Any = None,
                 head: Any = MEAN) -> Iterator[tuple]:
        """(text so far, run id, progress line, token view). The run id comes before the first
        token, so Stop can find the partial run; the token view follows the newest token at
        most every `live_interval` seconds, read from the running capture."""
        s = validate.settings(prompt, model, temperature, top_k, top_p, max_new_tokens, seed,
                              stop_at_end, offered=self.names)
        last_paint = -float("inf")
        with closing(self.service.generate(s, notice=gr.Warning)) as steps:
            for step in steps:
                view = gr.skip()
                due = self.live_interval is not None and time.monotonic() - last_paint >= self.live_interval
                if due and step.n_generated and not step.stored:
                    view, last_paint = self._live_view(step, layer, head), time.monotonic()
                progress = (f"{step.n_generated} tokens written: preparing the views…" if step.stored else
                            f"Generating… {step.n_generated} / {s.max_new_tokens} tokens")
                yield step.text, step.run_id, progress, view

    def _live_view(self, step: Step, layer: Any, head: Any) -> dict:
        layer, head = _selection(step.capture.model.config, layer, head)
        position, row = self.service.live_row(step, layer, head)
        return token_view.live_payload(step.run_id, tokens.text(step.ids), step.n_prompt, position, row,
                                       layer, head_name(head))

    @staticmethod
    def clear_experiments() -> tuple:
        """A new run starts: the knock-out and comparison of the previous one go (they would
        read as this run's), back to the tabs' empty states."""
        hidden = gr.Slider(visible=False)
        return (KNOCKOUT_EMPTY, hidden, "", None, COMPARE_EMPTY, hidden, gr.Plot(None, visible=False), None)

    def show_run(self, run_id: str | None, size: Any, sort_by_role: Any = False) -> tuple:
        """Everything the panels show after a run: the strongest role's head (an induction or
        previous-token head when there is one), the last token selected, the whole text."""
        return self._first_view(self.service.run(run_id), run_id, size, sort_by_role)

    async def await_stop(self, run_id: str | None, request: gr.Request) -> None:
        """After Stop cancelled the run: wait until the stopped generation has stored it (at
        most STOP_WAIT_S), as a coroutine under its own unlimited concurrency id, so waiting
        holds no thread and no view slot. One wait per session: a second Stop (or a client
        sending the event over and over) while one waits returns at once."""
        session = request.session_hash if request is not None else None
        if session in self._stopping:
            return
        self._stopping.add(session)
        try:
            deadline = time.monotonic() + STOP_WAIT_S
            while self.service.runs.pending(run_id) and time.monotonic() < deadline:
                await asyncio.sleep(STOP_POLL_S)
        finally:
            self._stopping.discard(session)

    def stop(self, run_id: str | None, size: Any, sort_by_role: Any = False) -> tuple:
        """After `await_stop`: show what the stopped run made, like a finished run. The stopped
        generation stores it under the id the page got with its first token."""
        run = self.service.runs.get(run_id)
        if run is not None and run.ended == "stopped":
            return self._first_view(run, run_id, size, sort_by_role)
        rest = (gr.skip(),) * (len(VIEW_OUTPUT_NAMES) - 1)
        if run is not None or self.service.runs.pending(run_id):  # finished, or another Stop waits for it
            return (gr.skip(), *rest)
        return ("Stopped before the first token." if run_id else "Stopped.", *rest)

    def stopped_text(self, run_id: str | None) -> Any:
        """After Stop: the text box shows every token the stopped run kept, as the views do (the
        decode loop may have written a few more than the page had shown)."""
        run = self.service.runs.get(run_id)
        return gpt2.decode(run.ids[run.n_prompt:]) if run is not None and run.ended == "stopped" else gr.skip()

    def _first_view(self, run: Run, run_id: str | None, size: Any, sort_by_role: Any) -> tuple:
        layer, head = strongest_head(run.roles) or (run.config.n_layer - 1, None)
        size = min(int(size or DEFAULT_WINDOW), MAX_WINDOW)
        start = max(0, len(run.ids) - size)
        first = min(run.n_prompt, len(run.ids) - 1)
        return (self._stats(run),
                gr.Dropdown(choices=_layer_choices(run.config), value=layer),
                gr.Dropdown(choices=_head_choices(run.config), value=_head_value(head)),
                gr.Slider(minimum=0, maximum=max(0, len(run.ids) - 1), value=start),
                self._token_view(run, run_id, layer, head),
                *self._window(run, layer, head, start, size, bool(sort_by_role)),
                self._overview(run, layer, head),
                self._highlighted(run),
                gr.Slider(minimum=1, maximum=max(1, len(run.ids) - 1), value=max(1, first)),
                *self._candidates(run, max(1, first)),
                gr.Slider(minimum=0, maximum=max(1, len(run.ids) - 1), value=len(run.ids) - 1),
                *self._lens(run, len(run.ids) - 1, start, size))

    @staticmethod
    def _speed(run: Run) -> str:
        """Time to the first token apart from the speed after it: reading a 900-token prompt
        would otherwise pass for slow generation."""
        if run.first_token_s is None:
            rate = run.n_generated / run.seconds if run.seconds > 0 else 0.0
            return f"in {run.seconds:.2f} s · **{rate:.1f} tokens/s**"
        more, rest = run.n_generated - 1, max(0.0, run.seconds - run.first_token_s)
        after = f"then **{more / rest:.1f} tokens/s**" if more and rest > 0 else "no token after it"
        return f"· first token in **{run.first_token_s:.2f} s** · {after} · {run.seconds:.2f} s in all"

    @classmethod
    def _stats(cls, run: Run) -> str:
        head = (f"Stopped after **{run.n_generated}** tokens, after a **{run.n_prompt}**-token prompt"
                if run.ended == "stopped" else
                f"**{run.n_generated}** tokens generated after a **{run.n_prompt}**-token prompt")
        return (f"{head} {cls._speed(run)} · seed `{run.seed}` · {run.model_name}"
                + (" · ended at `<|endoftext|>`" if run.ended == "end of text" else "")
                + (f" · the prompt's first {run.dropped} tokens were dropped to fit the context"
                   if run.dropped else ""))

    # -- views of a run: token view, heatmap window, heads --------------------------------------
    def _token_view(self, run: Run, run_id: str | None, layer: int, head: int | None) -> dict:
        matrix = self.service.token_matrix(run, layer, head)
        return token_view.run_payload(run_id or "", tokens.text(run.ids), run.n_prompt, matrix, layer,
                                      head_name(head), selected=len(run.ids) - 1)

    def _window(self, run: Run, layer: int, head: int | None, start: int, size: int,
                sort_by_role: bool) -> tuple:
        """Caption, heatmap and all-heads grid (heads named by role), from one computation of
        the layer's window."""
        grid = self.service.all_heads(run, layer, start, size)
        span = f"tokens {grid.window.start}–{grid.window.stop - 1}"
        heatmap = figures.attention_heatmap(select_head(grid.weights, head), grid.labels, grid.window.start,
                                            f"Layer {layer} · {head_name(head)} · {span}",
                                            earlier=select_head(grid.earlier, head))
        roles = head_roles(run, layer)
        heads = figures.heads_grid(grid.weights, grid.labels, grid.window.start,
                                   f"Layer {layer} · {span}",
                                   head_labels=[figures.role_label(r) for r in roles],
                                   order=figures.by_role(roles, gpt2.ROLES) if sort_by_role else None)
        where = (f"tokens{grid.window.start}-{grid.window.stop - 1}",)
        return (grid.window.describe(),
                plot(heatmap, run.model_name, f"layer{layer}", head_name(head), *where),
                plot(heads, run.model_name, f"layer{layer}", "all-heads", *where))

    @staticmethod
    def _overview(run: Run, layer: int, head: int | None) -> Any:
        return plot(figures.head_overview(run.roles, (layer, head), "Every head by its strongest role",
                                          threshold=ROLE_THRESHOLD),
                    run.model_name, "head-roles", f"selected-layer{layer}", head_name(head))

    def update_view(self, run_id: str | None, layer: Any, head: Any, start: Any, size: Any,
                    sort_by_role: Any = False) -> tuple:
        """Layer or head changed: every view follows, from the stored capture (no generation)."""
        run = self.service.run(run_id)
        layer, head = int(layer), parse_head(head, run.config.n_head)
        return (self._token_view(run, run_id, layer, head),
                *self._window(run, layer, head, int(start), int(size), bool(sort_by_role)),
                self._overview(run, layer, head))

    def update_window(self, run_id: str | None, layer: Any, head: Any, start: Any, size: Any,
                      sort_by_role: Any = False) -> tuple:
        """The heatmap's window or the heads' order changed."""
        run = self.service.run(run_id)
        return self._window(run, int(layer), parse_head(head, run.config.n_head), int(start), int(size),
                            bool(sort_by_role))

    def pick_head(self, run_id: str | None, start: Any, size: Any, sort_by_role: Any,
                  evt: gr.EventData) -> tuple:
        """A cell of the head overview was clicked: select its layer and head everywhere."""
        run = self.service.run(run_id)
        cell = getattr(evt, "_data", None) or {}
        layer = validate.integer("layer", cell.get("layer"), 0, run.config.n_layer - 1)
        head = validate.integer("head", cell.get("head"), 0, run.config.n_head - 1)
        return (gr.Dropdown(value=layer), gr.Dropdown(value=str(head)),
                *self.update_view(run_id, layer, head, start, size, sort_by_role))

    # -- logit lens ------------------------------------------------------------------------------
    def _lens(self, run: Run, position: int, start: int, size: int) -> tuple[str, Any]:
        """The lens table of one position (layers × top-k) and the layers × positions grid of the
        window's top-1 tokens, from the run's kept block outputs (no forward pass)."""
        T = len(run.ids)
        position = min(max(0, int(position)), T - 1)
        one = self.service.lens(run, slice(position, position + 1), LENS_K)
        label = tokens.labels(run.ids[position:position + 1], plot_safe=False)[0]  # lens_table escapes
        following = tokens.labels(run.ids[position + 1:position + 2], plot_safe=False)[0] if position + 1 < T else None
        table = explain.lens_table(position, label, following, one.ids[:, 0, 0].tolist(), one.probs[:, 0, 0].tolist())
        win = window(T, int(start), int(size))
        grid = self.service.lens(run, slice(win.start, win.stop), 1)
        top = [tokens.labels(row) for row in grid.ids[:, 0, :, 0].tolist()]
        fig = figures.lens_grid(top, grid.probs[:, 0, :, 0].numpy(), win.start,
                                tokens.labels(run.ids[win.start:win.stop]),
                                f"Logit lens · top-1 next token after each layer · tokens {win.start}–{win.stop - 1}")
        return table, plot(fig, run.model_name, "logit-lens", f"tokens{win.start}-{win.stop - 1}")

    def update_lens(self, run_id: str | None, position: Any, start: Any, size: Any) -> tuple[str, Any]:
        return self._lens(self.service.run(run_id), int(position), int(start), int(size))

    # -- download -------------------------------------------------------------------------------------
    def download(self, run_id: str | None, layer: Any, head: Any, start: Any, size: Any, position: Any) -> str:
        """The shown run as JSON for the page to save: everything, whatever tabs were visited,
        with the selected layer and head, the heatmap's window and the lens position."""
        run = self.service.run(run_id)
        layer, head = _selection(run.config, layer, head)
        win = window(len(run.ids), int(start), int(size))
        position = min(max(0, int(position)), len(run.ids) - 1)
        shown = export.attention(self.service.token_matrix(run, layer, head), win.start, win.stop)
        lens = export.logit_lens(self.service.lens(run, slice(position, position + 1), LENS_K), position)
        summary = re.sub(r"[*`]", "", self._stats(run))
        return json.dumps(export.run_document(run, layer, head, shown, lens, summary), ensure_ascii=False)

    # -- head knock-out ---------------------------------------------------------------------------
    def _settings(self, run_id: str | None, prompt: Any, model: Any, temperature: Any, top_k: Any, top_p: Any,
                  max_new: Any, seed: Any, stop_at_end: Any) -> validate.Settings:
        """The form's settings; a blank seed takes the shown run's own, so its text comes back."""
        s = validate.settings(prompt, model, temperature, top_k, top_p, max_new, seed, stop_at_end,
                              offered=self.names)
        if s.seed is not None:
            return s
        record = self.service.runs.record(run_id) if run_id else None
        return validate.Settings(**{**s.__dict__, "seed": record.seed if record and record.seed is not None else 0})

    def knockout(self, run_id: str | None, heads: Any, prompt: Any, model: Any, temperature: Any, top_k: Any,
                 top_p: Any, max_new: Any, seed: Any, stop_at_end: Any = False) -> tuple:
        """Re-run the prompt with the same settings and seed, as is and with the heads knocked
        out (two rows of one decode loop); how much each baseline token's probability changed."""
        s = self._settings(run_id, prompt, model, temperature, top_k, top_p, max_new, seed, stop_at_end)
        config = self.service.models.get(s.model).config
        parsed = validate.heads(heads, config.n_layer, config.n_head)
        out = self.service.ablate(s, parsed)
        ids = out.prompt_ids + out.baseline
        base = self.service.chosen_probs(s.model, ids, None)[len(out.prompt_ids) - 1:]
        ablated = self.service.chosen_probs(s.model, ids, parsed)[len(out.prompt_ids) - 1:]
        named = validate.heads_text(parsed)
        state = {"model": s.model, "heads": named, "seed": out.seed, "baseline": out.baseline,
                 "ablated": out.ablated, "base": base.tolist(), "knocked": ablated.tolist()}
        first = out.first_difference
        at = 0 if first is None else min(first, max(0, len(out.baseline) - 1))
        texts = explain.side_by_side(tokens_text(out.prompt_ids), ("As is", f"Heads {named} knocked out"),
                                     out.baseline, out.ablated)
        return (texts, gr.Slider(minimum=0, maximum=max(1, len(out.baseline) - 1), value=at, visible=True),
                self._knockout_note(state, at), state)

    @staticmethod
    def _knockout_note(state: dict | None, position: Any) -> str:
        if not state or not state["baseline"]:
            return ""
        i = min(max(0, int(position)), len(state["baseline"]) - 1)
        before, after = state["base"][i], state["knocked"][i]
        token = tokens.labels(state["baseline"][i:i + 1])[0]
        loss = lambda ps: float(-np.log(np.clip(np.asarray(ps), 1e-12, 1)).mean())  # noqa: E731
        return (f"Generated token {i}, `{token}` (the text on the left): the model gave it "
                f"**{figures.percent(before)}** as is and **{figures.percent(after)}** with heads "
                f"{state['heads']} knocked out ({(after - before) * 100:+.1f} points). Over all "
                f"{len(state['base'])} generated tokens of that text the loss goes from "
                f"**{loss(state['base']):.2f}** to **{loss(state['knocked']):.2f}** nats/token "
                f"(seed `{state['seed']}`).")

    def knockout_position(self, state: dict | None, position: Any) -> str:
        return self._knockout_note(state, position)

    @staticmethod
    def add_head(heads: Any, layer: Any, head: Any) -> str:
        """The head selected in the Layer and Head menus (or the head overview), added to the list."""
        if head is None or str(head) == MEAN:
            raise gr.Error("Pick one head (not the mean) in the Head menu or the head overview first.",
                           print_exception=False)
        current = [h for h in re.split(r"[\s,;]+", str(heads or "")) if h]
        item = f"{int(layer)}.{int(head)}"
        return ", ".join(current + ([item] if item not in current else []))

    def induction_heads(self, run_id: str | None, model: Any) -> str:
        """The shown run's induction heads (score >= 0.3), else the built-in model's measured ones."""
        run = None
        try:
            run = self.service.run(run_id) if run_id else None
        except Exception:  # noqa: BLE001 - an expired run: fall back to the measured list
            run = None
        if run is not None and run.model_name == model:
            scores = run.roles.get("induction")
            if scores is not None:
                found = [f"{layer}.{h}" for layer, h in zip(*np.nonzero(np.nan_to_num(scores) >= ROLE_THRESHOLD))]
                if found:
                    return ", ".join(found)
        if model == BUILTIN:
            return BUILTIN_INDUCTION_HEADS
        raise gr.Error("No induction head found on this text: try the repeated-sequence example on the "
                       "built-in model, or type heads as layer.head.", print_exception=False)

    # -- compare -------------------------------------------------------------------------------------
    def compare(self, run_id: str | None, other: Any, prompt: Any, model: Any, temperature: Any, top_k: Any,
                top_p: Any, max_new: Any, seed: Any, stop_at_end: Any, layer: Any, head: Any) -> tuple:
        """The same prompt, settings and seed on a second model (or tier): both texts, the first
        difference marked, and the two attention rows of the selected token."""
        s = self._settings(run_id, prompt, model, temperature, top_k, top_p, max_new, seed, stop_at_end)
        other = validate.model_name(other, self.names)
        pair = []
        for name in (s.model, other):
            last = None
            with closing(self.service.generate(validate.Settings(**{**s.__dict__, "model": name}))) as steps:
                for last in steps:
                    pass
            pair.append(last.run_id)
        a, b = (self.service.run(i) for i in pair)
        n = len(a.ids) - a.n_prompt
        first = explain.first_difference(a.ids[a.n_prompt:], b.ids[b.n_prompt:])
        texts = explain.side_by_side(tokens_text(a.ids[:a.n_prompt]), (a.model_name, b.model_name),
                                     a.ids[a.n_prompt:], b.ids[b.n_prompt:])
        at = a.n_prompt + (first if first is not None and first < n else n - 1)
        at = min(at, len(a.ids) - 1, len(b.ids) - 1)
        state = {"runs": pair, "limit": min(len(a.ids), len(b.ids)) - 1}
        return (texts, gr.Slider(minimum=0, maximum=max(1, state["limit"]), value=at, visible=True),
                gr.Plot(self._compare_rows(state, at, layer, head), visible=True), state)

    def _compare_rows(self, state: dict | None, position: Any, layer: Any, head: Any) -> Any:
        if not state:
            return None
        runs = [self.service.run(i) for i in state["runs"]]
        position = min(max(0, int(position)), state["limit"])
        rows, names = [], []
        for run in runs:
            lay, hd = _selection(run.config, layer, head)
            rows.append(self.service.token_attention(run, lay, hd, position, "from").weights)
            own = tokens.labels(run.ids[position:position + 1])[0]  # each run's own token there
            names.append(f"{run.model_name} · L{lay} {head_name(hd)} · “{own}”")
        labels = tokens.labels(runs[0].ids[:position + 1])
        fig = figures.attention_rows_figure(rows, names, labels,
                                            f"What token {position} attends to in each run (keys: the first run's)")
        lay, hd = _selection(runs[0].config, layer, head)
        return plot(fig, "compare", *(r.model_name for r in runs), f"layer{lay}", head_name(hd), f"token{position}")

    def compare_position(self, state: dict | None, position: Any, layer: Any, head: Any) -> Any:
        return self._compare_rows(state, position, layer, head)

    # -- links ------------------------------------------------------------------------------------------
    def restore(self, request: gr.Request) -> tuple:
        """Settings from a shared link's query string (?prompt=…&model=…&seed=…); each value is
        checked like any input, and a bad one is left as the page has it (with a warning, the
        value quoted as text). The last output says whether the link may generate by itself:
        "run", "wait" (see LINK_AUTORUN_TOKENS), or "" without a link."""
        query = dict(request.query_params) if request is not None else {}
        keep = (gr.skip(),) * 7
        if "prompt" not in query:
            return (*keep, "")
        checks = {"prompt": validate.prompt_text, "model": lambda v: validate.model_name(v, self.names),
                  "temperature": lambda v: validate.settings("x", self.names[0], v, 0, 1, 1, None,
                                                             offered=self.names).temperature,
                  "top_k": lambda v: validate.integer("top_k", v, 0, 200),
                  "top_p": lambda v: validate.settings("x", self.names[0], 0, 0, v, 1, None,
                                                       offered=self.names).top_p,
                  "max_new_tokens": lambda v: validate.integer("max_new_tokens", v, 1, validate.MAX_NEW_TOKENS),
                  "seed": lambda v: "" if validate.seed_value(v) is None else str(validate.seed_value(v))}
        out = {}
        for name, check in checks.items():
            if name not in query:
                continue
            try:
                out[name] = check(query[name])
            except ValueError as error:  # a toast renders HTML: the link's text must stay text
                gr.Warning(html.escape(f"The link's {name} was not used: {error}"))
        restored = (out.get(name, gr.skip()) for name in checks)
        return (*restored, self._link_may_run(out.get("model", self.first), out.get("max_new_tokens", 60)))

    def _link_may_run(self, model: str, max_new: int) -> str:
        cheap = (model == self.first or self.service.models.loaded(model)) and max_new <= LINK_AUTORUN_TOKENS
        return "run" if cheap else "wait"

    def opening_status(self, name: str, max_new: Any, restored: Any,
                       progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[tuple]:
        """`model_status` when the page opens, except that a link never loads a model by itself."""
        if restored == "wait" and name != self.first and not self.service.models.loaded(name):
            yield (f"**{name}** is not loaded yet: it loads when you press Generate.", *(gr.skip(),) * 5)
            return
        yield from self.model_status(name, max_new, progress)

    @staticmethod
    def restore_flags(restored: Any, request: gr.Request) -> tuple:
        """After the model's own defaults: the link's "stop at end of text", and whether the
        page generates now (the hidden checkbox that page_script.REGENERATE_JS reads)."""
        value = dict(request.query_params).get("stop_at_end") if restored and request is not None else None
        flag = gr.skip() if value is None else gr.Checkbox(value=value.lower() in ("1", "true", "yes"))
        if restored == "wait":
            gr.Info(LINK_WAITS)
        return flag, restored == "run"

    # -- next-token view ---------------------------------------------------------------------------
    @staticmethod
    def _highlighted(run: Run) -> list[tuple[str, str | None]]:
        probs = [None] * run.n_prompt + [c.chosen_prob for c in run.candidates[run.n_prompt - 1:]]
        return figures.highlighted_tokens(tokens.text(run.ids), probs)

    @staticmethod
    def _candidates(run: Run, position: int) -> tuple[str, Any]:
        """A line saying where the model was and what followed, and its top candidates there."""
        position = min(max(1, int(position)), len(run.ids) - 1)
        c = run.candidates[position - 1]
        labels = tokens.labels(c.ids)
        actual = run.ids[position]
        chosen = c.ids.index(actual) if actual in c.ids else None
        context = "".join(tokens.labels(run.ids[max(0, position - 6):position]))
        note = (f"After “{context}” (position {position}) the model's top {len(labels)}; "
                f"“{tokens.label(gpt2.get_tokenizer().decode_single_token_bytes(actual))}” followed "
                f"({figures.percent(c.chosen_prob)}).")
        return note, figures.candidates_bar(labels, c.probs, chosen, f"Position {position}")

    def select_position(self, run_id: str | None, evt: gr.SelectData) -> tuple:
        run = self.service.run(run_id)
        position = max(1, int(evt.index if isinstance(evt.index, int) else evt.index[0]))
        return gr.Slider(value=position), *self._candidates(run, position)

    def show_position(self, run_id: str | None, position: Any) -> tuple:
        return self._candidates(self.service.run(run_id), int(position))


# What show_run and stop return, in order.
VIEW_OUTPUT_NAMES = ("stats", "layer", "head", "start", "token_view", "window_note", "heatmap", "grid",
                     "overview", "highlighted", "position", "candidates_note", "candidates", "lens_position",
                     "lens_table", "lens_grid")


def tokens_text(ids: list[int]) -> str:
    return gpt2.decode(ids)


def plot(fig: Any, *name: object) -> PlotData:
    """A Plotly figure for gr.Plot whose PNG export (the camera button) is named after what it
    shows: model, layer and head. Gradio's Plotly component passes the figure's `config` on."""
    spec = json.loads(fig.to_json())
    spec["config"] = {"toImageButtonOptions": {"format": "png", "filename": explain.file_name(*name)}}
    return PlotData(type="plotly", plot=json.dumps(spec))


def build(default_model: str = "gpt2", extra_models: list[str] | tuple[str, ...] = ()) -> gr.Blocks:
    """The whole app. `default_model` is a preset name or a local checkpoint path;
    `extra_models` are more local checkpoints offered beside it (by name, never by path)."""
    sources, tiers = with_tiers(offered_sources(default_model, extra_models))
    runs = RunStore()
    service = Service(ModelTable(sources, tiers, on_evict=runs.drop_model), runs)
    first, notice = start_model(default_model, service.models.names)
    page = Page(service, first=first)
    if notice:
        log.warning(notice.replace("**", ""))  # the page's notice, for the terminal
    log.info("serving %s (%s weights), loaded on first use", first, tiers[first])
    shown_examples = BUILTIN_EXAMPLES if first == BUILTIN else EXAMPLES  # the first one fills the prompt

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}", elem_id="title")
        gr.Markdown(notice or "", elem_id="notice", visible=notice is not None)
        status = gr.Markdown("Starting…", elem_id="model-status")
        run_id = gr.State(None)
        gr.HTML(html_template="", js_on_load=page_script.ENTER_APPLIES_JS + page_script.FIXED_FIGURES_JS,
                elem_id="page-keys")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300, elem_id="settings"):
                prompt = gr.Textbox(label="Prompt", lines=5, max_length=validate.MAX_PROMPT_CHARS,
                                    value=next(iter(shown_examples.values()))[0],
                                    elem_id="prompt")
                model = gr.Dropdown(choices=page.names, value=first, label="Model", elem_id="model")
                with gr.Row():  # above the sampling settings: in view on load on a laptop's screen
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="Temperature", info="0 = greedy")
                top_k = gr.Slider(0, 200, value=40, step=1, label="Top-k", info="0 = off")
                top_p = gr.Slider(0.05, 1, value=0.95, step=0.01, label="Top-p", info="1 = off")
                max_new = gr.Slider(1, validate.MAX_NEW_TOKENS, value=60, step=1, label="Max new tokens",
                                    elem_id="max-new-tokens")
                seed = gr.Textbox(label="Seed", placeholder="random", elem_id="seed",
                                  info="Blank = random; each run shows the seed it used.")
                stop_at_end = gr.Checkbox(value=first == BUILTIN, label="Stop at end of text (<|endoftext|>)",
                                          elem_id="stop-at-end")
                examples = gr.Examples(list(shown_examples.values()), inputs=[prompt, temperature, max_new],
                                       example_labels=list(shown_examples), label="Try these")
                induction_btn = gr.Button("Show an induction head: a repeated random sequence on the "
                                          "built-in model", size="sm", elem_id="induction-example")
            with gr.Column(scale=3, min_width=300, elem_id="views"):
                output = gr.Textbox(label="Generated text", lines=5, interactive=False,
                                    elem_id="output", buttons=["copy"])
                stats = gr.Markdown(elem_id="stats")
                with gr.Row(equal_height=False):
                    link_btn = gr.Button("Copy link", size="sm", elem_id="copy-link", min_width=100)
                    download_btn = gr.Button("Download JSON", size="sm", elem_id="download-json", min_width=100)
                    run_json = gr.Textbox(visible="hidden", elem_id="run-json")  # the download, briefly
                    share_link = gr.Textbox(show_label=False, interactive=False, elem_id="share-link", scale=3,
                                            lines=1, max_lines=1,
                                            placeholder="a link that reopens these settings and this seed",
                                            buttons=["copy"], min_width=200)
                with gr.Row():
                    layer = gr.Dropdown(choices=[("layer 0", 0)], value=0, label="Layer", elem_id="layer",
                                        min_width=120)
                    head = gr.Dropdown(choices=[("mean over heads", MEAN)], value=MEAN, label="Head",
                                       elem_id="head", min_width=120)
                with gr.Tabs(overflow_behavior="wrap"):
                    with gr.Tab("Tokens"):
                        token_html = gr.HTML(None, html_template=page_script.TOKEN_VIEW_HTML,
                                             js_on_load=page_script.TOKEN_VIEW_JS, elem_id="token-view")
                    with gr.Tab("Heatmap"):
                        with gr.Row():
                            start = gr.Slider(0, 1, value=0, step=1, label="Window start (token)",
                                              elem_id="window-start", min_width=160)
                            size = gr.Slider(4, MAX_WINDOW, value=DEFAULT_WINDOW, step=1,
                                             label="Window size (tokens)", elem_id="window-size",
                                             min_width=160)
                        shown = gr.Markdown("Generate some text to see where each token looked.",
                                            elem_id="window-note")
                        heatmap = gr.Plot(show_label=False, elem_id="attention-heatmap")
                    with gr.Tab("Heads"):
                        gr.Markdown("Every head of every layer, coloured by its strongest role over the "
                                    "whole text (`gpt2.head_scores`; grey below 0.3): previous-token heads "
                                    "look one token back, induction heads at what followed an earlier copy "
                                    "of the current token. Click a cell to select that head. Below: every "
                                    "head of the selected layer over the heatmap's window.")
                        with gr.HTML(html_template="@children", js_on_load=page_script.OVERVIEW_JS,
                                     elem_id="head-overview-box") as overview_box:
                            overview = gr.Plot(show_label=False, elem_id="head-overview")
                        sort_roles = gr.Checkbox(label="Sort heads by role", value=False,
                                                 elem_id="sort-roles")
                        grid = gr.Plot(show_label=False, elem_id="all-heads")
                    with gr.Tab("Next token"):
                        highlighted = gr.HighlightedText(
                            label="Generated tokens coloured by the probability the model gave them "
                                  "(click a token to see the alternatives)",
                            elem_id="token-probs", color_map=figures.BAND_COLORS, show_legend=True,
                            show_inline_category=False, combine_adjacent=False)
                        position = gr.Slider(1, 2, value=1, step=1, label="Position", elem_id="position")
                        candidates_note = gr.Markdown(elem_id="candidates-note")
                        candidates = gr.Plot(show_label=False, elem_id="candidates")
                    with gr.Tab("Logit lens"):
                        gr.Markdown("What the model would predict after each block: the residual stream "
                                    "after layer i through the final LayerNorm and the LM head (the last "
                                    "row is the model's own prediction), read from the run's capture.")
                        lens_position = gr.Slider(0, 1, value=0, step=1, label="Position (token)",
                                                  elem_id="lens-position")
                        lens_table = gr.HTML(elem_id="lens-table")
                        lens_grid = gr.Plot(show_label=False, elem_id="lens-grid")
                    with gr.Tab("Knock-out"):
                        gr.Markdown("Re-run the prompt with the same settings and seed with some heads' "
                                    "outputs set to zero, beside the run as is. The built-in model's "
                                    "induction heads (1.0, 1.2, 1.3, 2.1) carry its copying: knocked out, "
                                    "the second copy of a repeated sequence goes from 0.09 to 5.55 "
                                    "nats/token (benchmarks/KNOCKOUT.md).")
                        ko_heads = gr.Textbox(label="Heads to knock out (layer.head, comma-separated)",
                                              placeholder="1.0, 1.2", elem_id="ko-heads")
                        with gr.Row():
                            ko_add = gr.Button("Add the selected head", size="sm", elem_id="ko-add", min_width=120)
                            ko_induction = gr.Button("Knock out the induction heads", size="sm",
                                                     elem_id="ko-induction", min_width=120)
                            ko_run = gr.Button("Knock out", variant="primary", size="sm", elem_id="ko-run",
                                               min_width=100)
                        ko_texts = gr.HTML(KNOCKOUT_EMPTY, elem_id="ko-texts")
                        ko_position = gr.Slider(0, 1, value=0, step=1, label="Generated token",
                                                elem_id="ko-position", visible=False)
                        ko_note = gr.Markdown(elem_id="ko-note")
                        ko_state = gr.State(None)
                    with gr.Tab("Compare"):
                        gr.Markdown("The same prompt, settings and seed on a second model or tier: both "
                                    "texts with the first difference marked, and what the selected token "
                                    "attends to in each (the Layer and Head menus).")
                        with gr.Row():
                            compare_model = gr.Dropdown(choices=page.names,
                                                        value=compare_default(page.names, first),
                                                        label="Compare with", elem_id="compare-model",
                                                        min_width=160)
                            compare_btn = gr.Button("Compare", variant="primary", size="sm",
                                                    elem_id="compare-run", min_width=100)
                        compare_texts = gr.HTML(COMPARE_EMPTY, elem_id="compare-texts")
                        compare_position = gr.Slider(0, 1, value=0, step=1, label="Token",
                                                     elem_id="compare-position", visible=False)
                        compare_rows = gr.Plot(show_label=False, elem_id="compare-rows", visible=False)
                        compare_state = gr.State(None)

        view_outputs = [stats, layer, head, start, token_html, shown, heatmap, grid, overview, highlighted,
                        position, candidates_note, candidates, lens_position, lens_table, lens_grid]
        status_outputs = [status, max_new, stop_at_end, layer, head, examples.dataset]
        # Page visits only wait on a load of their own model (the table's per-name lock);
        # switching models goes through one queue slot so two big loads never overlap.
        # A shared link (?prompt=…) restores its settings first, then the model fits them, then
        # the page generates as the link's owner did.
        restored = gr.State("")
        autorun = gr.Checkbox(False, visible=False, elem_id="link-autorun")
        settings_inputs = [prompt, model, temperature, top_k, top_p, max_new, seed, stop_at_end]
        demo.load(page.restore, outputs=[prompt, model, temperature, top_k, top_p, max_new, seed, restored],
                  api_visibility="private", concurrency_id="view").then(
            page.opening_status, inputs=[model, max_new, restored], outputs=status_outputs,
            api_visibility="private", concurrency_id="view").then(
            page.restore_flags, inputs=restored, outputs=[stop_at_end, autorun], api_visibility="private",
            concurrency_id="view").then(None, inputs=autorun, js=page_script.REGENERATE_JS,
                                        api_visibility="private")
        model.input(page.model_status, inputs=[model, max_new], outputs=status_outputs,
                    api_visibility="private", concurrency_id="load", concurrency_limit=1)
        run = generate_btn.click(
            page.generate, inputs=[prompt, model, temperature, top_k, top_p, max_new, seed, stop_at_end,
                                   layer, head],
            outputs=[output, run_id, stats, token_html], api_name="ui_generate", api_visibility="private",
            concurrency_id="generate", concurrency_limit=GENERATE_CONCURRENCY, show_progress="minimal")
        view_args = dict(api_visibility="private", concurrency_id="view", concurrency_limit=VIEW_CONCURRENCY)
        # The views of the previous run are marked as such (page_script.STALE_JS) from the click
        # until this run's views are in, or the run failed or was stopped.
        generate_btn.click(None, js=page_script.STALE_JS, api_visibility="private")
        generate_btn.click(page.clear_experiments, outputs=[ko_texts, ko_position, ko_note, ko_state, compare_texts,
                                                            compare_position, compare_rows, compare_state],
                           **view_args)
        model.change(lambda name: gr.Dropdown(value=compare_default(page.names, name)), inputs=model,
                     outputs=compare_model, **view_args)
        run.success(friendly(page.show_run), inputs=[run_id, size, sort_roles], outputs=view_outputs,
                    **view_args).then(None, js=page_script.FRESH_JS, api_visibility="private")
        run.failure(None, js=page_script.FRESH_JS, api_visibility="private")
        # The cancel first: the browser runs a click's listeners in order, and page.await_stop
        # waits for the run that the cancelled generation stores.
        stop_btn.click(None, cancels=[run], api_visibility="private")
        stop_btn.click(page.await_stop, inputs=run_id, api_visibility="private", concurrency_id="stop",
                       concurrency_limit=None).then(friendly(page.stop), inputs=[run_id, size, sort_roles],
                                                    outputs=view_outputs, **view_args).then(
            page.stopped_text, inputs=run_id, outputs=output, **view_args).then(
            None, js=page_script.FRESH_JS, api_visibility="private")
        induction_btn.click(page.induction_example, outputs=[prompt, model, temperature, max_new],
                            api_visibility="private", concurrency_id="view").then(
            page.model_status, inputs=[model, max_new], outputs=status_outputs, api_visibility="private",
            concurrency_id="view")
        selection = [run_id, layer, head, start, size, sort_roles]
        for changed in (layer.input, head.input):
            changed(friendly(page.update_view), inputs=selection,
                    outputs=[token_html, shown, heatmap, grid, overview], trigger_mode="always_last",
                    **view_args)
        for changed in (start.release, size.release, sort_roles.input):
            changed(friendly(page.update_window), inputs=selection, outputs=[shown, heatmap, grid],
                    trigger_mode="always_last", **view_args)
        overview_box.pick(friendly(page.pick_head), inputs=[run_id, start, size, sort_roles],
                          outputs=[layer, head, token_html, shown, heatmap, grid, overview],
                          trigger_mode="always_last", **view_args)
        highlighted.select(friendly(page.select_position), inputs=run_id,
                           outputs=[position, candidates_note, candidates], **view_args)
        position.release(friendly(page.show_position), inputs=[run_id, position],
                         outputs=[candidates_note, candidates], **view_args)
        for changed in (start.release, size.release):
            changed(friendly(page.update_lens), inputs=[run_id, lens_position, start, size],
                    outputs=[lens_table, lens_grid], trigger_mode="always_last", **view_args)
        lens_position.release(friendly(page.update_lens), inputs=[run_id, lens_position, start, size],
                              outputs=[lens_table, lens_grid], trigger_mode="always_last", **view_args)
        ko_inputs = [run_id, ko_heads, *settings_inputs]
        ko_outputs = [ko_texts, ko_position, ko_note, ko_state]
        generate_args = dict(api_visibility="private", concurrency_id="generate",
                             concurrency_limit=GENERATE_CONCURRENCY)
        ko_run.click(friendly(page.knockout), inputs=ko_inputs, outputs=ko_outputs, **generate_args)
        ko_induction.click(friendly(page.induction_heads), inputs=[run_id, model], outputs=ko_heads,
                           **view_args).success(friendly(page.knockout), inputs=ko_inputs, outputs=ko_outputs,
                                                **generate_args)
        ko_add.click(page.add_head, inputs=[ko_heads, layer, head], outputs=ko_heads, api_visibility="private",
                     concurrency_id="view")
        ko_position.release(page.knockout_position, inputs=[ko_state, ko_position], outputs=ko_note,
                            api_visibility="private", concurrency_id="view")
        compare_btn.click(friendly(page.compare), inputs=[run_id, compare_model, *settings_inputs, layer, head],
                          outputs=[compare_texts, compare_position, compare_rows, compare_state], **generate_args)
        for changed in (compare_position.release, layer.input, head.input):
            changed(friendly(page.compare_position), inputs=[compare_state, compare_position, layer, head],
                    outputs=compare_rows, trigger_mode="always_last", **view_args)
        link_btn.click(None, inputs=settings_inputs, outputs=share_link, js=page_script.COPY_LINK_JS,
                       api_visibility="private")
        download_btn.click(friendly(page.download), inputs=[run_id, layer, head, start, size, lens_position],
                           outputs=run_json, **view_args).success(
            None, inputs=run_json, js=page_script.DOWNLOAD_JS, api_visibility="private").then(
            lambda: "", outputs=run_json, **view_args)  # the session keeps no copy
        api.register(service, GENERATE_CONCURRENCY)
    return demo
