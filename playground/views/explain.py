"""The Explain tab: why the model wrote a token rather than another. For the token selected in
the token view: the metric logit[target] - logit[contrast] split over every head, MLP, bias and
the embeddings (direct logit attribution, read from the run's capture), the input saliency of
every earlier token (painted on the token view, its "attribution" mode), activation patching
against a corrupted prompt, and steering by activation addition. The numbers come from
`playground/causal.py`, the same functions as the /attribution, /patch, /saliency and /steer
endpoints; the definitions are in `gpt2.attribution`, `.patching`, `.saliency`, `.steer`."""
from __future__ import annotations

import html
from typing import Any

import gradio as gr

from .. import explain, figures, page_script, tokens, validate
from ..causal import Workbench
from ..errors import friendly
from ..inspection import Run
from ..service import Service
from .common import Queues, plot, selection, settings_or_run_seed
from .tokens import TokensTab

TOP_WORDS = 5  # contributors named in words
CANDIDATE_PREFIX = "id:"  # a contrast picked from the candidates; anything else is typed text
EMPTY = ('<p class="empty-state">Generate some text, select a token in the <b>Tokens</b> tab (a click), then '
         'press <b>Explain the selected token</b>: which heads, MLPs and earlier tokens made the model prefer it '
         'to its runner-up.</p>')
STEER_EMPTY = ('<p class="empty-state">Press <b>Steer</b>: the prompt in the form runs twice with its settings '
               'and seed, as is and with strength × (plus − minus) added to the residual stream entering the '
               'layer, and the two texts appear here with the first difference marked.</p>')


def _quoted(tokenizer, token_id: int) -> str:
    return f"“{tokens.labels([token_id], plot_safe=False, tokenizer=tokenizer)[0]}”"


def describe_top(a, tokenizer, k: int = TOP_WORDS) -> str:
    """The largest contributors in words: "head 5.1 adds +2.30 for “ Mary” over “ John”"."""
    target, contrast = _quoted(tokenizer, a.target), _quoted(tokenizer, a.contrast)
    lines = []
    for name, value in a.ranked()[:k]:
        verb = "adds" if value >= 0 else "takes"
        lines.append(f"- **{html.escape(name)}** {verb} **{value:+.2f}** for {html.escape(target)} over "
                     f"{html.escape(contrast)}")
    return "\n".join(lines)


def corrupted_copy(clean: str) -> str:
    """A repeated sequence with its first copy's words replaced by others (same token count
    where the tokenizer allows): the corrupted prompt of the built-in example."""
    half = len(clean) // 2
    if clean[:half] != clean[half:]:
        return clean
    words = clean[:half].split(" ")
    swapped = " ".join(words[:1] + words[1:][::-1])  # the same words in another order: same tokens
    return swapped + clean[half:]


class ExplainTab:
    def __init__(self, service: Service, token_tab: TokensTab):
        self.service, self.workbench, self.token_tab = service, Workbench(service), token_tab

    def layout(self) -> None:
        gr.Markdown("Why this token rather than another? The **metric** is logit[target] − logit[contrast] where "
                    "the token was chosen. Direct logit attribution splits it over every part that writes to the "
                    "residual stream (each through the final LayerNorm, its scale frozen): they add up to the "
                    "metric. Click a head to select it everywhere.")
        with gr.Row(equal_height=False):
            self.position = gr.Slider(1, 2, value=1, step=1, label="Token explained", elem_id="explain-position",
                                      min_width=160)
            self.contrast = gr.Dropdown(choices=[], value=None, allow_custom_value=True, elem_id="explain-contrast",
                                        label="Rather than (a candidate, or type a token)", min_width=160)
        with gr.Row():
            self.run = gr.Button("Explain the selected token", variant="primary", size="sm", elem_id="explain-run",
                                 min_width=120)
            self.example = gr.Button("Example: induction heads on the built-in model", size="sm",
                                     elem_id="explain-example", min_width=120)
        self.metric = gr.HTML(EMPTY, elem_id="explain-metric")
        with gr.HTML(html_template="@children", js_on_load=page_script.OVERVIEW_JS,
                     elem_id="attribution-heads-box") as self.heads_box:
            self.heads = gr.Plot(show_label=False, elem_id="attribution-heads")
        self.top = gr.Markdown(elem_id="attribution-top")
        self.parts = gr.Plot(show_label=False, elem_id="attribution-parts")
        with gr.Accordion("Activation patching: which heads and positions carry the difference", open=True,
                          elem_id="patch-box"):
            gr.Markdown("The run's prompt is the clean run; change a few words below (keeping its number of "
                        "tokens) for the corrupted one. Each cell is the corrupted run with one part taken from the "
                        "clean run: 0 = no effect, 1 = the clean metric fully restored (at the prompt's last token).")
            self.corrupted = gr.Textbox(label="Corrupted prompt", lines=2, max_length=validate.MAX_PROMPT_CHARS,
                                        elem_id="patch-corrupted")
            with gr.Row():
                self.patch_heads_run = gr.Button("Patch each head", size="sm", elem_id="patch-heads-run",
                                                 min_width=120)
                self.patch_residual_run = gr.Button("Patch the residual at each layer and position", size="sm",
                                                    elem_id="patch-residual-run", min_width=120)
            self.patch_note = gr.Markdown(elem_id="patch-note")
            self.patch_heads_plot = gr.Plot(show_label=False, elem_id="patch-heads", visible=False)
            self.patch_residual_plot = gr.Plot(show_label=False, elem_id="patch-residual", visible=False)
        with gr.Accordion("Steering: add a direction to the residual stream while generating", open=True,
                          elem_id="steer-box"):
            with gr.Row():
                self.plus = gr.Textbox("Love", label="Plus", elem_id="steer-plus", min_width=120)
                self.minus = gr.Textbox("Hate", label="Minus", elem_id="steer-minus", min_width=120)
            with gr.Row():
                self.steer_layer = gr.Slider(0, 1, value=0, step=1, label="Layer (its input)", elem_id="steer-layer",
                                             min_width=140)
                self.strength = gr.Slider(-20, 20, value=5, step=0.5, label="Strength", elem_id="steer-strength",
                                          min_width=140)
            self.steer_run = gr.Button("Steer", variant="primary", size="sm", elem_id="steer-run")
            self.steer_texts = gr.HTML(STEER_EMPTY, elem_id="steer-texts")

    @staticmethod
    def cleared() -> tuple:
        """A new run starts: the previous patching and steering would read as this run's."""
        return "", gr.Plot(None, visible=False), gr.Plot(None, visible=False), STEER_EMPTY

    @property
    def cleared_outputs(self) -> list:
        return [self.patch_note, self.patch_heads_plot, self.patch_residual_plot, self.steer_texts]

    # -- attribution and saliency ---------------------------------------------------------------
    def show(self, run_id: str | None) -> tuple:
        """After a run is shown: the tab fitted to it."""
        return self.render(self.service.run(run_id))

    def render(self, run: Run) -> tuple:
        """A new run: the tab back to its empty state, fitted to the run (the token explained
        is the first generated one, the corrupted prompt the run's prompt)."""
        first = min(run.n_prompt, len(run.ids) - 1)
        n_layer = run.config.n_layer
        return (gr.Slider(minimum=1, maximum=max(1, len(run.ids) - 1), value=max(1, first)),
                gr.Dropdown(choices=[], value=None), EMPTY, None, "", None,
                run.tokenizer.decode(run.ids[:run.n_prompt]) if run.tokenizer else "",
                gr.Slider(minimum=0, maximum=n_layer - 1, value=n_layer // 2))

    def explain(self, run_id: str | None, position: Any, contrast: Any, layer: Any, head: Any) -> tuple:
        """Attribution and saliency of the token at `position` (the token chosen, predicted at
        position - 1) against `contrast` (blank: the runner-up)."""
        run = self.service.run(run_id)
        j = validate.integer("token", position, 1, len(run.ids) - 1)
        contrast_id = self._contrast(run, contrast)
        a = self.workbench.attribution(run.model_name, run.ids, j - 1, run.ids[j], contrast_id, run=run)
        sal = self.workbench.saliency(run.model_name, run.ids, j - 1, a.target, a.contrast)
        tok = run.tokenizer
        target, other = _quoted(tok, a.target), _quoted(tok, a.contrast)
        metric = (f'<div class="explain-metric" data-metric="{a.metric:.6f}">Token {j} {html.escape(target)}: '
                  f"logit[{html.escape(target)}] − logit[{html.escape(other)}] = <b>{a.metric:+.3f}</b> "
                  f"(embeddings {a.embeddings:+.2f} · heads {float(a.heads.sum()):+.2f} · MLPs "
                  f"{float(a.mlps.sum()):+.2f} · biases {float(a.attention_bias.sum()) + a.final_bias:+.2f})."
                  " The Tokens tab now shades each earlier token by its saliency (input × gradient).</div>")
        heads = figures.layer_head_grid(a.heads.numpy(), f"Heads: direct effect · token {j}",
                                        "adds %{z:+.3f}", selection(run.config, layer, head))
        parts = figures.attribution_parts(a.mlps.tolist(), a.attention_bias.tolist(), a.embeddings, a.final_bias,
                                          "MLPs, biases and embeddings")
        layer_, head_ = selection(run.config, layer, head)
        view = self.token_tab.render(run, run_id, layer_, head_)
        view = {**view, "selected": j, "saliency": {"position": j - 1, "token": j,
                                                    "scores": [round(float(s), 6) for s in sal.scores],
                                                    "target": target, "contrast": other}}
        return (gr.Slider(value=j), self._contrast_menu(run, j, a.contrast), metric,
                plot(heads, run.model_name, "attribution", f"token{j}"), describe_top(a, tok),
                plot(parts, run.model_name, "attribution-parts", f"token{j}"), view)

    def _contrast(self, run: Run, contrast: Any) -> int | None:
        if contrast is None or (isinstance(contrast, str) and not contrast.strip()):
            return None
        if isinstance(contrast, str) and contrast.startswith(CANDIDATE_PREFIX):
            return validate.integer("contrast", contrast.removeprefix(CANDIDATE_PREFIX), 0,
                                    run.config.vocab_size - 1)
        ids = run.tokenizer.encode(str(contrast))
        if len(ids) != 1:
            raise ValueError(f"{validate.shown(contrast)} is {len(ids)} tokens; type one token (e.g. ' Mary', with "
                             "its leading space) or pick a candidate")
        return ids[0]

    @staticmethod
    def _contrast_menu(run: Run, j: int, chosen: int) -> gr.Dropdown:
        """The next-token candidates where token j was chosen, the contrast selected."""
        c = run.candidates[j - 1]
        labels = tokens.labels(c.ids, plot_safe=False, tokenizer=run.tokenizer)
        choices = [(f"{label} ({figures.percent(p)})", f"{CANDIDATE_PREFIX}{i}")
                   for label, i, p in zip(labels, c.ids, c.probs) if i != run.ids[j]]
        value = f"{CANDIDATE_PREFIX}{chosen}"
        if all(v != value for _, v in choices):
            choices.append((tokens.labels([chosen], plot_safe=False, tokenizer=run.tokenizer)[0], value))
        return gr.Dropdown(choices=choices, value=value)

    def example_run(self, run_id: str | None, layer: Any, head: Any) -> tuple:
        """The built-in model's example (a repeated random sequence, just generated): explain a
        token of the second copy, and prefill the corrupted prompt with a first copy of other
        words (the same token count), so patching shows which heads carry the copying."""
        run = self.service.run(run_id)
        j = max(1, run.n_prompt - 3)  # in the second copy: predicted by looking at the first
        out = self.explain(run_id, j, None, layer, head)
        clean = run.tokenizer.decode(run.ids[:run.n_prompt])
        return (*out, corrupted_copy(clean))

    # -- patching -------------------------------------------------------------------------------
    def patch(self, run_id: str | None, corrupted: Any, level: str) -> tuple:
        run = self.service.run(run_id)
        clean = run.ids[:run.n_prompt]
        corrupted_ids = self.service.text_ids(validate.prompt_text(corrupted), run.model_name)
        p = self.workbench.patch(run.model_name, clean, corrupted_ids, level=level)
        tok = run.tokenizer
        note = (f"Metric logit[{_quoted(tok, p.target)}] − logit[{_quoted(tok, p.contrast)}] at the prompt's last "
                f"token: **{p.metric_clean:+.3f}** clean, **{p.metric_corrupted:+.3f}** corrupted.")
        if level == "heads":
            fig = figures.layer_head_grid(p.grid.numpy(), "Patching each head (clean into corrupted)",
                                          "restores %{z:.3f}", zrange=(-1.0, 1.0))
            best = divmod(int(p.grid.abs().argmax()), p.grid.size(1))
            note += f" Strongest: head {best[0]}.{best[1]} restores {float(p.grid[best]):.2f}."
            return note, gr.Plot(plot(fig, run.model_name, "patch-heads"), visible=True), gr.skip()
        labels = tokens.labels(clean, tokenizer=tok)
        fig = figures.patch_positions_grid(p.grid.numpy(), labels,
                                           "Patching the residual stream entering each layer, at each token")
        return note, gr.skip(), gr.Plot(plot(fig, run.model_name, "patch-residual"), visible=True)

    def patch_heads(self, run_id: str | None, corrupted: Any) -> tuple:
        return self.patch(run_id, corrupted, "heads")

    def patch_residual(self, run_id: str | None, corrupted: Any) -> tuple:
        return self.patch(run_id, corrupted, "residual")

    # -- steering -------------------------------------------------------------------------------
    def steer(self, run_id: str | None, plus: Any, minus: Any, layer: Any, strength: Any, prompt: Any, model: Any,
              temperature: Any, top_k: Any, top_p: Any, max_new: Any, seed: Any, stop_at_end: Any = False) -> str:
        s = settings_or_run_seed(self.service, self.service.models.names, run_id, prompt, model, temperature, top_k,
                                 top_p, max_new, seed, stop_at_end)
        out = self.workbench.steer(s, plus, minus, layer, strength)
        tok = self.service.models.tokenizer(s.model)
        return explain.side_by_side(tok.decode(out.prompt_ids), ("As is", f"Steered at layer {out.layer} × "
                                                                 f"{out.strength:g}"),
                                    out.baseline, out.steered, (tok, tok))

    # -- wiring ---------------------------------------------------------------------------------
    @property
    def explain_outputs(self) -> list:
        return [self.position, self.contrast, self.metric, self.heads, self.top, self.parts, self.token_tab.view]

    @property
    def run_outputs(self) -> list:
        """What `render` fills when a run is shown."""
        return [self.position, self.contrast, self.metric, self.heads, self.top, self.parts, self.corrupted,
                self.steer_layer]

    def wire(self, run_id: gr.State, settings: list, layer: gr.Dropdown, head: gr.Dropdown, pick_head,
             pick_inputs: list, pick_outputs: list, queues: Queues) -> None:
        # The token explained is the token view's selection when the button is pressed.
        inputs = [run_id, self.position, self.contrast, layer, head]
        self.run.click(friendly(self.explain), inputs=inputs, outputs=self.explain_outputs,
                       js=page_script.EXPLAIN_SELECTED_JS, api_name="ui_explain", **queues.generate)
        self.position.release(friendly(self.explain), inputs=inputs, outputs=self.explain_outputs,
                              js=page_script.EXPLAIN_POSITION_JS, trigger_mode="always_last",
                              api_name="ui_explain_position", **queues.generate)
        self.contrast.input(friendly(self.explain), inputs=inputs, outputs=self.explain_outputs,
                            trigger_mode="always_last", api_name="ui_explain_contrast", **queues.generate)
        self.heads_box.pick(pick_head, inputs=pick_inputs, outputs=pick_outputs, trigger_mode="always_last",
                            **queues.view)
        patch_outputs = [self.patch_note, self.patch_heads_plot, self.patch_residual_plot]
        self.patch_heads_run.click(friendly(self.patch_heads), inputs=[run_id, self.corrupted], outputs=patch_outputs,
                                   api_name="ui_patch_heads", **queues.generate)
        self.patch_residual_run.click(friendly(self.patch_residual), inputs=[run_id, self.corrupted],
                                      outputs=patch_outputs, api_name="ui_patch_residual", **queues.generate)
        self.steer_run.click(friendly(self.steer), inputs=[run_id, self.plus, self.minus, self.steer_layer,
                                                           self.strength, *settings],
                             outputs=self.steer_texts, api_name="ui_steer", **queues.generate)
