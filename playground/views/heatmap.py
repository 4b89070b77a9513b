"""The Heatmap tab: the selected head's attention over a window of tokens, earlier keys summed
in the first column. Its window (start, size) is the page's: the Heads tab's grid and the
logit lens's grid show the same tokens."""
from __future__ import annotations

import gradio as gr

from .. import figures
from ..inspection import DEFAULT_WINDOW, MAX_WINDOW, Run
from ..service import head_name, select_head
from .common import plot


class HeatmapTab:
    def layout(self) -> None:
        with gr.Row():
            self.start = gr.Slider(0, 1, value=0, step=1, label="Window start (token)", elem_id="window-start",
                                   min_width=160)
            self.size = gr.Slider(4, MAX_WINDOW, value=DEFAULT_WINDOW, step=1, label="Window size (tokens)",
                                  elem_id="window-size", min_width=160)
        self.note = gr.Markdown("Generate some text to see where each token looked.", elem_id="window-note")
        self.heatmap = gr.Plot(show_label=False, elem_id="attention-heatmap")

    @staticmethod
    def render(run: Run, grid, layer: int, head: int | None) -> tuple:
        """Caption and heatmap, from the layer's window (`Service.all_heads`)."""
        span = f"tokens {grid.window.start}–{grid.window.stop - 1}"
        heatmap = figures.attention_heatmap(select_head(grid.weights, head), grid.labels, grid.window.start,
                                            f"Layer {layer} · {head_name(head)} · {span}",
                                            earlier=select_head(grid.earlier, head))
        return (grid.window.describe(),
                plot(heatmap, run.model_name, f"layer{layer}", head_name(head),
                     f"tokens{grid.window.start}-{grid.window.stop - 1}"))
