"""The Heads tab: every head of every layer coloured by its strongest role (a click selects
that head everywhere), and every head of the selected layer over the page's window."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

import gpt2

from .. import figures, page_script, validate
from ..inspection import ROLE_THRESHOLD, Run, head_roles
from ..service import Service, head_name
from .common import plot


class HeadsTab:
    def __init__(self, service: Service):
        self.service = service

    def layout(self) -> None:
        gr.Markdown("Every head of every layer, coloured by its strongest role over the whole text "
                    "(`gpt2.head_scores`; grey below 0.3): previous-token heads look one token back, induction "
                    "heads at what followed an earlier copy of the current token. Click a cell to select that "
                    "head. Below: every head of the selected layer over the heatmap's window.")
        with gr.HTML(html_template="@children", js_on_load=page_script.OVERVIEW_JS,
                     elem_id="head-overview-box") as self.overview_box:
            self.overview = gr.Plot(show_label=False, elem_id="head-overview")
        self.sort_roles = gr.Checkbox(label="Sort heads by role", value=False, elem_id="sort-roles")
        self.grid = gr.Plot(show_label=False, elem_id="all-heads")

    @staticmethod
    def render_grid(run: Run, grid, layer: int, sort_by_role: bool) -> Any:
        """The layer's heads over the window, each named by its role."""
        roles = head_roles(run, layer)
        span = f"tokens {grid.window.start}–{grid.window.stop - 1}"
        heads = figures.heads_grid(grid.weights, grid.labels, grid.window.start, f"Layer {layer} · {span}",
                                   head_labels=[figures.role_label(r) for r in roles],
                                   order=figures.by_role(roles, gpt2.ROLES) if sort_by_role else None)
        return plot(heads, run.model_name, f"layer{layer}", "all-heads",
                    f"tokens{grid.window.start}-{grid.window.stop - 1}")

    @staticmethod
    def render_overview(run: Run, layer: int, head: int | None) -> Any:
        return plot(figures.head_overview(run.roles, (layer, head), "Every head by its strongest role",
                                          threshold=ROLE_THRESHOLD),
                    run.model_name, "head-roles", f"selected-layer{layer}", head_name(head))

    def picked(self, run_id: str | None, evt: gr.EventData) -> tuple[int, int]:
        """The (layer, head) of the overview's clicked cell, checked against the run's model."""
        run = self.service.run(run_id)
        cell = getattr(evt, "_data", None) or {}
        return (validate.integer("layer", cell.get("layer"), 0, run.config.n_layer - 1),
                validate.integer("head", cell.get("head"), 0, run.config.n_head - 1))

    def wire(self, pick_head: Callable, inputs: list, outputs: list, view: dict) -> None:
        self.overview_box.pick(pick_head, inputs=inputs, outputs=outputs, trigger_mode="always_last", **view)
