"""Issue 30 through the app: /attribution, /patch, /saliency and /steer against the library on the
same random checkpoint (the library itself is checked against transformers in test_causal.py),
their bad-input messages, concurrent requests equal to lone ones, and the Explain tab in Chromium
at 1400 px and 390 px."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import gpt2
from test_app_browser import TOKENS, _generate
from test_app_polish import DESKTOP, PHONE, browser
from test_app_server import ARTIFACTS, PROMPT

MODEL = "local:long"
TEXT = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def model(long_checkpoint) -> gpt2.GPT:
    return gpt2.load_model(str(long_checkpoint))


def test_attribution_equals_the_library_and_sums_to_the_metric(client, model):
    ids = gpt2.encode(TEXT)
    for position in (3, len(ids) - 1):
        got = client.predict(text=TEXT, model=MODEL, position=position, target=None, contrast=None,
                             api_name="/attribution")
        want = gpt2.attribute(model, ids, position)
        assert set(got) == {"position", "target", "contrast", "metric", "heads", "attention_bias", "mlps",
                            "embeddings", "final_bias"}
        assert got["position"] == position and got["target"]["id"] == want.target
        if position + 1 < len(ids):
            assert got["target"]["id"] == ids[position + 1]  # the default: the token that follows
        assert got["target"]["token"] == gpt2.decode([want.target])
        assert torch.allclose(torch.tensor(got["heads"]), want.heads, atol=1e-5)
        assert torch.allclose(torch.tensor(got["mlps"]), want.mlps, atol=1e-5)
        total = (sum(map(sum, got["heads"])) + sum(got["attention_bias"]) + sum(got["mlps"]) + got["embeddings"]
                 + got["final_bias"])
        assert abs(total - got["metric"]) < 1e-4 and abs(got["metric"] - want.metric) < 1e-5


def test_patching_equals_the_library(client, model):
    heads = client.predict(clean=TEXT, corrupted=CORRUPTED, model=MODEL, target=None, contrast=None, level="heads",
                           api_name="/patch")
    want = gpt2.patch_heads(model, gpt2.encode(TEXT), gpt2.encode(CORRUPTED))
    assert {"metric_clean", "metric_corrupted", "heads"} <= set(heads)
    assert torch.allclose(torch.tensor(heads["heads"]), want.grid, atol=1e-4)
    assert abs(heads["metric_clean"] - want.metric_clean) < 1e-5
    residual = client.predict(clean=TEXT, corrupted=CORRUPTED, model=MODEL, target=None, contrast=None,
                              level="residual", api_name="/patch")
    want = gpt2.patch_residual(model, gpt2.encode(TEXT), gpt2.encode(CORRUPTED))
    assert len(residual["tokens"]) == len(gpt2.encode(TEXT)) and "heads" not in residual
    assert torch.allclose(torch.tensor(residual["residual"]), want.grid, atol=1e-4)


def test_saliency_equals_the_library(client, model):
    ids = gpt2.encode(TEXT)
    got = client.predict(text=TEXT, model=MODEL, position=6, target=None, contrast=None, api_name="/saliency")
    want = gpt2.saliency(model, ids, 6)
    assert got["position"] == 6 and len(got["tokens"]) == len(got["scores"]) == 7
    assert torch.allclose(torch.tensor(got["scores"]), want.scores, rtol=1e-4, atol=1e-6)


def test_steering_keeps_the_baseline_and_equals_the_library(client, model):
    got = client.predict(prompt=PROMPT, model=MODEL, plus="Love", minus="Hate", layer=1, strength=8.0,
                         max_new_tokens=12, temperature=0.0, top_k=0, top_p=1.0, seed=0, api_name="/steer")
    ids = torch.tensor([gpt2.encode(PROMPT)])
    plain = gpt2.generate(model, ids, 12, temperature=0.0)[0, ids.size(1):].tolist()
    assert got["baseline_ids"] == plain and got["baseline"] == gpt2.decode(plain)
    vector = gpt2.steering_vector(model, gpt2.encode("Love"), gpt2.encode("Hate"), 1)
    _, steered = gpt2.generate_steered(model, ids, {1: vector}, 12, 8.0, temperature=0.0)
    assert got["steered_ids"] == steered[0, ids.size(1):].tolist() and got["steered_ids"] != plain


@pytest.mark.parametrize("api_name, arguments, message", [
    ("/attribution", dict(text=TEXT, position=0, target=99_999_999, contrast=None), "unknown token id 99999999"),
    ("/attribution", dict(text=TEXT, position=500, target=None, contrast=None), "position must be between"),
    ("/saliency", dict(text=TEXT, position=-99, target=None, contrast=None), "position must be between"),
    ("/patch", dict(clean=TEXT, corrupted=TEXT + " her", target=None, contrast=None, level="heads"),
     "clean has 14, corrupted has 15"),
    ("/patch", dict(clean=TEXT, corrupted=CORRUPTED, target=None, contrast=None, level="neurons"),
     "level must be 'heads' or 'residual'"),
    ("/steer", dict(prompt=PROMPT, plus="a", minus="b", layer=9, strength=1.0, max_new_tokens=4), "layer must be"),
    ("/steer", dict(prompt=PROMPT, plus="a", minus="b", layer=0, strength="nan", max_new_tokens=4),
     "strength must be a finite number"),
    ("/steer", dict(prompt=PROMPT, plus=" ", minus="b", layer=0, strength=1.0, max_new_tokens=4),
     "plus must be a non-empty text"),
])
def test_bad_input_gets_a_clear_message(client, api_name, arguments, message):
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        client.predict(model=MODEL, api_name=api_name, **arguments)


def test_concurrent_requests_equal_lone_ones(app_url, client):
    from gradio_client import Client

    calls = [
        ("/attribution", dict(text=TEXT, model=MODEL, position=-1, target=None, contrast=None)),
        ("/patch", dict(clean=TEXT, corrupted=CORRUPTED, model=MODEL, target=None, contrast=None, level="heads")),
        ("/saliency", dict(text=TEXT, model=MODEL, position=-1, target=None, contrast=None)),
        ("/steer", dict(prompt=PROMPT, model=MODEL, plus="Love", minus="Hate", layer=1, strength=8.0,
                        max_new_tokens=16, temperature=0.0, top_k=0, top_p=1.0, seed=0)),
        ("/ablate", dict(prompt=PROMPT, model=MODEL, heads=["0.1"], max_new_tokens=16, temperature=0.0, top_k=0,
                         top_p=1.0, seed=0)),
    ]
    lone = [client.predict(api_name=name, **kw) for name, kw in calls]

    def call(item):
        name, kw = item
        return Client(app_url, verbose=False).predict(api_name=name, **kw)

    with ThreadPoolExecutor(len(calls) * 2) as pool:
        together = list(pool.map(call, calls * 2))
    assert together == lone * 2


# -- the page -------------------------------------------------------------------------------
def _explained(page, max_new: int = 8) -> None:
    from playwright.sync_api import expect

    _generate(page, PROMPT, max_new)
    total = len(gpt2.encode(PROMPT)) + max_new
    page.wait_for_function(f"document.querySelectorAll('{TOKENS}').length === {total}"
                           " && !document.querySelector('#token-view .live')", timeout=30_000)
    page.locator(f"{TOKENS}[data-pos='5']").click()  # select a prompt token: explain it
    page.get_by_role("tab", name="Explain").click()
    page.locator("#explain-run").click()
    expect(page.locator("#explain-metric .explain-metric")).to_contain_text("Token 5", timeout=30_000)
    page.wait_for_selector("#attribution-heads .js-plotly-plot", timeout=30_000)


@pytest.mark.parametrize("context, name", [(DESKTOP, "1400"), (PHONE, "390")])
def test_the_explain_tab(app_url, context, name):
    from playwright.sync_api import expect

    with browser(app_url, **context) as page:
        _explained(page)
        metric = float(page.get_attribute("#explain-metric .explain-metric", "data-metric"))
        ids = gpt2.encode(PROMPT)
        expect(page.locator("#attribution-top")).to_contain_text("for “")
        assert page.locator("#explain-position input[type=number]").input_value() == "5"
        assert math.isfinite(metric)
        # A click on a cell of the attribution grid selects that head everywhere.
        page.locator("#attribution-heads").scroll_into_view_if_needed()
        page.wait_for_timeout(300)  # let Plotly finish drawing it
        cell = page.eval_on_selector("#attribution-heads .js-plotly-plot", """el => {
            const {xaxis, yaxis} = el._fullLayout, box = el.getBoundingClientRect();
            return [box.left + xaxis._offset + xaxis.l2p(1), box.top + yaxis._offset + yaxis.l2p(1)];
        }""")
        page.mouse.click(*cell) if name == "1400" else page.touchscreen.tap(*cell)
        expect(page.locator("#head input")).to_have_value("head 1", timeout=30_000)
        expect(page.locator("#layer input")).to_have_value("layer 1")
        # Patching against a corrupted prompt of the same token count.
        page.fill("#patch-corrupted textarea", PROMPT.replace("fox", "cat"))
        assert len(gpt2.encode(PROMPT.replace("fox", "cat"))) == len(ids)
        page.locator("#patch-heads-run").click()
        page.wait_for_selector("#patch-heads .js-plotly-plot", timeout=60_000)
        expect(page.locator("#patch-note")).to_contain_text("clean")
        z = page.eval_on_selector("#patch-heads .js-plotly-plot", "el => el.data[0].z")
        assert len(z) == 2 and len(z[0]) == 4  # the tiny model: 2 layers x 4 heads
        assert page.evaluate("document.documentElement.scrollWidth") <= context["viewport"]["width"]
        page.screenshot(path=str(ARTIFACTS / f"app-explain-{name}.png"), full_page=True)
        # The token view's attribution mode: the saliency of tokens 0..4 for token 5, both signs.
        page.get_by_role("tab", name="Tokens").click()
        expect(page.locator("#token-view .tv-caption")).to_contain_text("layer 1 · head 1")  # the head picked
        page.locator("#token-view [data-mode=attribution]").click()  # the saliency is kept beside it
        scores = page.eval_on_selector_all(f"{TOKENS}[data-score]", "els => els.map(e => Number(e.dataset.score))")
        assert len(scores) == 5 and any(s > 0 for s in scores) and any(s < 0 for s in scores)
        expect(page.locator("#token-view .tv-legend")).to_have_attribute("data-scale", "diverging")
        page.locator("#token-view [data-mode=attention]").click()
        assert page.eval_on_selector_all(f"{TOKENS}[data-score]", "els => els.length") == 0
        page.locator("#token-view [data-mode=attribution]").click()
        page.locator("#token-view").screenshot(path=str(ARTIFACTS / f"app-saliency-{name}.png"))


def test_a_patch_of_another_length_is_refused_by_name(app_url):
    from playwright.sync_api import expect

    with browser(app_url, **DESKTOP) as page:
        _explained(page, 4)
        page.fill("#patch-corrupted textarea", PROMPT + " again")
        page.locator("#patch-residual-run").click()
        n = len(gpt2.encode(PROMPT))
        expect(page.locator(".toast-body, .toast-wrap").first).to_contain_text(
            f"clean has {n}, corrupted has {n + 1}", timeout=30_000)
