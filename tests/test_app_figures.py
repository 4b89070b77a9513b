"""Figure builders, from hand-made maps."""
from __future__ import annotations

import numpy as np
import pytest

from playground import figures

LABELS = ["The", "·cat", "·sat"]
MAP = np.array([[1.0, 0, 0], [0.25, 0.75, 0], [0.1, 0.2, 0.7]])


def test_heatmap_labels_values_and_hover():
    fig = figures.attention_heatmap(MAP, LABELS, start=5, title="Layer 0 · head 1")
    heat = fig.data[0]
    assert list(fig.layout.xaxis.ticktext) == LABELS == list(fig.layout.yaxis.ticktext)
    assert list(fig.layout.xaxis.tickvals) == [5, 6, 7] == list(heat.x) == list(heat.y)
    assert list(heat.z[1]) == [0.25, 0.75, None]  # future keys are blank, not 0
    assert list(heat.z[2]) == [0.1, 0.2, 0.7]
    assert list(heat.customdata[2][1]) == ["·sat", "6 <b>·cat</b>"]  # query token; key position and token
    assert "%{z" in heat.hovertemplate and "query %{y} <b>%{customdata[0]}</b>" in heat.hovertemplate
    assert fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.title.text == "Layer 0 · head 1"


def test_keys_before_the_window_are_one_summed_column():
    earlier = [0.5, 0.2, 0.0]
    fig = figures.attention_heatmap(MAP / 2, LABELS, start=5, title="t", earlier=[0.5, 0.5, 0.5])
    heat = fig.data[0]
    assert list(heat.x) == [4, 5, 6, 7] and list(fig.layout.xaxis.ticktext) == ["earlier (0–4)", *LABELS]
    sums = [sum(v for v in row if v is not None) for row in heat.z]
    assert sums == pytest.approx([1, 1, 1])  # every row sums to 1
    assert list(heat.customdata[1][0]) == ["·cat", "0–4, summed"]
    from_start = figures.attention_heatmap(MAP, LABELS, 0, "t", earlier=earlier)
    assert list(from_start.data[0].x) == [0, 1, 2]  # nothing before token 0
    with pytest.raises(ValueError, match="earlier must have 3 values"):
        figures.attention_heatmap(MAP, LABELS, 5, "t", earlier=[0.1])


def test_heatmaps_grow_with_the_window_instead_of_shrinking_their_cells():
    def size(n: int) -> tuple[int, int, float]:
        fig = figures.attention_heatmap(np.tril(np.ones((n, n))) / n, [f"·t{i}" for i in range(n)], 0, "t")
        return fig.layout.width, fig.layout.height, fig.layout.xaxis.tickfont.size

    (w16, h16, _), (w64, h64, font64), (w128, h128, font128) = size(16), size(64), size(128)
    assert w16 < w64 < w128 and h16 < h64 < h128
    assert w128 - w64 >= 64 * figures.CELL_PX[0] and h128 - h64 >= 64 * figures.CELL_PX[0]  # cells >= 14 px
    assert font64 == font128 == 10


def test_head_overview_colours_every_head_by_its_strongest_role():
    nan = np.full((2, 3), np.nan)
    scores = {"previous_token": np.array([[0.9, 0.1, 0.0], [0.0, 0.1, 0.2]]),
              "induction": np.array([[0.0, 0.0, 0.1], [0.7, 0.0, 0.1]]), "duplicate_token": nan,
              "first_token": np.array([[0.0, 0.5, 0.0], [0.0, 0.0, 0.1]])}
    fig = figures.head_overview(scores, (1, 0), "t")
    heat = fig.data[0]
    z = np.array(heat.z)
    assert z.shape == (2, 3) and list(heat.x) == [0, 1, 2] and list(heat.y) == [0, 1]  # [layers, heads]
    band = np.floor(z).astype(int)  # 0 = no clear role, then one band per role in the given order
    assert band.tolist() == [[1, 4, 0], [2, 0, 0]]
    assert z[0, 0] == pytest.approx(1.9) and z[1, 0] == pytest.approx(2.7)  # shade = score
    assert heat.customdata[1][0].startswith("<b>induction 0.70</b>")
    assert "duplicate" not in heat.customdata[1][0]  # not scored on this text
    assert heat.customdata[0][2].startswith("<b>no clear role</b>")
    assert list(heat.colorbar.ticktext) == ["no clear role", "previous token", "induction", "duplicate token",
                                            "first token"]
    outline = fig.layout.shapes[0]
    assert (outline.x0, outline.x1, outline.y0, outline.y1) == (-0.5, 0.5, 0.5, 1.5)
    mean = figures.head_overview(scores, (0, None), "t").layout.shapes[0]
    assert (mean.x0, mean.x1) == (-0.5, 2.5)  # the mean over heads: the whole layer


def test_repeated_tokens_keep_their_own_rows():
    fig = figures.attention_heatmap(np.tril(np.ones((3, 3))) / 3, ["·a", "·a", "·a"], 0, "t")
    assert len(fig.data[0].z) == 3 and list(fig.layout.yaxis.tickvals) == [0, 1, 2]


def test_heatmap_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="weights must be"):
        figures.attention_heatmap(MAP, LABELS[:2], 0, "t")


def test_heads_grid_one_panel_per_head_with_optional_roles():
    maps = np.stack([MAP, MAP.T.copy(), MAP, MAP, MAP])
    fig = figures.heads_grid(maps, LABELS, 0, "Layer 3")
    assert len(fig.data) == 5
    assert [a.text for a in fig.layout.annotations] == [f"head {h}" for h in range(5)]
    assert all(trace.coloraxis == "coloraxis" for trace in fig.data)  # one shared scale
    roles = ["previous token", "", "induction", "", "first token"]
    titled = figures.heads_grid(maps, LABELS, 0, "Layer 3", head_labels=roles)
    assert titled.layout.annotations[0].text == "head 0<br>previous token"  # two lines fit a phone
    assert titled.layout.annotations[1].text == "head 1"
    with pytest.raises(ValueError, match="head labels"):
        figures.heads_grid(maps, LABELS, 0, "t", head_labels=["x"])


def test_candidates_bar_highlights_the_chosen_token():
    fig = figures.candidates_bar(["·mat", "·floor"], [0.6, 0.3], chosen=1, title="t")
    bar = fig.data[0]
    assert list(bar.x) == [0.6, 0.3] and list(bar.text) == ["60.0%", "30.0%"]
    small = figures.candidates_bar(["·a", "·b", "·c"], [0.004, 3.2e-5, 0.0312], None, "t")
    assert small.data[0].text == ("0.40%", "<0.01%", "3.1%")  # one format: percentages
    assert small.layout.xaxis.showticklabels is False  # the bars carry the numbers
    assert small.layout.xaxis.range[1] >= 1.4 * 0.0312  # room for the longest bar's label
    assert bar.marker.color[1] != bar.marker.color[0]
    none = figures.candidates_bar(["·mat"], [0.6], chosen=None, title="t")
    assert none.data[0].marker.color[0] == bar.marker.color[0]


def test_highlighted_tokens_leave_prompt_uncoloured():
    pairs = figures.highlighted_tokens(["a", " b", " c", " d", " e"], [None, 0.9, 0.2, 0.05, 0.001])
    assert pairs == [("a", None), (" b", "≥ 50%"), (" c", "10–50%"), (" d", "1–10%"), (" e", "< 1%")]
    assert set(figures.BAND_COLORS) == {band for _, band in pairs[1:]}
    with pytest.raises(ValueError):
        figures.highlighted_tokens(["a"], [])


def test_issue_29_details_overview_numbers_candidate_marks_thumbnail_labels():
    """Head overview numbers white with a dark halo (readable on a dark page's translucent
    cells), lone punctuation candidates in quotes and a larger monospace font, per-head
    thumbnails with token labels on their outer sides (every k-th token of a long window)."""
    scores = {"induction": np.array([[0.9, 0.1], [0.2, 0.5]]), "previous_token": np.zeros((2, 2))}
    text = figures.head_overview(scores, (0, 0), "t").data[0].textfont
    assert text.color == "white" and "black" in text.shadow
    bars = figures.candidates_bar([",", ".", "·the", "!)", "·a"], [0.3, 0.2, 0.1, 0.05, 0.01], None, "t")
    assert [y.strip() for y in bars.data[0].y] == ["“,”", "“.”", "·the", "“!)”", "·a"]
    assert bars.layout.yaxis.tickfont.size >= 13
    maps = np.stack([MAP] * 4)
    fig = figures.heads_grid(maps, LABELS, 0, "t")
    layout = fig.to_plotly_json()["layout"]
    shown = {k: v for k, v in layout.items() if k[1:5] == "axis" and v.get("showticklabels")}
    assert set(shown) == {"yaxis", "yaxis3", "xaxis3", "xaxis4"}  # 2 x 2: first column's rows, bottom row
    assert all(list(v["ticktext"]) == list(LABELS) for v in shown.values())
    long = figures.heads_grid(np.stack([np.tril(np.ones((40, 40))) / 40] * 4), [f"t{i}" for i in range(40)], 0, "t")
    ticks = list(long.to_plotly_json()["layout"]["yaxis"]["ticktext"])
    assert ticks == [f"t{i}" for i in range(0, 40, 4)]  # every 4th: at most THUMB_LABELS a side
