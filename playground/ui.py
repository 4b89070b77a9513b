"""The Gradio Blocks page and its wiring; the work itself happens in `service`.

The page's own events carry only a random run id in `gr.State` and stay private; every
action also has a stateless, documented endpoint (see `api`). Expected failures (bad
input, missing weights, an expired run) become `gr.Error` messages; anything else is
logged on the server and reported without a traceback.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import gradio as gr

import gpt2

from . import api, figures, tokens, validate
from .errors import friendly, to_gr_error
from .inspection import DEFAULT_WINDOW, MAX_WINDOW, Run, RunStore, head_roles, repeated_random_text
from .models import (BUILTIN, ModelTable, describe, load_error_message, offered_sources, start_model,
                     with_tiers)
from .service import MEAN, Service, parse_head, select_head

log = logging.getLogger(__name__)

TITLE = "GPT-2 Playground"
INTRO = ("Write a prompt and watch GPT-2 continue it token by token, then look inside: "
         "which earlier tokens each token attended to, and what else the model considered.")
SPAM_PROMPT = ("Is the following text 'spam'? Answer with 'yes' or 'no':'You are a winner you have "
               "been specially selected to receive $1000 cash or a $2000 award.'")
EXAMPLES = [  # prompt, temperature, max new tokens
    ["In a shocking finding, scientists discovered a herd of unicorns living in a remote valley.", 0.8, 80],
    ["The three most important things I learned in my first year of programming were", 0.7, 60],
    [SPAM_PROMPT, 0.0, 5],
    ["Q: What is the capital of France?\nA:", 0.0, 10],
    ["Once upon a time, in a small village by the sea,", 0.9, 80],
]
BUILTIN_PROMPT = "Once upon a time, there was a girl named Mira. Mira had a red kite."  # its own world
# Generation and API events admitted at once; the model itself runs at most
# service.COMPUTE_SLOTS of them at a time, after each loaded its model.
GENERATE_CONCURRENCY = 8
VIEW_CONCURRENCY = 8
CSS = """
#title h1 { margin-bottom: 0; }
#stats { min-height: 1.5em; }
"""


def _layer_choices(run: Run) -> list[tuple[str, int]]:
    return [(f"layer {i}", i) for i in range(run.config.n_layer)]


def _head_choices(run: Run) -> list[tuple[str, str]]:
    return [("mean over heads", MEAN)] + [(f"head {h}", str(h)) for h in range(run.config.n_head)]


class Page:
    """Handlers bound to one app's service (no module-level state)."""

    def __init__(self, service: Service):
        self.service = service
        self.names = service.models.names

    # -- model status ----------------------------------------------------------------------
    def model_status(self, name: str, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[str]:
        """Load (or download) a model, saying so; a failure is a message, never an error."""
        if name not in self.names:
            yield f"⚠ Unknown model {validate.shown(name)}."
            return
        if not self.service.models.loaded(name):
            yield f"Loading **{name}**… (the first use of a preset downloads its weights)"
        try:
            progress(0, desc=f"Loading {name}")
            model = self.service.models.get(name)
        except Exception as error:  # noqa: BLE001 - shown in the page, the app keeps running
            if not isinstance(error, gpt2.WeightsError):
                log.exception("loading %s failed", name)
            yield "⚠ " + load_error_message(name, error)
            return
        yield describe(name, model)

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
                 max_new_tokens: Any, seed: Any) -> Iterator[tuple[str, str | None, str]]:
        """(text so far, run id once stored, progress line)."""
        s = validate.settings(prompt, model, temperature, top_k, top_p, max_new_tokens, seed,
                              offered=self.names)
        with closing(self.service.generate(s, notice=gr.Warning)) as steps:
            for count, (text, run_id) in enumerate(steps, start=1):
                yield text, run_id, f"Generating… {min(count, s.max_new_tokens)} / {s.max_new_tokens} tokens"

    def show_run(self, run_id: str | None, layer: Any, head: Any, size: Any, sort_by_role: Any = False) -> tuple:
        """Everything the right-hand panels show after a run."""
        run = self.service.run(run_id)
        last_layer = run.config.n_layer - 1
        layer = min(int(layer), last_layer) if layer is not None else last_layer  # keep the user's choice
        head = head if head is not None and (head == MEAN or int(head) < run.config.n_head) else MEAN
        size = int(size or DEFAULT_WINDOW)
        start = max(0, len(run.ids) - size)
        first = min(run.n_prompt, len(run.ids) - 1)
        return (self._stats(run),
                gr.Dropdown(choices=_layer_choices(run), value=layer),
                gr.Dropdown(choices=_head_choices(run), value=head),
                gr.Slider(minimum=0, maximum=max(0, len(run.ids) - 1), value=start),
                *self._attention(run, layer, head, start, size, bool(sort_by_role)),
                self._highlighted(run),
                gr.Slider(minimum=1, maximum=max(1, len(run.ids) - 1), value=max(1, first)),
                self._candidates(run, max(1, first)))

    @staticmethod
    def _stats(run: Run) -> str:
        rate = run.n_generated / run.seconds if run.seconds > 0 else 0.0
        return (f"**{run.n_generated}** tokens generated after a **{run.n_prompt}**-token prompt in "
                f"{run.seconds:.2f} s · **{rate:.1f} tokens/s** · seed `{run.seed}` · {run.model_name}"
                + (f" · the prompt's first {run.dropped} tokens were dropped to fit the context"
                   if run.dropped else ""))

    # -- attention -----------------------------------------------------------------------------
    def _attention(self, run: Run, layer: int, head: Any, start: int, size: int,
                   sort_by_role: bool = False) -> tuple:
        """Caption, heatmap and all-heads grid (heads named by role), from one computation of
        the layer's window and one of its roles over the whole text."""
        head_index = parse_head(head, run.config.n_head)
        grid = self.service.all_heads(run, int(layer), start, size)
        span = f"tokens {grid.window.start}–{grid.window.stop - 1}"
        head_name = "mean over heads" if head_index is None else f"head {head_index}"
        heatmap = figures.attention_heatmap(select_head(grid.weights, head_index), grid.labels,
                                            grid.window.start, f"Layer {grid.layer} · {head_name} · {span}")
        roles = head_roles(run, grid.layer)
        heads = figures.heads_grid(grid.weights, grid.labels, grid.window.start,
                                   f"All {run.config.n_head} heads of layer {grid.layer} · {span}",
                                   head_labels=[figures.role_label(r) for r in roles],
                                   order=figures.by_role(roles, gpt2.ROLES) if sort_by_role else None)
        return grid.window.describe(), heatmap, heads

    def update_attention(self, run_id: str | None, layer: Any, head: Any, start: Any, size: Any,
                         sort_by_role: Any = False) -> tuple:
        """Layer, head, window or head order changed: recompute from the stored capture, no
        generation."""
        run = self.service.run(run_id)
        return self._attention(run, int(layer), head, int(start), int(size), bool(sort_by_role))

    # -- next-token view ---------------------------------------------------------------------------
    @staticmethod
    def _highlighted(run: Run) -> list[tuple[str, str | None]]:
        probs = [None] * run.n_prompt + [c.chosen_prob for c in run.candidates[run.n_prompt - 1:]]
        return figures.highlighted_tokens(tokens.text(run.ids), probs)

    @staticmethod
    def _candidates(run: Run, position: int) -> Any:
        position = min(max(1, int(position)), len(run.ids) - 1)
        c = run.candidates[position - 1]
        labels = tokens.labels(c.ids)
        actual = run.ids[position]
        chosen = c.ids.index(actual) if actual in c.ids else None
        context = "".join(tokens.labels(run.ids[max(0, position - 6):position]))
        title = (f"After “{context}” (position {position}): the model's top {len(labels)}; "
                 f"“{tokens.label(gpt2.get_tokenizer().decode_single_token_bytes(actual))}” "
                 f"followed ({figures.percent(c.chosen_prob)})")
        return figures.candidates_bar(labels, c.probs, chosen, title)

    def select_position(self, run_id: str | None, evt: gr.SelectData) -> tuple:
        run = self.service.run(run_id)
        position = max(1, int(evt.index if isinstance(evt.index, int) else evt.index[0]))
        return gr.Slider(value=position), self._candidates(run, position)

    def show_position(self, run_id: str | None, position: Any) -> Any:
        return self._candidates(self.service.run(run_id), int(position))


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

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}", elem_id="title")
        gr.Markdown(notice or "", elem_id="notice", visible=notice is not None)
        status = gr.Markdown("Starting…", elem_id="model-status")
        run_id = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                prompt = gr.Textbox(label="Prompt", lines=5, max_length=validate.MAX_PROMPT_CHARS,
                                    value=BUILTIN_PROMPT if first == BUILTIN else EXAMPLES[0][0],
                                    elem_id="prompt")
                model = gr.Dropdown(choices=page.names, value=first, label="Model", elem_id="model")
                temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="Temperature", info="0 = greedy")
                top_k = gr.Slider(0, 200, value=40, step=1, label="Top-k", info="0 = off")
                top_p = gr.Slider(0.05, 1, value=0.95, step=0.01, label="Top-p", info="1 = off")
                max_new = gr.Slider(1, validate.MAX_NEW_TOKENS, value=60, step=1, label="Max new tokens",
                                    elem_id="max-new-tokens")
                seed = gr.Textbox(label="Seed", placeholder="random", elem_id="seed",
                                  info="Blank = random; each run shows the seed it used.")
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                gr.Examples(EXAMPLES, inputs=[prompt, temperature, max_new], label="Try these")
                induction_btn = gr.Button("Show an induction head: a repeated random sequence on the "
                                          "built-in model", size="sm", elem_id="induction-example")
            with gr.Column(scale=3, min_width=400):
                output = gr.Textbox(label="Generated text", lines=7, interactive=False,
                                    elem_id="output", buttons=["copy"])
                stats = gr.Markdown(elem_id="stats")
                with gr.Tabs():
                    with gr.Tab("Attention map"):
                        with gr.Row():
                            layer = gr.Dropdown(choices=[("layer 0", 0)], value=0, label="Layer",
                                                elem_id="layer")
                            head = gr.Dropdown(choices=[("mean over heads", MEAN)], value=MEAN,
                                               label="Head", elem_id="head")
                        with gr.Row():
                            start = gr.Slider(0, 1, value=0, step=1, label="Window start (token)",
                                              elem_id="window-start")
                            size = gr.Slider(4, MAX_WINDOW, value=DEFAULT_WINDOW, step=1,
                                             label="Window size (tokens)", elem_id="window-size")
                        shown = gr.Markdown("Generate some text to see where each token looked.",
                                            elem_id="window-note")
                        heatmap = gr.Plot(label="Attention", elem_id="attention-heatmap")
                    with gr.Tab("All heads"):
                        gr.Markdown("Every head of the selected layer over the same window, named by "
                                    "its strongest role over the whole text (`gpt2.head_scores`, shown "
                                    "when ≥ 0.3): previous-token heads draw a diagonal, first-token heads "
                                    "a stripe, induction heads an off-diagonal once text repeats.")
                        sort_roles = gr.Checkbox(label="Sort heads by role", value=False, elem_id="sort-roles")
                        grid = gr.Plot(label="All heads", elem_id="all-heads")
                    with gr.Tab("Next-token candidates"):
                        highlighted = gr.HighlightedText(
                            label="Generated tokens coloured by the probability the model gave them "
                                  "(click a token to see the alternatives)",
                            elem_id="token-probs", color_map=figures.BAND_COLORS, show_legend=True,
                            show_inline_category=False, combine_adjacent=False)
                        position = gr.Slider(1, 2, value=1, step=1, label="Position", elem_id="position")
                        candidates = gr.Plot(label="Top candidates", elem_id="candidates")

        attention_outputs = [shown, heatmap, grid]
        # Page visits only wait on a load of their own model (the table's per-name lock);
        # switching models goes through one queue slot so two big loads never overlap.
        demo.load(page.model_status, inputs=model, outputs=status, api_visibility="private",
                  concurrency_id="view")
        model.input(page.model_status, inputs=model, outputs=status, api_visibility="private",
                    concurrency_id="load", concurrency_limit=1)
        run = generate_btn.click(
            page.generate, inputs=[prompt, model, temperature, top_k, top_p, max_new, seed],
            outputs=[output, run_id, stats], api_name="ui_generate", api_visibility="private",
            concurrency_id="generate",
            concurrency_limit=GENERATE_CONCURRENCY, show_progress="minimal")
        run.success(friendly(page.show_run), inputs=[run_id, layer, head, size, sort_roles],
                    outputs=[stats, layer, head, start, *attention_outputs, highlighted, position,
                             candidates],
                    api_visibility="private", concurrency_id="view", concurrency_limit=VIEW_CONCURRENCY)
        induction_btn.click(page.induction_example, outputs=[prompt, model, temperature, max_new],
                            api_visibility="private", concurrency_id="view").then(
            page.model_status, inputs=model, outputs=status, api_visibility="private",
            concurrency_id="view")
        stop_btn.click(lambda: "Stopped.", outputs=stats, cancels=[run], api_visibility="private")
        view_args = dict(fn=friendly(page.update_attention), inputs=[run_id, layer, head, start, size, sort_roles],
                         outputs=attention_outputs, api_visibility="private", concurrency_id="view",
                         concurrency_limit=VIEW_CONCURRENCY, trigger_mode="always_last")
        layer.input(**view_args)
        head.input(**view_args)
        start.release(**view_args)
        size.release(**view_args)
        sort_roles.input(**view_args)
        highlighted.select(friendly(page.select_position), inputs=run_id, outputs=[position, candidates],
                           api_visibility="private", concurrency_id="view")
        position.release(friendly(page.show_position), inputs=[run_id, position], outputs=candidates,
                         api_visibility="private", concurrency_id="view")
        api.register(service, GENERATE_CONCURRENCY)
    return demo
