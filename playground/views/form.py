"""The settings column: prompt, model, sampling settings, examples; loading a model when it is
chosen (and fitting the settings to it); and shared links, which fill this form when the page
opens and may generate by themselves only when that is cheap."""
from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from typing import Any

import gradio as gr

import gpt2

from .. import validate
from ..errors import to_gr_error
from ..inspection import repeated_random_text
from ..models import BUILTIN, describe, load_error_message
from ..service import MEAN, Service
from .common import head_choices, layer_choices, max_new_limit

log = logging.getLogger(__name__)

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
# A link generates by itself only what a plain visit could cost: on a model already loaded (or the
# page's own), at most this many new tokens. Anything more waits for a click on Generate.
LINK_AUTORUN_TOKENS = 128
LINK_WAITS = ("The link's settings are filled in: press Generate to run them (a link generates by itself "
              f"only on a model already loaded, up to {LINK_AUTORUN_TOKENS} new tokens).")


def examples_for(name: str) -> dict[str, list]:
    return BUILTIN_EXAMPLES if name == BUILTIN else EXAMPLES


def _examples(examples: dict[str, list]) -> gr.Dataset:
    return gr.Dataset(samples=list(examples.values()), sample_labels=list(examples))


class Form:
    def __init__(self, service: Service, first: str):
        self.service = service
        self.names = service.models.names
        self.first = first  # the model the page opens on

    def layout(self) -> None:
        shown = examples_for(self.first)  # the first one fills the prompt
        self.prompt = gr.Textbox(label="Prompt", lines=5, max_length=validate.MAX_PROMPT_CHARS,
                                 value=next(iter(shown.values()))[0], elem_id="prompt")
        self.model = gr.Dropdown(choices=self.names, value=self.first, label="Model", elem_id="model",
                                 allow_custom_value=self.service.models.allow_hub)  # any Hub repo, if allowed
        with gr.Row():  # above the sampling settings: in view on load on a laptop's screen
            self.generate = gr.Button("Generate", variant="primary", elem_id="generate")
            self.stop = gr.Button("Stop", variant="stop", elem_id="stop")
        self.temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="Temperature", info="0 = greedy")
        self.top_k = gr.Slider(0, 200, value=40, step=1, label="Top-k", info="0 = off")
        self.top_p = gr.Slider(0.05, 1, value=0.95, step=0.01, label="Top-p", info="1 = off")
        self.max_new = gr.Slider(1, validate.MAX_NEW_TOKENS, value=60, step=1, label="Max new tokens",
                                 elem_id="max-new-tokens")
        self.seed = gr.Textbox(label="Seed", placeholder="random", elem_id="seed",
                               info="Blank = random; each run shows the seed it used.")
        self.stop_at_end = gr.Checkbox(value=self.first == BUILTIN, label="Stop at end of text (<|endoftext|>)",
                                       elem_id="stop-at-end")
        self.examples = gr.Examples(list(shown.values()), inputs=[self.prompt, self.temperature, self.max_new],
                                    example_labels=list(shown), label="Try these")
        self.induction = gr.Button("Show an induction head: a repeated random sequence on the built-in model",
                                   size="sm", elem_id="induction-example")

    @property
    def settings(self) -> list:
        """The inputs of a generation, in `validate.settings`' order."""
        return [self.prompt, self.model, self.temperature, self.top_k, self.top_p, self.max_new, self.seed,
                self.stop_at_end]

    # -- the model ---------------------------------------------------------------------------------
    def model_status(self, name: str, max_new: Any = None,
                     progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[tuple]:
        """Load (or download) a model, saying so, then fit the settings to it: max new tokens up
        to its limit, stop at end of text on for the built-in model, its layers and heads, its
        examples. A failure is a message, never an error."""
        keep = (gr.skip(),) * 5
        if not isinstance(name, str) or not (name in self.names or self.names.admit(name)):
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
        config, limit = model.config, max_new_limit(model.config)
        too_many = max_new is not None and int(max_new) > limit  # else a value typed meanwhile stands
        slider = gr.Slider(maximum=limit, value=limit) if too_many else gr.Slider(maximum=limit)
        yield (describe(name, model), slider,
               gr.Checkbox(value=name == BUILTIN),
               gr.Dropdown(choices=layer_choices(config), value=config.n_layer - 1),
               gr.Dropdown(choices=head_choices(config), value=MEAN),
               _examples(examples_for(name)))

    def induction_example(self) -> tuple:
        """A repeated random sequence for the built-in model: prompt, model, temperature, length."""
        try:
            text = repeated_random_text(self.service.models.get(BUILTIN))
        except Exception as error:  # noqa: BLE001
            raise to_gr_error(error) from None
        return text, BUILTIN, 0.0, 12

    # -- links -------------------------------------------------------------------------------------
    def restore(self, request: gr.Request) -> tuple:
        """Settings from a shared link's query string (?prompt=…&model=…&seed=…); each value is
        checked like any input, and a bad one is left as the page has it (with a warning, the
        value quoted as text). The last output says whether the link may generate by itself:
        "run", "wait" (see LINK_AUTORUN_TOKENS), or "" without a link."""
        query = dict(request.query_params) if request is not None else {}
        keep = (gr.skip(),) * 7
        if "prompt" not in query:
            return (*keep, "")
        checks = {"prompt": validate.prompt_text, "model": lambda v: validate.model_name(v, self.names),
                  "temperature": lambda v: validate.settings("x", self.names[0], v, 0, 1, 1, None,
                                                             offered=self.names).temperature,
                  "top_k": lambda v: validate.integer("top_k", v, 0, 200),
                  "top_p": lambda v: validate.settings("x", self.names[0], 0, 0, v, 1, None,
                                                       offered=self.names).top_p,
                  "max_new_tokens": lambda v: validate.integer("max_new_tokens", v, 1, validate.MAX_NEW_TOKENS),
                  "seed": lambda v: "" if validate.seed_value(v) is None else str(validate.seed_value(v))}
        out = {}
        for name, check in checks.items():
            if name not in query:
                continue
            try:
                out[name] = check(query[name])
            except ValueError as error:  # a toast renders HTML: the link's text must stay text
                gr.Warning(html.escape(f"The link's {name} was not used: {error}"))
        restored = (out.get(name, gr.skip()) for name in checks)
        return (*restored, self._link_may_run(out.get("model", self.first), out.get("max_new_tokens", 60)))

    def _link_may_run(self, model: str, max_new: int) -> str:
        cheap = (model == self.first or self.service.models.loaded(model)) and max_new <= LINK_AUTORUN_TOKENS
        return "run" if cheap else "wait"

    def opening_status(self, name: str, max_new: Any, restored: Any,
                       progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[tuple]:
        """`model_status` when the page opens, except that a link never loads a model by itself."""
        if restored == "wait" and name != self.first and not self.service.models.loaded(name):
            yield (f"**{name}** is not loaded yet: it loads when you press Generate.", *(gr.skip(),) * 5)
            return
        yield from self.model_status(name, max_new, progress)

    @staticmethod
    def restore_flags(restored: Any, request: gr.Request) -> tuple:
        """After the model's own defaults: the link's "stop at end of text", and whether the
        page generates now (the hidden checkbox that page_script.REGENERATE_JS reads)."""
        value = dict(request.query_params).get("stop_at_end") if restored and request is not None else None
        flag = gr.skip() if value is None else gr.Checkbox(value=value.lower() in ("1", "true", "yes"))
        if restored == "wait":
            gr.Info(LINK_WAITS)
        return flag, restored == "run"
