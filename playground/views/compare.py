"""The Compare tab: the same prompt, settings and seed on a second model or tier, both texts
with the first difference marked, and what a chosen token attends to in each."""
from __future__ import annotations

from contextlib import closing
from typing import Any

import gradio as gr

from .. import explain, figures, tokens, validate
from ..errors import friendly
from ..models import TIER_SEPARATOR
from ..service import Service, head_name
from .common import Queues, plot, selection, settings_or_run_seed, tokens_text

EMPTY = ('<p class="empty-state">Pick a second model or tier and press <b>Compare</b>: the prompt in the form '
         'runs on both with the same settings and seed, and the two texts appear here with the first '
         'difference marked, then what a chosen token attends to in each.</p>')


def compare_default(names: list[str], model: str) -> str:
    """What Compare offers against `model`: another tier of the same model (its exact fp32
    first), else another model; comparing a model with itself shows nothing."""
    base = model.split(TIER_SEPARATOR)[0]
    tiers = [n for n in names if n != model and n.split(TIER_SEPARATOR)[0] == base]
    others = sorted(tiers, key=lambda n: not n.endswith("fp32")) or [n for n in names if n != model]
    return others[0] if others else model


class CompareTab:
    def __init__(self, service: Service):
        self.service = service

    def layout(self, first: str) -> None:
        names = self.service.models.names
        gr.Markdown("The same prompt, settings and seed on a second model or tier: both texts with the first "
                    "difference marked, and what the selected token attends to in each (the Layer and Head "
                    "menus).")
        with gr.Row():
            self.model = gr.Dropdown(choices=names, value=compare_default(names, first), label="Compare with",
                                     elem_id="compare-model", min_width=160,
                                     allow_custom_value=self.service.models.allow_hub)  # any Hub repo, if allowed
            self.run = gr.Button("Compare", variant="primary", size="sm", elem_id="compare-run", min_width=100)
        self.texts = gr.HTML(EMPTY, elem_id="compare-texts")
        self.position = gr.Slider(0, 1, value=0, step=1, label="Token", elem_id="compare-position",
                                  visible=False)
        self.rows = gr.Plot(show_label=False, elem_id="compare-rows", visible=False)
        self.state = gr.State(None)

    @property
    def outputs(self) -> list:
        return [self.texts, self.position, self.rows, self.state]

    @staticmethod
    def cleared() -> tuple:
        """A new run starts: the previous comparison would read as this run's."""
        return EMPTY, gr.Slider(visible=False), gr.Plot(None, visible=False), None

    def compare(self, run_id: str | None, other: Any, prompt: Any, model: Any, temperature: Any, top_k: Any,
                top_p: Any, max_new: Any, seed: Any, stop_at_end: Any, layer: Any, head: Any) -> tuple:
        """The same prompt, settings and seed on a second model (or tier): both texts, the first
        difference marked, and the two attention rows of the selected token."""
        names = self.service.models.names
        s = settings_or_run_seed(self.service, names, run_id, prompt, model, temperature, top_k, top_p, max_new,
                                 seed, stop_at_end)
        other = validate.model_name(other, names)
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
        texts = explain.side_by_side(tokens_text(a.ids[:a.n_prompt], a.tokenizer), (a.model_name, b.model_name),
                                     a.ids[a.n_prompt:], b.ids[b.n_prompt:], (a.tokenizer, b.tokenizer))
        at = a.n_prompt + (first if first is not None and first < n else n - 1)
        at = min(at, len(a.ids) - 1, len(b.ids) - 1)
        state = {"runs": pair, "limit": min(len(a.ids), len(b.ids)) - 1}
        return (texts, gr.Slider(minimum=0, maximum=max(1, state["limit"]), value=at, visible=True),
                gr.Plot(self._rows(state, at, layer, head), visible=True), state)

    def _rows(self, state: dict | None, position: Any, layer: Any, head: Any) -> Any:
        if not state:
            return None
        runs = [self.service.run(i) for i in state["runs"]]
        position = min(max(0, int(position)), state["limit"])
        rows, names = [], []
        for run in runs:
            lay, hd = selection(run.config, layer, head)
            rows.append(self.service.token_attention(run, lay, hd, position, "from").weights)
            own = tokens.labels(run.ids[position:position + 1], tokenizer=run.tokenizer)[0]  # each run's own token
            names.append(f"{run.model_name} · L{lay} {head_name(hd)} · “{own}”")
        labels = tokens.labels(runs[0].ids[:position + 1], tokenizer=runs[0].tokenizer)
        fig = figures.attention_rows_figure(rows, names, labels,
                                            f"What token {position} attends to in each run (keys: the first run's)")
        lay, hd = selection(runs[0].config, layer, head)
        return plot(fig, "compare", *(r.model_name for r in runs), f"layer{lay}", head_name(hd), f"token{position}")

    def compare_position(self, state: dict | None, position: Any, layer: Any, head: Any) -> Any:
        return self._rows(state, position, layer, head)

    def wire(self, run_id: gr.State, settings: list, model: gr.Dropdown, layer: gr.Dropdown, head: gr.Dropdown,
             queues: Queues) -> None:
        self.run.click(friendly(self.compare), inputs=[run_id, self.model, *settings, layer, head],
                       outputs=self.outputs, **queues.generate)
        for changed in (self.position.release, layer.input, head.input):
            changed(friendly(self.compare_position), inputs=[self.state, self.position, layer, head],
                    outputs=self.rows, trigger_mode="always_last", **queues.view)
        model.change(lambda name: gr.Dropdown(value=compare_default(self.service.models.names, name)),
                     inputs=model, outputs=self.model, **queues.view)
