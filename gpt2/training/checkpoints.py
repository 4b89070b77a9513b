"""Resumable training checkpoints without pickle, and the loss-curve figure.

Beside `out` (e.g. `runs/tiny.safetensors`, the shippable full-vocabulary model):
- `runs/tiny.train.safetensors`: the compact model's weights (`model.*`) and AdamW's
  per-parameter tensors (`optim.<param index>.<step|exp_avg|exp_avg_sq>`);
- `runs/tiny.train.json`: step, model and training settings, the corpus ids, optimizer
  hyper-parameters and the loss history. No RNG state is needed: every batch is drawn from
  a generator seeded by (seed, step), so resuming at step s draws what step s would have.
- `runs/tiny.loss.html`: the loss curve (Plotly, self-contained, opens offline).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..model import GPT


def state_paths(out: Path) -> tuple[Path, Path, Path]:
    """(tensors, json, figure) paths that belong to the model file `out`."""
    stem = out.with_suffix("")
    return (stem.with_name(stem.name + ".train.safetensors"),
            stem.with_name(stem.name + ".train.json"), stem.with_name(stem.name + ".loss.html"))


def save_state(out: Path, model: GPT, optimizer: torch.optim.Optimizer, info: dict) -> None:
    """Write weights + optimizer tensors (safetensors) and `info` + param groups (JSON)."""
    tensors_path, json_path, _ = state_paths(out)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, per_param in opt["state"].items():
        for key, value in per_param.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().contiguous()
    tmp = tensors_path.with_suffix(".tmp")
    save_file(tensors, tmp)
    tmp.replace(tensors_path)  # a crash mid-write never leaves a half checkpoint
    json_path.write_text(json.dumps({**info, "param_groups": opt["param_groups"]}, indent=1))


def load_state(out: Path, model: GPT, optimizer: torch.optim.Optimizer) -> dict:
    """Restore what `save_state` wrote into `model` and `optimizer`; return the info dict."""
    tensors_path, json_path, _ = state_paths(out)
    info = json.loads(json_path.read_text())
    tensors = load_file(tensors_path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info.pop("param_groups")})
    return info


def write_loss_figure(path: Path, history: dict) -> None:
    """Train/val loss against step and induction scores (right axis) as a Plotly HTML page."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=history["step"], y=history["train_loss"], name="train loss", mode="lines")
    fig.add_scatter(x=history["eval_step"], y=history["val_loss"], name="val loss",
                    mode="lines+markers")
    for key, values in history.items():
        if key.startswith("induction_"):
            fig.add_scatter(x=history["eval_step"], y=values, yaxis="y2", mode="lines+markers",
                            name=f"best induction score, repeat length {key.split('_')[1]}")
    fig.update_layout(title="Training loss", xaxis_title="step", yaxis_title="cross-entropy (nats)",
                      yaxis2=dict(title="induction score", overlaying="y", side="right", range=[0, 1]))
    fig.write_html(path, include_plotlyjs=True)
