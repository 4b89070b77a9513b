"""The Next token tab: each generated token coloured by the probability the model gave it,
and the top candidates at a chosen position (kept by the capture: no forward pass)."""
from __future__ import annotations

from typing import Any

import gradio as gr

from .. import figures, tokens
from ..errors import friendly
from ..inspection import Run
from ..service import Service


class NextTokenTab:
    def __init__(self, service: Service):
        self.service = service

    def layout(self) -> None:
        self.highlighted = gr.HighlightedText(
            label="Generated tokens coloured by the probability the model gave them (click a token to see "
                  "the alternatives)",
            elem_id="token-probs", color_map=figures.BAND_COLORS, show_legend=True, show_inline_category=False,
            combine_adjacent=False)
        self.position = gr.Slider(1, 2, value=1, step=1, label="Position", elem_id="position")
        self.note = gr.Markdown(elem_id="candidates-note")
        self.candidates = gr.Plot(show_label=False, elem_id="candidates")

    def render(self, run: Run, position: int) -> tuple:
        """(highlighted tokens, position slider, note, candidates) for a run just shown."""
        return (self._highlighted(run),
                gr.Slider(minimum=1, maximum=max(1, len(run.ids) - 1), value=max(1, position)),
                *self._candidates(run, max(1, position)))

    @staticmethod
    def _highlighted(run: Run) -> list[tuple[str, str | None]]:
        probs = [None] * run.n_prompt + [c.chosen_prob for c in run.candidates[run.n_prompt - 1:]]
        return figures.highlighted_tokens(tokens.text(run.ids, run.tokenizer), probs)

    @staticmethod
    def _candidates(run: Run, position: int) -> tuple[str, Any]:
        """A line saying where the model was and what followed, and its top candidates there."""
        position = min(max(1, int(position)), len(run.ids) - 1)
        c = run.candidates[position - 1]
        tokenizer = run.tokenizer  # the model's own
        labels = tokens.labels(c.ids, tokenizer=tokenizer)
        actual = run.ids[position]
        chosen = c.ids.index(actual) if actual in c.ids else None
        context = "".join(tokens.labels(run.ids[max(0, position - 6):position], tokenizer=tokenizer))
        note = (f"After “{context}” (position {position}) the model's top {len(labels)}; "
                f"“{tokens.labels([actual], tokenizer=tokenizer)[0]}” followed "
                f"({figures.percent(c.chosen_prob)}).")
        return note, figures.candidates_bar(labels, c.probs, chosen, f"Position {position}")

    def select_position(self, run_id: str | None, evt: gr.SelectData) -> tuple:
        run = self.service.run(run_id)
        position = max(1, int(evt.index if isinstance(evt.index, int) else evt.index[0]))
        return gr.Slider(value=position), *self._candidates(run, position)

    def show_position(self, run_id: str | None, position: Any) -> tuple:
        return self._candidates(self.service.run(run_id), int(position))

    def wire(self, run_id: gr.State, view: dict) -> None:
        self.highlighted.select(friendly(self.select_position), inputs=run_id,
                                outputs=[self.position, self.note, self.candidates], **view)
        self.position.release(friendly(self.show_position), inputs=[run_id, self.position],
                              outputs=[self.note, self.candidates], **view)
