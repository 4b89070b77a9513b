"""The Gradio Blocks page and its wiring; the work itself happens in `service`.

The page's own events carry only a random run id in `gr.State` and stay private; every
action also has a stateless, documented endpoint (see `api`). Expected failures (bad
input, missing weights, an expired run) become `gr.Error` messages; anything else is
logged on the server and reported without a traceback. Data flows one way: service ->
figures and the token view's payload -> components.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import gradio as gr

import gpt2

from . import api, figures, page_script, token_view, tokens, validate
from .errors import friendly, to_gr_error
from .inspection import (DEFAULT_WINDOW, MAX_WINDOW, ROLE_THRESHOLD, Run, RunStore, head_roles,
                         repeated_random_text, strongest_head)
from .models import (BUILTIN, ModelTable, describe, load_error_message, offered_sources, start_model,
                     with_tiers)
from .service import MEAN, Service, Step, head_name, parse_head, select_head

log = logging.getLogger(__name__)

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
# Generation and API events admitted at once: as many as a model's decode loop batches
# (the rows of one step); more wait in Gradio's queue, whose size stays capped.
GENERATE_CONCURRENCY = gpt2.batching.MAX_BATCH
VIEW_CONCURRENCY = 8
LIVE_INTERVAL_S = 0.25  # at most 4 token-view updates a second while a run streams
STOP_WAIT_S = 30.0  # how long Stop waits for the stopped generation to store its run
CSS = """
#title h1 { margin-bottom: 0; }
#stats { min-height: 1.5em; }
#page-keys { display: none !important; }
#token-view .tv-bar { display: flex; flex-wrap: wrap; gap: 6px 12px; justify-content: space-between;
  align-items: center; margin-bottom: 6px; }
#token-view .tv-caption { font-size: 0.9em; }
#token-view .tv-dir { display: inline-flex; gap: 4px; }
#token-view .tv-dir button { border: 1px solid var(--border-color-primary); padding: 2px 10px;
  border-radius: 6px; font-size: 0.85em; cursor: pointer; background: transparent !important;
  color: var(--body-text-color) !important; }
#token-view .tv-dir button.on { background: var(--color-accent-soft) !important;
  border-color: var(--color-accent); }
#token-view.live .tv-dir { opacity: 0.5; }
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
#attention-heatmap, #all-heads, #head-overview { overflow-x: auto !important; }
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


def _selection(config: gpt2.GPTConfig, layer: Any, head: Any) -> tuple[int, int | None]:
    """The page's layer and head, made to fit `config` (another model may have fewer)."""
    layer = min(max(0, int(layer)), config.n_layer - 1) if layer is not None else config.n_layer - 1
    try:
        return layer, parse_head(head, config.n_head)
    except ValueError:
        return layer, None


class Page:
    """Handlers bound to one app's service (no module-level state)."""

    def __init__(self, service: Service, live_interval: float | None = LIVE_INTERVAL_S):
        self.service = service
        self.names = service.models.names
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
                yield (step.text, step.run_id,
                       f"Generating… {step.n_generated} / {s.max_new_tokens} tokens", view)

    def _live_view(self, step: Step, layer: Any, head: Any) -> dict:
        layer, head = _selection(step.capture.model.config, layer, head)
        position, row = self.service.live_row(step, layer, head)
        return token_view.live_payload(step.run_id, tokens.text(step.ids), step.n_prompt, position, row,
                                       layer, head_name(head))

    def show_run(self, run_id: str | None, size: Any, sort_by_role: Any = False) -> tuple:
        """Everything the panels show after a run: the strongest role's head (an induction or
        previous-token head when there is one), the last token selected, the whole text."""
        return self._first_view(self.service.run(run_id), run_id, size, sort_by_role)

    def stop(self, run_id: str | None, size: Any, sort_by_role: Any = False) -> tuple:
        """After Stop cancelled the run: show what it made, like a finished run. The stopped
        generation stores it under the id the page got with its first token."""
        run = self.service.runs.get(run_id, wait=STOP_WAIT_S)
        if run is not None and run.ended == "stopped":
            return self._first_view(run, run_id, size, sort_by_role)
        rest = (gr.skip(),) * (len(VIEW_OUTPUT_NAMES) - 1)
        if run is not None:  # it had finished: its own view stands
            return (gr.skip(), *rest)
        return ("Stopped before the first token." if run_id else "Stopped.", *rest)

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
                *self._candidates(run, max(1, first)))

    @staticmethod
    def _stats(run: Run) -> str:
        rate = run.n_generated / run.seconds if run.seconds > 0 else 0.0
        head = (f"Stopped after **{run.n_generated}** tokens, after a **{run.n_prompt}**-token prompt"
                if run.ended == "stopped" else
                f"**{run.n_generated}** tokens generated after a **{run.n_prompt}**-token prompt")
        return (f"{head} in {run.seconds:.2f} s · **{rate:.1f} tokens/s** · seed `{run.seed}` · "
                f"{run.model_name}"
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
        return grid.window.describe(), heatmap, heads

    @staticmethod
    def _overview(run: Run, layer: int, head: int | None) -> Any:
        return figures.head_overview(run.roles, (layer, head), "Every head by its strongest role",
                                     threshold=ROLE_THRESHOLD)

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
                     "overview", "highlighted", "position", "candidates_note", "candidates")


def build(default_model: str = "gpt2", extra_models: list[str] | tuple[str, ...] = ()) -> gr.Blocks:
    """The whole app. `default_model` is a preset name or a local checkpoint path;
    `extra_models` are more local checkpoints offered beside it (by name, never by path)."""
    sources, tiers = with_tiers(offered_sources(default_model, extra_models))
    runs = RunStore()
    service = Service(ModelTable(sources, tiers, on_evict=runs.drop_model), runs)
    page = Page(service)
    first, notice = start_model(default_model, page.names)
    if notice:
        log.warning(notice.replace("**", ""))  # the page's notice, for the terminal
    log.info("serving %s (%s weights), loaded on first use", first, tiers[first])
    shown_examples = BUILTIN_EXAMPLES if first == BUILTIN else EXAMPLES  # the first one fills the prompt

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}", elem_id="title")
        gr.Markdown(notice or "", elem_id="notice", visible=notice is not None)
        status = gr.Markdown("Starting…", elem_id="model-status")
        run_id = gr.State(None)
        gr.HTML(html_template="", js_on_load=page_script.ENTER_APPLIES_JS, elem_id="page-keys")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300, elem_id="settings"):
                prompt = gr.Textbox(label="Prompt", lines=5, max_length=validate.MAX_PROMPT_CHARS,
                                    value=next(iter(shown_examples.values()))[0],
                                    elem_id="prompt")
                model = gr.Dropdown(choices=page.names, value=first, label="Model", elem_id="model")
                temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="Temperature", info="0 = greedy")
                top_k = gr.Slider(0, 200, value=40, step=1, label="Top-k", info="0 = off")
                top_p = gr.Slider(0.05, 1, value=0.95, step=0.01, label="Top-p", info="1 = off")
                max_new = gr.Slider(1, validate.MAX_NEW_TOKENS, value=60, step=1, label="Max new tokens",
                                    elem_id="max-new-tokens")
                seed = gr.Textbox(label="Seed", placeholder="random", elem_id="seed",
                                  info="Blank = random; each run shows the seed it used.")
                stop_at_end = gr.Checkbox(value=first == BUILTIN, label="Stop at end of text (<|endoftext|>)",
                                          elem_id="stop-at-end")
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                examples = gr.Examples(list(shown_examples.values()), inputs=[prompt, temperature, max_new],
                                       example_labels=list(shown_examples), label="Try these")
                induction_btn = gr.Button("Show an induction head: a repeated random sequence on the "
                                          "built-in model", size="sm", elem_id="induction-example")
            with gr.Column(scale=3, min_width=300, elem_id="views"):
                output = gr.Textbox(label="Generated text", lines=5, interactive=False,
                                    elem_id="output", buttons=["copy"])
                stats = gr.Markdown(elem_id="stats")
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

        view_outputs = [stats, layer, head, start, token_html, shown, heatmap, grid, overview, highlighted,
                        position, candidates_note, candidates]
        status_outputs = [status, max_new, stop_at_end, layer, head, examples.dataset]
        # Page visits only wait on a load of their own model (the table's per-name lock);
        # switching models goes through one queue slot so two big loads never overlap.
        demo.load(page.model_status, inputs=[model, max_new], outputs=status_outputs,
                  api_visibility="private", concurrency_id="view")
        model.input(page.model_status, inputs=[model, max_new], outputs=status_outputs,
                    api_visibility="private", concurrency_id="load", concurrency_limit=1)
        run = generate_btn.click(
            page.generate, inputs=[prompt, model, temperature, top_k, top_p, max_new, seed, stop_at_end,
                                   layer, head],
            outputs=[output, run_id, stats, token_html], api_name="ui_generate", api_visibility="private",
            concurrency_id="generate", concurrency_limit=GENERATE_CONCURRENCY, show_progress="minimal")
        view_args = dict(api_visibility="private", concurrency_id="view", concurrency_limit=VIEW_CONCURRENCY)
        run.success(friendly(page.show_run), inputs=[run_id, size, sort_roles], outputs=view_outputs,
                    **view_args)
        # The cancel first: the browser runs a click's listeners in order, and page.stop waits
        # for the run that the cancelled generation stores.
        stop_btn.click(None, cancels=[run], api_visibility="private")
        stop_btn.click(friendly(page.stop), inputs=[run_id, size, sort_roles], outputs=view_outputs,
                       **view_args)
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
        api.register(service, GENERATE_CONCURRENCY)
    return demo
