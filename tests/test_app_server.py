"""End to end: the real app in a subprocess, driven by gradio_client and by Chromium."""
from __future__ import annotations

import http.client
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

import gpt2
from playground import tokens

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
MODEL = "local:tiny"
PROMPT = "The quick brown fox jumps over the lazy dog"


# -- gradio_client ---------------------------------------------------------------------------
def test_generate_endpoint_matches_the_library(client, tiny_checkpoint):
    args = dict(prompt=PROMPT, model=MODEL, temperature=0.9, top_k=50, top_p=0.95,
                max_new_tokens=12, seed=7)
    text = client.predict(**args, api_name="/generate")
    model = gpt2.load_model(tiny_checkpoint)
    ids = gpt2.generate(model, torch.tensor([gpt2.encode(PROMPT)]), 12, temperature=0.9, top_k=50,
                        top_p=0.95, seed=7)[0, len(gpt2.encode(PROMPT)):].tolist()
    assert isinstance(text, str) and text == gpt2.decode(ids)
    assert client.predict(**args, api_name="/generate") == text  # same seed, same text


def test_attention_endpoint(client):
    one = client.predict(text=PROMPT, model=MODEL, layer=1, head="2", size=5, api_name="/attention")
    assert one["tokens"] == tokens.labels(gpt2.encode(PROMPT))[-5:]
    assert (one["start"], one["stop"], one["total"], one["head"]) == (4, 9, 9, 2)
    weights = one["weights"]
    assert len(weights) == 5 and all(len(row) == 5 for row in weights)
    assert all(w == 0 for i, row in enumerate(weights) for w in row[i + 1:])  # causal
    every = client.predict(text=PROMPT, model=MODEL, layer=0, head="all", start=0, size=9,
                           api_name="/attention")
    assert len(every["weights"]) == 4  # heads
    assert all(math.isclose(sum(row), 1, abs_tol=1e-3) for head in every["weights"] for row in head)
    mean = client.predict(text=PROMPT, model=MODEL, layer=0, head="mean", start=0, size=9,
                          api_name="/attention")
    assert mean["head"] == "mean"
    assert math.isclose(mean["weights"][8][3], sum(h[8][3] for h in every["weights"]) / 4, abs_tol=1e-4)


def test_next_tokens_endpoint(client):
    out = client.predict(text=PROMPT, model=MODEL, k=3, api_name="/next_tokens")
    positions = out["positions"]
    assert [p["token"] for p in positions] == tokens.labels(gpt2.encode(PROMPT))[1:]
    assert all(len(p["top"]) == 3 and p["top"][0]["prob"] >= p["prob"] for p in positions)


def test_eight_concurrent_clients_get_their_own_results(app_url, client):
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client

    def ask(i: int, own=None) -> tuple[str, dict]:
        """Mixed models (128- and 1024-token contexts) and settings (greedy, top-k, top-p)."""
        own = own or Client(app_url, verbose=False)  # a client (session) per thread
        model = (MODEL, "local:long")[i % 2]
        text = own.predict(prompt=f"Client {i} writes", model=model, temperature=(1.0, 0.0, 0.7, 1.2)[i % 4],
                           top_k=(0, 0, 40, 5)[i % 4], top_p=(1.0, 1.0, 0.9, 1.0)[i % 4],
                           max_new_tokens=10 + i, seed=i, api_name="/generate")
        maps = own.predict(text=f"Client {i} writes{text}", model=model, layer=1, head="all", start=0,
                           api_name="/attention")
        return text, maps

    alone = [ask(i, client) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(8)))
    assert together == alone
    assert len({text for text, _ in alone}) == 8
    assert [len(maps["tokens"]) for _, maps in alone] == [len(gpt2.encode(f"Client {i} writes{text}"))
                                                           for i, (text, _) in enumerate(alone)]


def test_missing_weights_give_a_friendly_message(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as refused:  # offline, not cached
        client.predict(model="gpt2", api_name="/load_model")
    status = str(refused.value)
    assert "Could not load `gpt2`" in status and "--model" in status and "Traceback" not in status
    with pytest.raises(Exception, match="cannot download"):
        client.predict(prompt="Hi", model="gpt2", max_new_tokens=2, api_name="/generate")


def test_oversized_requests_are_refused(app_url):
    """Refused on the declared length, before the body is read."""
    host, port = app_url.removeprefix("http://").rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("POST", "/gradio_api/queue/join")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", "600000")
        conn.endheaders(b'{"data": ["xxxx')
        assert conn.getresponse().status == 413
    finally:
        conn.close()


# -- real browser ----------------------------------------------------------------------------
@contextmanager
def browser_page(url: str) -> Iterator:
    """A page of Debian's Chromium on `url` (test-artifacts/ ready for screenshots)."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            yield page
        finally:
            browser.close()


def _pick(page, dropdown_id: str, option: str) -> None:
    page.click(f"#{dropdown_id} input")
    page.get_by_role("option", name=option, exact=True).click()


def _heatmap(page) -> dict:
    return page.eval_on_selector("#attention-heatmap .js-plotly-plot", """el => ({
        title: el.layout.title.text, ticks: el.layout.xaxis.ticktext, yticks: el.layout.yaxis.ticktext,
        z: el.data[0].z, cells: el.querySelectorAll('.hm, image').length})""")


def test_browser_generate_and_inspect(app_url):
    from playwright.sync_api import expect

    max_new = 10
    with browser_page(app_url) as page:
        expect(page.locator("#model-status")).to_contain_text("ready", timeout=30_000)
        page.fill("#prompt textarea", PROMPT)
        page.fill("#max-new-tokens input[type=number]", str(max_new))
        page.press("#max-new-tokens input[type=number]", "Tab")
        page.locator("#generate").click()
        expect(page.locator("#output textarea")).not_to_have_value("", timeout=30_000)
        expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=30_000)

        prompt_labels = tokens.labels(gpt2.encode(PROMPT))
        page.get_by_role("tab", name="Heatmap").click()
        page.wait_for_selector("#attention-heatmap .js-plotly-plot", timeout=30_000)
        _pick(page, "layer", "layer 0")
        _pick(page, "head", "head 1")
        expect(page.locator("#attention-heatmap .gtitle")).to_contain_text("Layer 0 · head 1", timeout=20_000)
        first = _heatmap(page)
        assert first["ticks"][:len(prompt_labels)] == prompt_labels
        total = len(prompt_labels) + max_new
        assert page.locator("#stats").inner_text().startswith(f"{max_new} tokens generated")
        assert len(first["ticks"]) == total

        _pick(page, "layer", "layer 1")
        expect(page.locator("#attention-heatmap .gtitle")).to_contain_text("Layer 1", timeout=20_000)
        _pick(page, "head", "head 2")
        expect(page.locator("#attention-heatmap .gtitle")).to_contain_text("Layer 1 · head 2",
                                                                          timeout=20_000)
        after = _heatmap(page)
        assert after["ticks"] == first["ticks"] and after["yticks"] == first["ticks"]
        values = [v for row in after["z"] for v in row if v is not None]
        assert len(values) == total * (total + 1) // 2 and max(values) > 0, "the heatmap is empty"
        assert after["cells"] > 0, "no heatmap drawn"
        assert after["z"] != first["z"]  # another head, other weights
        tick_text = page.locator("#attention-heatmap .xtick text").all_text_contents()
        assert tick_text[:3] == prompt_labels[:3]
        page.screenshot(path=str(ARTIFACTS / "app-attention.png"), full_page=True)

        page.get_by_role("tab", name="Next token").click()
        position = len(prompt_labels) + 2
        page.locator("#token-probs .token").nth(position).click()
        expect(page.locator("#candidates-note")).to_contain_text(f"(position {position})", timeout=20_000)
        expect(page.locator("#candidates .gtitle")).to_contain_text(f"Position {position}")
        bars = page.eval_on_selector("#candidates .js-plotly-plot", "el => el.data[0].x.length")
        assert bars == 10

        page.fill("#prompt textarea", "   ")  # bad input: the page says why, in a toast
        page.locator("#generate").click()
        expect(page.locator(".toast-body")).to_contain_text("prompt is empty", timeout=20_000)

        _pick(page, "model", "gpt2")  # offline and not cached: a message, not a traceback
        expect(page.locator("#model-status")).to_contain_text("Could not load", timeout=20_000)
