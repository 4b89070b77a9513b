"""What every view uses: named figure export, the layer and head menus' choices, and the
selection fitted to a model."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components.plot import PlotData

import gpt2

from .. import explain, validate
from ..service import MEAN, Service, parse_head


def plot(fig: Any, *name: object) -> PlotData:
    """A Plotly figure for gr.Plot whose PNG export (the camera button) is named after what it
    shows: model, layer and head. Gradio's Plotly component passes the figure's `config` on."""
    spec = json.loads(fig.to_json())
    spec["config"] = {"toImageButtonOptions": {"format": "png", "filename": explain.file_name(*name)}}
    return PlotData(type="plotly", plot=json.dumps(spec))


def max_new_limit(config: gpt2.GPTConfig) -> int:
    """The largest max-new-tokens a model takes: below its context, and the app's cap."""
    return min(validate.MAX_NEW_TOKENS, config.context_length - 1)


def layer_choices(config: gpt2.GPTConfig) -> list[tuple[str, int]]:
    return [(f"layer {i}", i) for i in range(config.n_layer)]


def head_choices(config: gpt2.GPTConfig) -> list[tuple[str, str]]:
    return [("mean over heads", MEAN)] + [(f"head {h}", str(h)) for h in range(config.n_head)]


def head_value(head: int | None) -> str:
    return MEAN if head is None else str(head)


def selection(config: gpt2.GPTConfig, layer: Any, head: Any) -> tuple[int, int | None]:
    """The page's layer and head, made to fit `config` (another model may have fewer)."""
    layer = min(max(0, int(layer)), config.n_layer - 1) if layer is not None else config.n_layer - 1
    try:
        return layer, parse_head(head, config.n_head)
    except ValueError:
        return layer, None


def tokens_text(ids: list[int], tokenizer: gpt2.Tokenizer | None = None) -> str:
    """`ids` as text, read with the model's own tokenizer (None: GPT-2's)."""
    return (tokenizer or gpt2.tokenizer.gpt2_tokenizer()).decode(ids)


def settings_or_run_seed(service: Service, offered: list[str], run_id: str | None, prompt: Any, model: Any,
                         temperature: Any, top_k: Any, top_p: Any, max_new: Any, seed: Any,
                         stop_at_end: Any) -> validate.Settings:
    """The form's settings for a re-run (knock-out, compare); a blank seed takes the shown
    run's own, so its text comes back."""
    s = validate.settings(prompt, model, temperature, top_k, top_p, max_new, seed, stop_at_end, offered=offered)
    if s.seed is not None:
        return s
    record = service.runs.record(run_id) if run_id else None
    return validate.Settings(**{**s.__dict__, "seed": record.seed if record and record.seed is not None else 0})


@dataclass(frozen=True)
class Queues:
    """Keyword arguments for an event of each kind: `view` (cheap, from a stored run) and
    `generate` (runs the model; admitted up to the decode loop's rows)."""
    view: dict
    generate: dict



def quiet_input_errors(demo: gr.Blocks) -> None:
    """A value outside a component's own bounds (a page a step behind after a model switch
    lowered a slider's maximum, or a hand-made request) is refused with Gradio's message, as
    before, but as the client's mistake: no traceback in the server's log. Wrapped on this
    Blocks (preprocessing is all it does), not per component: Gradio rebuilds a component a
    session has updated (gr.Slider(maximum=...)) from its class, and a subclass would make
    Gradio write a .pyi stub beside this file."""
    preprocess_data = demo.preprocess_data

    async def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return await preprocess_data(*args, **kwargs)
        except gr.Error as error:
            if not error.print_exception:
                raise
            raise gr.Error(error.message, duration=error.duration, visible=error.visible,
                           title=error.title, print_exception=False) from None

    demo.preprocess_data = checked
