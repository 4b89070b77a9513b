"""The Knock-out tab: the prompt re-run with the same settings and seed, as is and with some
heads' outputs zeroed (two rows of one decode loop), side by side, and how much each token's
probability changed."""
from __future__ import annotations

import re
from typing import Any

import gradio as gr
import numpy as np

from .. import explain, figures, tokens, validate
from ..errors import friendly
from ..inspection import ROLE_THRESHOLD
from ..models import BUILTIN
from ..service import MEAN, Service
from .common import Queues, settings_or_run_seed, tokens_text

# The built-in model's induction heads, measured in benchmarks/KNOCKOUT.md (their knock-out
# raises the second copy's loss from 0.09 to 5.55 nats/token).
BUILTIN_INDUCTION_HEADS = "1.0, 1.2, 1.3, 2.1"
EMPTY = ('<p class="empty-state">Type heads as <code>layer.head</code>, or add the selected one, and press '
         '<b>Knock out</b>: the prompt in the form runs twice with its settings and seed, as is and with those '
         'heads zeroed, and the two texts appear here side by side.</p>')


class KnockoutTab:
    def __init__(self, service: Service):
        self.service = service

    def layout(self) -> None:
        gr.Markdown("Re-run the prompt with the same settings and seed with some heads' outputs set to zero, "
                    "beside the run as is. The built-in model's induction heads (1.0, 1.2, 1.3, 2.1) carry its "
                    "copying: knocked out, the second copy of a repeated sequence goes from 0.09 to 5.55 "
                    "nats/token (benchmarks/KNOCKOUT.md).")
        self.heads = gr.Textbox(label="Heads to knock out (layer.head, comma-separated)", placeholder="1.0, 1.2",
                                elem_id="ko-heads")
        with gr.Row():
            self.add = gr.Button("Add the selected head", size="sm", elem_id="ko-add", min_width=120)
            self.induction = gr.Button("Knock out the induction heads", size="sm", elem_id="ko-induction",
                                       min_width=120)
            self.run = gr.Button("Knock out", variant="primary", size="sm", elem_id="ko-run", min_width=100)
        self.texts = gr.HTML(EMPTY, elem_id="ko-texts")
        self.position = gr.Slider(0, 1, value=0, step=1, label="Generated token", elem_id="ko-position",
                                  visible=False)
        self.note = gr.Markdown(elem_id="ko-note")
        self.state = gr.State(None)

    @property
    def outputs(self) -> list:
        return [self.texts, self.position, self.note, self.state]

    @staticmethod
    def cleared() -> tuple:
        """A new run starts: the previous knock-out would read as this run's."""
        return EMPTY, gr.Slider(visible=False), "", None

    def knockout(self, run_id: str | None, heads: Any, prompt: Any, model: Any, temperature: Any, top_k: Any,
                 top_p: Any, max_new: Any, seed: Any, stop_at_end: Any = False) -> tuple:
        """Re-run the prompt with the same settings and seed, as is and with the heads knocked
        out (two rows of one decode loop); how much each baseline token's probability changed."""
        s = settings_or_run_seed(self.service, self.service.models.names, run_id, prompt, model, temperature,
                                 top_k, top_p, max_new, seed, stop_at_end)
        config = self.service.models.get(s.model).config
        parsed = validate.heads(heads, config.n_layer, config.n_head)
        out = self.service.ablate(s, parsed)
        ids = out.prompt_ids + out.baseline
        base = self.service.chosen_probs(s.model, ids, None)[len(out.prompt_ids) - 1:]
        ablated = self.service.chosen_probs(s.model, ids, parsed)[len(out.prompt_ids) - 1:]
        named = validate.heads_text(parsed)
        tokenizer = self.service.models.tokenizer(s.model)  # the model's own
        state = {"model": s.model, "heads": named, "seed": out.seed, "baseline": out.baseline,
                 "ablated": out.ablated, "base": base.tolist(), "knocked": ablated.tolist(),
                 "labels": tokens.labels(out.baseline, tokenizer=tokenizer)}
        first = out.first_difference
        at = 0 if first is None else min(first, max(0, len(out.baseline) - 1))
        texts = explain.side_by_side(tokens_text(out.prompt_ids, tokenizer), ("As is", f"Heads {named} knocked out"),
                                     out.baseline, out.ablated, (tokenizer, tokenizer))
        return (texts, gr.Slider(minimum=0, maximum=max(1, len(out.baseline) - 1), value=at, visible=True),
                self._note(state, at), state)

    @staticmethod
    def _note(state: dict | None, position: Any) -> str:
        if not state or not state["baseline"]:
            return ""
        i = min(max(0, int(position)), len(state["baseline"]) - 1)
        before, after = state["base"][i], state["knocked"][i]
        token = state["labels"][i] if "labels" in state else tokens.labels(state["baseline"][i:i + 1])[0]
        loss = lambda ps: float(-np.log(np.clip(np.asarray(ps), 1e-12, 1)).mean())  # noqa: E731
        return (f"Generated token {i}, `{token}` (the text on the left): the model gave it "
                f"**{figures.percent(before)}** as is and **{figures.percent(after)}** with heads "
                f"{state['heads']} knocked out ({(after - before) * 100:+.1f} points). Over all "
                f"{len(state['base'])} generated tokens of that text the loss goes from "
                f"**{loss(state['base']):.2f}** to **{loss(state['knocked']):.2f}** nats/token "
                f"(seed `{state['seed']}`).")

    def knockout_position(self, state: dict | None, position: Any) -> str:
        return self._note(state, position)

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

    def wire(self, run_id: gr.State, settings: list, model: gr.Dropdown, layer: gr.Dropdown, head: gr.Dropdown,
             queues: Queues) -> None:
        inputs = [run_id, self.heads, *settings]
        self.run.click(friendly(self.knockout), inputs=inputs, outputs=self.outputs, **queues.generate)
        self.induction.click(friendly(self.induction_heads), inputs=[run_id, model], outputs=self.heads,
                             **queues.view).success(friendly(self.knockout), inputs=inputs, outputs=self.outputs,
                                                    **queues.generate)
        self.add.click(self.add_head, inputs=[self.heads, layer, head], outputs=self.heads,
                       api_visibility="private", concurrency_id="view")
        self.position.release(self.knockout_position, inputs=[self.state, self.position], outputs=self.note,
                              api_visibility="private", concurrency_id="view")
