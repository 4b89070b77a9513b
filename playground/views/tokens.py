"""The Tokens tab: the text painted by the attention of the selected layer and head. The
browser repaints on hover, click and keys (`page_script.TOKEN_VIEW_JS`) from one payload per
(run, layer, head); while a run streams, the payload is the newest token's row."""
from __future__ import annotations

from typing import Any

import gradio as gr

from .. import page_script, token_view, tokens
from ..inspection import Run
from ..service import Service, Step, head_name
from .common import selection


class TokensTab:
    def __init__(self, service: Service):
        self.service = service

    def layout(self) -> None:
        self.view = gr.HTML(None, html_template=page_script.TOKEN_VIEW_HTML, js_on_load=page_script.TOKEN_VIEW_JS,
                            elem_id="token-view")

    def render(self, run: Run, run_id: str | None, layer: int, head: int | None) -> dict:
        matrix = self.service.token_matrix(run, layer, head)
        return token_view.run_payload(run_id or "", tokens.text(run.ids, run.tokenizer), run.n_prompt, matrix, layer,
                                      head_name(head), selected=len(run.ids) - 1)

    def live(self, step: Step, layer: Any, head: Any) -> dict:
        """The newest token's row, read from the running capture."""
        layer, head = selection(step.capture.model.config, layer, head)
        position, row = self.service.live_row(step, layer, head)
        text = tokens.text(step.ids, step.tokenizer)
        return token_view.live_payload(step.run_id, text, step.n_prompt, position, row,
                                       layer, head_name(head))
