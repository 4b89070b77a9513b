"""Plotly figures from plain numbers and labels; no model in sight, so they are easy to test.

Axes are numeric (token positions) with the token strings as tick text: a categorical axis
would merge two occurrences of the same token into one row. Backgrounds are transparent
and text is mid-grey so the same figure reads in light and dark mode.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORSCALE = "Viridis"  # dark at 0: calm on a dark page, still clear on a light one
FONT = dict(color="#8a8a8a", size=12)
HOVER = ("query %{y} <b>%{customdata[0]}</b><br>key %{customdata[1]}<br>"
         "weight %{z:.3f}<extra></extra>")
CELL_PX = (14, 36)  # a heatmap cell's side: at least 14 px (10 px labels stay legible), at most 36
HEATMAP_PX = 640  # small windows spread over about this much; large ones grow past it and scroll
THUMB_LABELS = 12  # token labels on a side of a per-head thumbnail, at most (every k-th token)


def _base_layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=height, font=FONT,
                      paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def causal(weights: np.ndarray) -> list:
    """[..., R, R] as nested lists with future keys (above the diagonal) as None, drawn
    blank. Plain lists, not plotly's base64 arrays, keep the figure readable in the DOM."""
    weights = np.asarray(weights, dtype=float).round(4)
    rows, cols = weights.shape[-2:]
    future = np.triu(np.ones((rows, cols), dtype=bool), k=1)
    return np.where(future, None, weights.astype(object)).tolist()


def attention_heatmap(weights: np.ndarray, labels: Sequence[str], start: int, title: str,
                      earlier: Sequence[float] | None = None) -> go.Figure:
    """One map [R, R]: rows are query tokens, columns key tokens, both starting at `start`.
    `earlier` [R] is each row's attention to the keys before the window, summed: drawn as a
    first column so every row visibly sums to 1. Cells keep a legible size, so a large
    window makes a large figure (the page scrolls rather than shrinking the labels)."""
    weights = np.asarray(weights)
    n = len(labels)
    if weights.ndim != 2 or weights.shape != (n, n):
        raise ValueError(f"weights must be [{n}, {n}] for {n} labels, got {list(weights.shape)}")
    positions = list(range(start, start + n))
    z, keys, ticks = causal(weights), positions, list(labels)
    hover = [[(q, f"{start + j} <b>{k}</b>") for j, k in enumerate(labels)] for q in labels]
    if start > 0 and earlier is not None:
        if len(earlier) != n:
            raise ValueError(f"earlier must have {n} values, got {len(earlier)}")
        span = f"0–{start - 1}" if start > 1 else "0"
        z = [[round(float(e), 4), *row] for e, row in zip(earlier, z)]
        keys, ticks = [start - 1, *positions], [f"earlier ({span})", *labels]
        hover = [[(q, f"{span}, summed"), *row] for q, row in zip(labels, hover)]
    cell = max(CELL_PX[0], min(CELL_PX[1], HEATMAP_PX // max(n, 1)))
    tick_size = 10 if cell < 18 else 12
    fig = go.Figure(go.Heatmap(z=z, x=keys, y=positions, customdata=hover, hovertemplate=HOVER,
                               hoverongaps=False, colorscale=COLORSCALE, zmin=0, zmax=1,
                               colorbar=dict(title=dict(text="weight", side="right"), orientation="h",
                                             x=0, xanchor="left", y=1.0, yanchor="bottom", thickness=10,
                                             lenmode="pixels", len=200)))  # above the map: seen unscrolled
    axis = dict(tickmode="array", tickfont=dict(size=tick_size), showgrid=False, zeroline=False,
                automargin=True)
    fig.update_xaxes(title_text="key (attended to)", tickangle=-90, side="bottom", tickvals=keys,
                     ticktext=ticks, **axis)
    fig.update_yaxes(title_text="query (attending)", autorange="reversed", tickvals=positions,
                     ticktext=list(labels), **axis)
    label_px = 7 * max((len(t) for t in ticks), default=1) + 40  # rotated key labels, axis title
    _base_layout(fig, title, height=100 + cell * n + label_px)
    fig.update_layout(width=label_px + cell * len(keys) + 30, margin=dict(l=10, r=10, t=90, b=10),
                      title=dict(x=0, xanchor="left", xref="container", pad=dict(l=10)))  # seen unscrolled
    return fig


def heads_grid(weights: np.ndarray, labels: Sequence[str], start: int, title: str,
               head_labels: Sequence[str] | None = None, order: Sequence[int] | None = None) -> go.Figure:
    """Small multiples [H, R, R], one square per head, to spot the interesting heads.
    `head_labels` (e.g. a role such as "previous token") is added to each head's title;
    `order` lists the heads in the order to draw them (default 0..H-1)."""
    weights = np.asarray(weights)
    if weights.ndim != 3 or weights.shape[1:] != (len(labels), len(labels)):
        raise ValueError(f"weights must be [heads, {len(labels)}, {len(labels)}], got {list(weights.shape)}")
    n_head = weights.shape[0]
    if head_labels is not None and len(head_labels) != n_head:
        raise ValueError(f"need {n_head} head labels, got {len(head_labels)}")
    cols = math.ceil(math.sqrt(n_head))
    rows = math.ceil(n_head / cols)
    order = list(range(n_head)) if order is None else list(order)
    if sorted(order) != list(range(n_head)):
        raise ValueError(f"order must list each of the {n_head} heads once, got {order}")
    titles = [f"head {h}" + (f"<br>{head_labels[h]}" if head_labels and head_labels[h] else "")
              for h in order]  # the role on a line of its own: two columns fit a phone
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles,
                        horizontal_spacing=0.03, vertical_spacing=0.35 / rows)
    positions = np.arange(start, start + len(labels))
    future = np.triu(np.ones(weights.shape[1:], dtype=bool), k=1)
    z = np.where(future, np.nan, weights).astype(np.float32)  # arrays, not lists: 12+ maps stay fast to build
    for slot, h in enumerate(order):
        fig.add_trace(go.Heatmap(z=z[h], x=positions, y=positions, coloraxis="coloraxis", hoverongaps=False,
                                 hovertemplate=f"head {h} · query %{{y}} · key %{{x}}<br>"
                                               "weight %{z:.3f}<extra></extra>"),
                      row=slot // cols + 1, col=slot % cols + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    # Token labels on the outer thumbnails (the first column's rows, each column's lowest
    # thumbnail's columns), every `step`-th token so that about THUMB_LABELS fit a side.
    step = max(1, math.ceil(len(labels) / THUMB_LABELS))
    ticks = dict(tickmode="array", tickvals=positions[::step].tolist(), ticktext=list(labels)[::step],
                 showticklabels=True, tickfont=dict(size=9), automargin=True)
    for r in range(1, rows + 1):
        fig.update_yaxes(row=r, col=1, **ticks)
    for c in range(1, cols + 1):
        lowest = max((slot // cols + 1 for slot in range(n_head) if slot % cols + 1 == c), default=None)
        if lowest is not None:
            fig.update_xaxes(row=lowest, col=c, tickangle=-90, **ticks)
    fig.update_layout(coloraxis=dict(colorscale=COLORSCALE, cmin=0, cmax=1,
                                     colorbar=dict(thickness=12, title=dict(text="weight"))))
    fig.update_annotations(font=dict(size=11))
    label_px = 6 * max((len(t) for t in labels), default=1) + 10
    _base_layout(fig, title, height=170 + 190 * rows + label_px)
    fig.update_layout(margin=dict(l=10, r=10, t=90, b=10))  # two-line head titles; the labels add their own
    return fig


def role_label(role: tuple[str, float] | None) -> str:
    """("induction", 0.62) -> "induction 0.62"; None -> ""."""
    return "" if role is None else f"{role[0].replace('_', '-')} {role[1]:.2f}"


def by_role(roles: Sequence[tuple[str, float] | None], role_order: Sequence[str]) -> list[int]:
    """Head order grouping heads by role (in `role_order`), strongest first, unnamed last."""
    def key(h: int) -> tuple:
        role = roles[h]
        return (len(role_order), 0.0, h) if role is None else (role_order.index(role[0]), -role[1], h)
    return sorted(range(len(roles)), key=key)


ROLE_STYLE = {  # role -> (name on the page, colour); None = no role reaches the threshold
    None: ("no clear role", (148, 163, 184)),
    "previous_token": ("previous token", (59, 130, 246)),
    "induction": ("induction", (249, 115, 22)),
    "duplicate_token": ("duplicate token", (34, 197, 94)),
    "first_token": ("first token", (168, 85, 247)),
}


def _rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha})"


def head_overview(scores: Mapping[str, np.ndarray], selected: tuple[int, int | None] | None, title: str,
                  threshold: float = 0.3) -> go.Figure:
    """Every head of every layer as one grid [L, H]: each cell in the colour of its strongest
    role (shade = score; grey below `threshold`), every role's score on hover. `scores` maps
    role -> [L, H] (NaN: not scored on this text); `selected` (layer, head or None = the
    mean) is outlined. One heatmap whose z is band + score, over a colour scale made of one
    light-to-dark ramp per band, so a click reports the cell's layer and head."""
    roles = list(scores)
    stacked = np.stack([np.nan_to_num(np.asarray(scores[r], dtype=float), nan=-np.inf)
                        for r in roles])  # [R, L, H]
    best, which = stacked.max(0), stacked.argmax(0)  # [L, H]
    n_layer, n_head = best.shape
    band = np.where(best >= threshold, which + 1, 0)
    z = band + np.clip(np.where(np.isfinite(best), best, 0.0), 0.0, 0.999)
    bands = [None, *roles]
    colorscale = []
    for k, role in enumerate(bands):
        rgb = ROLE_STYLE.get(role, (None, ROLE_STYLE[None][1]))[1]
        colorscale += [[k / len(bands), _rgba(rgb, 0.12)], [(k + 1) / len(bands), _rgba(rgb, 1.0)]]

    def name(role: str | None) -> str:
        return ROLE_STYLE.get(role, (role.replace("_", " "),))[0] if role else ROLE_STYLE[None][0]

    def describe(layer: int, head: int) -> str:
        lead = (f"<b>{name(roles[which[layer, head]])} {best[layer, head]:.2f}</b>" if band[layer, head]
                else f"<b>{name(None)}</b>")
        others = " · ".join(f"{name(r)} {scores[r][layer, head]:.2f}" for r in roles
                            if np.isfinite(scores[r][layer, head]))
        return f"{lead}<br>{others or 'no role scored on this text'}"

    hover = [[describe(layer, head) for head in range(n_head)] for layer in range(n_layer)]
    small = n_layer * n_head <= 256  # room to print each named head's score in its cell
    text = [[f"{best[layer, head]:.2f}" if small and band[layer, head] else "" for head in range(n_head)]
            for layer in range(n_layer)]
    fig = go.Figure(go.Heatmap(
        z=z.round(3).tolist(), x=list(range(n_head)), y=list(range(n_layer)), customdata=hover,
        # white with a dark halo: Plotly picks a dark text for a pale cell, which on a dark page
        # (the cells are translucent) was nearly invisible
        text=text, texttemplate="%{text}", textfont=dict(size=11, color="white", shadow="0 0 3px black"),
        hovertemplate="layer %{y} · head %{x}<br>%{customdata}<extra></extra>", xgap=2, ygap=2,
        colorscale=colorscale, zmin=0, zmax=len(bands),
        colorbar=dict(tickvals=[k + 0.5 for k in range(len(bands))], ticktext=[name(r) for r in bands],
                      thickness=10, outlinewidth=0)))
    if selected is not None:
        layer, head = selected
        x0, x1 = (-0.5, n_head - 0.5) if head is None else (head - 0.5, head + 0.5)
        fig.add_shape(type="rect", x0=x0, x1=x1, y0=layer - 0.5, y1=layer + 0.5,
                      line=dict(color="#e11d48", width=3))
    return _layer_head_layout(fig, title, n_layer, n_head)


def _layer_head_layout(fig: go.Figure, title: str, n_layer: int, n_head: int) -> go.Figure:
    """Heads across, layers down (layer 0 on top), every one ticked: the grids a click on
    which reports a (layer, head)."""
    fig.update_xaxes(title_text="head", tickmode="array", tickvals=list(range(n_head)), showgrid=False,
                     zeroline=False, tickfont=dict(size=10 if n_head > 16 else 12))
    fig.update_yaxes(title_text="layer", tickmode="array", tickvals=list(range(n_layer)), showgrid=False,
                     zeroline=False, autorange="reversed", tickfont=dict(size=10 if n_layer > 24 else 12))
    row_px = max(18, min(40, 480 // n_layer))
    return _base_layout(fig, title, height=110 + row_px * n_layer)


def candidate_label(label: str) -> str:
    """A candidate's label as the bar chart shows it: a token of one or two marks and no letter
    or digit ("," "." "!)") in quotes, which alone were specks beside the bar."""
    return f"“{label}”" if len(label) <= 2 and not any(c.isalnum() for c in label) else label


def candidates_bar(labels: Sequence[str], probs: Sequence[float], chosen: int | None,
                   title: str) -> go.Figure:
    """Top candidates as horizontal bars, most likely on top, each labelled with its
    probability as a percentage; `chosen` (an index into them, or None when the sampled token
    was not among them) is highlighted. The bars' own labels carry the numbers, so the x axis
    has none, and the axis reaches past the longest bar so its label is never cut off."""
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels but {len(probs)} probabilities")
    colors = ["#f97316" if i == chosen else "#6366f1" for i in range(len(labels))]
    fig = go.Figure(go.Bar(x=list(probs), y=[f"{candidate_label(label)} " for label in labels], orientation="h",
                           marker_color=colors, text=[percent(p) for p in probs],
                           textposition="outside", cliponaxis=False,
                           hovertemplate="%{y}: %{text}<extra></extra>"))
    top = max(probs, default=1.0) or 1.0
    fig.update_xaxes(range=[0, top * 1.45], showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(autorange="reversed", type="category", automargin=True,
                     tickfont=dict(family="ui-monospace, SFMono-Regular, Menlo, Consolas, monospace", size=13))
    fig = _base_layout(fig, title, height=120 + 28 * len(labels))
    fig.update_layout(margin=dict(l=10, r=30, t=50, b=10))
    return fig


# Probability bands for the token view: a legend people read at a glance, ecco-style.
BANDS = [(0.5, "≥ 50%", "#22c55e"), (0.1, "10–50%", "#a3e635"), (0.01, "1–10%", "#fbbf24"),
         (0.0, "< 1%", "#f87171")]
BAND_COLORS = {name: color for _, name, color in BANDS}


def band(prob: float) -> str:
    """The legend band of a probability."""
    return next(name for low, name, _ in BANDS if prob >= low)


def percent(prob: float) -> str:
    """One format, a percentage, readable down to tiny values: 42.0%, 0.31%, <0.01%."""
    if prob >= 0.01:
        return f"{prob:.1%}"
    return f"{prob:.2%}" if prob >= 0.0001 else "<0.01%"


def highlighted_tokens(texts: Sequence[str], probs: Sequence[float | None]) -> list[tuple[str, str | None]]:
    """(token text, probability band) pairs for gr.HighlightedText with BAND_COLORS; None
    leaves a token (the prompt's) uncoloured."""
    if len(texts) != len(probs):
        raise ValueError(f"{len(texts)} tokens but {len(probs)} probabilities")
    return [(text, None if p is None else band(float(p))) for text, p in zip(texts, probs)]


def lens_grid(top: Sequence[Sequence[str]], probs: np.ndarray, start: int, labels: Sequence[str],
              title: str) -> go.Figure:
    """The logit lens over a window (ecco's view): rows are layers, columns positions
    start.., each cell the top-1 next token after that block, coloured by its probability.
    `top` [L][R] token labels, `probs` [L, R], `labels` [R] the window's own tokens."""
    probs = np.asarray(probs, dtype=float)
    n_layer, n = probs.shape
    if len(top) != n_layer or any(len(row) != n for row in top) or len(labels) != n:
        raise ValueError(f"top must be [{n_layer}][{n}] and labels [{n}]")
    positions = list(range(start, start + n))
    hover = [[labels[j] for j in range(n)] for _ in range(n_layer)]
    cell = max(40, min(72, HEATMAP_PX // max(n, 1)))
    fig = go.Figure(go.Heatmap(
        z=probs.round(4).tolist(), x=positions, y=list(range(n_layer)), text=[list(row) for row in top],
        texttemplate="%{text}", textfont=dict(size=10), customdata=hover, colorscale=COLORSCALE, zmin=0, zmax=1,
        hovertemplate="after layer %{y}, at %{x} <b>%{customdata}</b><br>top-1 next: <b>%{text}</b> "
                      "%{z:.1%}<extra></extra>", xgap=1, ygap=1,
        colorbar=dict(title=dict(text="probability", side="right"), orientation="h", x=0, xanchor="left",
                      y=1.0, yanchor="bottom", thickness=10, lenmode="pixels", len=200)))
    fig.update_xaxes(title_text="position (token)", tickmode="array", tickvals=positions, ticktext=list(labels),
                     tickangle=-90, showgrid=False, zeroline=False, automargin=True, tickfont=dict(size=10))
    fig.update_yaxes(title_text="after layer", tickmode="array", tickvals=list(range(n_layer)), showgrid=False,
                     zeroline=False, autorange="reversed", automargin=True)
    row_px = max(20, min(36, 560 // max(n_layer, 1)))
    label_px = 7 * max((len(t) for t in labels), default=1) + 40
    _base_layout(fig, title, height=120 + row_px * n_layer + label_px)
    fig.update_layout(width=80 + cell * n, margin=dict(l=10, r=10, t=90, b=10),
                      title=dict(x=0, xanchor="left", xref="container", pad=dict(l=10)))
    return fig


def attention_rows_figure(rows: Sequence[Sequence[float]], names: Sequence[str], labels: Sequence[str],
                          title: str) -> go.Figure:
    """Two (or more) runs' attention rows for one token over the same keys: one heatmap row
    each, keys as columns; a row shorter than the keys (another text) is blank past its end."""
    n = len(labels)
    z = [[round(float(w), 4) for w in row] + [None] * (n - len(row)) for row in rows]
    fig = go.Figure(go.Heatmap(z=z, x=list(range(n)), y=list(range(len(rows))), colorscale=COLORSCALE,
                               zmin=0, zmax=1, hoverongaps=False, xgap=1, ygap=2,
                               customdata=[list(labels)] * len(rows),
                               hovertemplate="key %{x} <b>%{customdata}</b><br>weight %{z:.3f}<extra></extra>",
                               colorbar=dict(thickness=10, orientation="h", x=0, xanchor="left", y=1.0,
                                             yanchor="bottom", lenmode="pixels", len=200)))
    fig.update_xaxes(tickmode="array", tickvals=list(range(n)), ticktext=list(labels), tickangle=-90,
                     showgrid=False, zeroline=False, automargin=True, tickfont=dict(size=10))
    fig.update_yaxes(tickmode="array", tickvals=list(range(len(rows))), ticktext=list(names),
                     autorange="reversed", showgrid=False, zeroline=False, automargin=True)
    label_px = 7 * max((len(t) for t in labels), default=1) + 40
    _base_layout(fig, title, height=140 + 40 * len(rows) + label_px)
    fig.update_layout(width=max(360, 160 + 18 * n), margin=dict(l=10, r=10, t=90, b=10),
                      title=dict(x=0, xanchor="left", xref="container", pad=dict(l=10)))
    return fig


# -- why this token: attribution and patching (diverging: blue adds, red takes away) ----------
DIVERGING = [[0.0, "#dc2626"], [0.5, "rgba(128,128,128,0.08)"], [1.0, "#2563eb"]]


def _symmetric(values: np.ndarray) -> float:
    """The colour scale's half-range: the largest magnitude (so 0 sits in the middle)."""
    top = float(np.nanmax(np.abs(values))) if np.size(values) else 0.0
    return top if top > 0 else 1.0


def layer_head_grid(values: np.ndarray, title: str, hover: str, selected: tuple[int, int | None] | None = None,
                    zrange: tuple[float, float] | None = None) -> go.Figure:
    """A [L, H] grid with heads across and layers down, as the head overview, in diverging
    colours centred on 0 (or over `zrange`), so a click reports the cell's layer and head.
    `hover`: what a cell's value is, e.g. "adds %{z:+.3f}"."""
    values = np.asarray(values, dtype=float)
    n_layer, n_head = values.shape
    top = _symmetric(values)
    zmin, zmax = zrange or (-top, top)
    small = n_layer * n_head <= 256
    text = [[f"{v:+.2f}" if small and abs(v) >= 0.1 * max(abs(zmin), abs(zmax)) else "" for v in row]
            for row in values]
    fig = go.Figure(go.Heatmap(
        z=values.round(4).tolist(), x=list(range(n_head)), y=list(range(n_layer)), text=text,
        texttemplate="%{text}", textfont=dict(size=10), colorscale=DIVERGING, zmin=zmin, zmax=zmax,
        hovertemplate=f"layer %{{y}} · head %{{x}}<br>{hover}<extra></extra>", xgap=2, ygap=2,
        colorbar=dict(thickness=10, outlinewidth=0)))
    if selected is not None and selected[1] is not None:
        layer, head = selected
        fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                      line=dict(color="#111", width=2))
    return _layer_head_layout(fig, title, n_layer, n_head)


def attribution_parts(mlps: Sequence[float], attention_bias: Sequence[float], embeddings: float,
                      final_bias: float, title: str) -> go.Figure:
    """What is not a head: each layer's MLP and attention bias, the embeddings and the final
    LayerNorm's bias, as bars (blue adds to the metric, red takes away)."""
    names = ["embeddings"] + [f"MLP {i}" for i in range(len(mlps))] + \
        [f"attn bias {i}" for i in range(len(attention_bias))] + ["final LN bias"]
    values = [float(embeddings), *map(float, mlps), *map(float, attention_bias), float(final_bias)]
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=["#2563eb" if v >= 0 else "#dc2626" for v in values],
                           hovertemplate="%{x}: %{y:+.3f}<extra></extra>"))
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=10))
    fig.update_yaxes(title_text="adds to the metric", zeroline=True, zerolinecolor="#8a8a8a")
    return _base_layout(fig, title, height=300)


def patch_positions_grid(values: np.ndarray, labels: Sequence[str], title: str) -> go.Figure:
    """Residual patching [L, T]: layers down, the clean prompt's tokens across."""
    values = np.asarray(values, dtype=float)
    n_layer, T = values.shape
    fig = go.Figure(go.Heatmap(
        z=values.round(4).tolist(), x=list(range(T)), y=list(range(n_layer)), colorscale=DIVERGING,
        zmin=-1, zmax=1, customdata=[[labels[t] for t in range(T)] for _ in range(n_layer)],
        hovertemplate="layer %{y} · token %{x} <b>%{customdata}</b><br>restores %{z:.3f}<extra></extra>",
        xgap=1, ygap=1, colorbar=dict(thickness=10, outlinewidth=0)))
    fig.update_xaxes(tickmode="array", tickvals=list(range(T)), ticktext=list(labels), tickangle=-60,
                     tickfont=dict(size=10), showgrid=False, zeroline=False)
    fig.update_yaxes(title_text="layer (residual entering it)", tickmode="array", tickvals=list(range(n_layer)),
                     showgrid=False, zeroline=False, autorange="reversed")
    row_px = max(14, min(30, 420 // n_layer))
    return _base_layout(fig, title, height=150 + row_px * n_layer)
