"""The Logit lens tab: what the model would predict after each block, at one position (a
table of the top tokens) and over the page's window (a grid of top-1 tokens), read from the
run's kept block outputs (no forward pass)."""
from __future__ import annotations

from typing import Any

import gradio as gr

from .. import explain, figures, tokens
from ..errors import friendly
from ..inspection import Run, window
from ..service import Service
from .common import plot

LENS_K = 5  # top tokens per layer in the table


class LensTab:
    def __init__(self, service: Service):
        self.service = service

    def layout(self) -> None:
        gr.Markdown("What the model would predict after each block: the residual stream after layer i through "
                    "the final LayerNorm and the LM head (the last row is the model's own prediction), read "
                    "from the run's capture.")
        self.position = gr.Slider(0, 1, value=0, step=1, label="Position (token)", elem_id="lens-position")
        self.table = gr.HTML(elem_id="lens-table")
        self.grid = gr.Plot(show_label=False, elem_id="lens-grid")

    def render(self, run: Run, position: int, start: int, size: int) -> tuple[str, Any]:
        """The table at `position` and the grid over the window."""
        T = len(run.ids)
        position = min(max(0, int(position)), T - 1)
        win = window(T, int(start), int(size))
        # One pass over the window gives the grid (each cell's top 1) and, when the position is in
        # the window (a run just shown: its last token), the table's top LENS_K too.
        grid = self.service.lens(run, slice(win.start, win.stop), LENS_K)
        if win.start <= position < win.stop:
            ids, probs = grid.ids[:, 0, position - win.start], grid.probs[:, 0, position - win.start]
        else:
            one = self.service.lens(run, slice(position, position + 1), LENS_K)
            ids, probs = one.ids[:, 0, 0], one.probs[:, 0, 0]
        tokenizer = run.tokenizer  # the model's own
        # lens_table escapes the labels itself
        label = tokens.labels(run.ids[position:position + 1], plot_safe=False, tokenizer=tokenizer)[0]
        following = (tokens.labels(run.ids[position + 1:position + 2], plot_safe=False, tokenizer=tokenizer)[0]
                     if position + 1 < T else None)
        table = explain.lens_table(position, label, following, ids.tolist(), probs.tolist(), tokenizer)
        top = [tokens.labels(row, tokenizer=tokenizer) for row in grid.ids[:, 0, :, 0].tolist()]
        fig = figures.lens_grid(top, grid.probs[:, 0, :, 0].numpy(), win.start,
                                tokens.labels(run.ids[win.start:win.stop], tokenizer=tokenizer),
                                f"Logit lens · top-1 next token after each layer · tokens {win.start}–{win.stop - 1}")
        return table, plot(fig, run.model_name, "logit-lens", f"tokens{win.start}-{win.stop - 1}")

    def render_last(self, run: Run, start: int, size: int) -> tuple:
        """(position slider, table, grid) for a run just shown: its last token."""
        last = len(run.ids) - 1
        return (gr.Slider(minimum=0, maximum=max(1, last), value=last), *self.render(run, last, start, size))

    def update_lens(self, run_id: str | None, position: Any, start: Any, size: Any) -> tuple[str, Any]:
        return self.render(self.service.run(run_id), int(position), int(start), int(size))

    def wire(self, run_id: gr.State, start: gr.Slider, size: gr.Slider, view: dict) -> None:
        for changed in (start.release, size.release, self.position.release):
            changed(friendly(self.update_lens), inputs=[run_id, self.position, start, size],
                    outputs=[self.table, self.grid], trigger_mode="always_last", **view)
