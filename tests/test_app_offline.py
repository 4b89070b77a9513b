"""Offline out of the box: no --model, the Hub blocked, nothing cached. The page starts on
the built-in model, says so, generates, and its attention panel names an induction head."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import gpt2
from conftest import ROOT, free_port, wait_until_up
from test_app_server import ARTIFACTS, _heatmap, browser_page


@pytest.fixture(scope="module")
def offline_app(tmp_path_factory):
    home = tmp_path_factory.mktemp("offline")
    port, log = free_port(), home / "app.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home / "hf"),
           "GPT2_WEIGHTS_DIR": str(home / "weights"), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("GPT2_MODEL", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, proc, log)
        yield url, log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_offline_start_runs_the_builtin_model_and_shows_an_induction_head(offline_app):
    from playwright.sync_api import expect

    url, _ = offline_app
    with browser_page(url) as page:
        expect(page.locator("#notice")).to_contain_text("built-in tiny model", timeout=30_000)
        expect(page.locator("#notice")).to_contain_text("python -m gpt2 download gpt2")
        expect(page.locator("#model-status")).to_contain_text("builtin", timeout=30_000)
        expect(page.locator("#model-status")).to_contain_text("ready", timeout=30_000)
        assert "Traceback" not in page.content()

        story = page.locator("#prompt textarea").input_value()
        assert story.startswith("Once upon a time")  # a prompt in the built-in model's world
        assert page.locator("#stop-at-end input").is_checked()  # its stories end with <|endoftext|>
        expect(page.locator("#max-new-tokens input[type=range]")).to_have_attribute("max", "255")
        assert "Mira's red kite" in page.locator(".gallery").first.inner_text()  # its own examples
        page.locator("#induction-example").click()  # a repeated random sequence
        expect(page.locator("#prompt textarea")).not_to_have_value(story, timeout=20_000)
        prompt = page.locator("#prompt textarea").input_value()
        half = len(prompt) // 2
        assert prompt[:half] == prompt[half:]  # the sequence, twice
        page.locator("#generate").click()
        expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=60_000)
        generated = page.locator("#output textarea").input_value()
        assert generated.strip() and prompt[:half].startswith(generated[: len(generated) // 2])
        # The first view is the strongest induction head, on the last token, over the whole text.
        expect(page.locator("#head input")).not_to_have_value("mean over heads", timeout=30_000)
        caption = page.locator("#token-view .tv-caption").inner_text()
        total = len(gpt2.encode(prompt + generated))
        assert caption.startswith(f"Token {total - 1} ") and "layer 1 · head" in caption, caption
        assert page.locator("#token-view [data-pos]").count() == total
        page.get_by_role("tab", name="Heads").click()
        page.wait_for_selector("#head-overview .js-plotly-plot", timeout=30_000)
        overview = page.eval_on_selector("#head-overview .js-plotly-plot", "el => el.data[0].customdata")
        layer, head = int(page.locator("#layer input").input_value().split()[1]), \
            int(page.locator("#head input").input_value().split()[1])
        score = float(overview[layer][head].split("induction ")[1].split("<")[0])
        assert score >= 0.3  # the selected head is named an induction head
        titles = page.locator("#all-heads .annotation-text")
        expect(titles.first).to_be_visible(timeout=20_000)
        named = [t for t in titles.all_text_contents() if "induction" in t]
        assert named, titles.all_text_contents()
        page.get_by_role("tab", name="Heatmap").click()
        page.wait_for_selector("#attention-heatmap .js-plotly-plot", timeout=30_000)
        values = [v for row in _heatmap(page)["z"] for v in row if v is not None]
        assert values and max(values) > 0, "the heatmap is empty"
        page.screenshot(path=str(ARTIFACTS / "app-offline-induction.png"), full_page=True)


def test_the_terminal_says_it_fell_back_to_the_builtin_model(offline_app):
    _, log = offline_app
    lines = log.read_text().splitlines()
    said = [line.split(": ", 1)[1] for line in lines if " playground." in line]
    assert "serving builtin (fp32 weights), loaded on first use" in said
    notice = [line for line in said if "Hub cannot be reached" in line]
    assert len(notice) == 1 and "python -m gpt2 download gpt2" in notice[0] and "**" not in notice[0]
