"""How fast the token view repaints in Chromium for a 1,000-token text on a 124M-sized model:
a click on a token (or an arrow key) repaints from the browser's own copy of the map, with
no server round trip. Also: the payload's size, and a head change (which does go to the
server: it computes and sends the new head's map).

Starts `app.py` on a random 124M checkpoint (fp32, saved here), generates 10 tokens after a
990-token prompt in Debian's Chromium, then times clicks on 40 tokens spread over the text
in both directions.

    python benchmarks/token_view_click.py      # -> benchmarks/TOKEN_VIEW.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
import gpt2  # noqa: E402
from common import machine_line  # noqa: E402
from playground import token_view, tokens  # noqa: E402
from tests.conftest import free_port, wait_until_up  # noqa: E402
from tests.test_app_server import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

PROMPT_TOKENS, NEW_TOKENS, CLICKS = 990, 10, 40
STORY = ("Once upon a time, there was a girl named Mira. Mira had a red kite. One day, Mira took the "
         "kite to the park. At the park, Mira met a dog. The dog looked at the kite. ")

# Click the tokens at `positions` one after another; per click: the click handler's time (the
# repaint of every token's colour, done synchronously) and the time until the next frame is out.
TIME_CLICKS = """async positions => {
    const out = [];
    for (const p of positions) {
        const span = document.querySelector(`#token-view [data-pos="${p}"]`);
        const start = performance.now();
        span.dispatchEvent(new MouseEvent('click', {bubbles: true}));
        const handled = performance.now();
        await new Promise(done => requestAnimationFrame(() => setTimeout(done, 0)));
        out.push([handled - start, performance.now() - start]);
    }
    return out;
}"""
TIME_KEYS = """async n => {
    const text = document.querySelector('#token-view .tv-text'), out = [];
    for (let i = 0; i < n; i++) {
        const start = performance.now();
        text.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowLeft', bubbles: true}));
        const handled = performance.now();
        await new Promise(done => requestAnimationFrame(() => setTimeout(done, 0)));
        out.push([handled - start, performance.now() - start]);
    }
    return out;
}"""


def summary(times: list[list[float]]) -> str:
    handler, frame = np.array(times).T
    return (f"{statistics.median(handler):.1f} ms (p90 {np.percentile(handler, 90):.1f}) | "
            f"{statistics.median(frame):.1f} ms (p90 {np.percentile(frame, 90):.1f})")


def measure(url: str, prompt: str) -> dict:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            expect(page.locator("#model-status")).to_contain_text("ready", timeout=300_000)
            page.fill("#prompt textarea", prompt)
            page.fill("#max-new-tokens input[type=number]", str(NEW_TOKENS))
            page.press("#max-new-tokens input[type=number]", "Enter")
            page.fill("#seed textarea, #seed input", "1")
            page.locator("#generate").click()
            expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=300_000)
            total = PROMPT_TOKENS + NEW_TOKENS
            page.wait_for_function(f"document.querySelectorAll('#token-view [data-pos]').length === {total}"
                                   " && !document.querySelector('#token-view .live')", timeout=120_000)
            positions = [int(p) for p in np.linspace(1, total - 1, CLICKS)]
            results = {"from": page.evaluate(TIME_CLICKS, positions)}
            page.locator("#token-view [data-dir=to]").click()
            results["to"] = page.evaluate(TIME_CLICKS, list(reversed(positions)))
            page.locator("#token-view [data-dir=from]").click()
            results["keys"] = page.evaluate(TIME_KEYS, CLICKS)
            head_changes = []
            for head in ("head 3", "head 7", "mean over heads", "head 0"):
                start = time.perf_counter()
                page.click("#head input")
                page.get_by_role("option", name=head, exact=True).click()
                expect(page.locator("#token-view .tv-caption")).to_contain_text(head, timeout=60_000)
                head_changes.append(time.perf_counter() - start)
            results["head"] = head_changes
            results["stats"] = page.locator("#stats").inner_text()
            return results
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "TOKEN_VIEW.md")
    args = parser.parse_args()
    ids = gpt2.encode(STORY * 60)[:PROMPT_TOKENS]
    prompt = gpt2.decode(ids)
    assert len(gpt2.encode(prompt)) == PROMPT_TOKENS
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        checkpoint = gpt2.save_model(gpt2.GPT(gpt2.PRESETS["gpt2"]), Path(tmp) / "random-124m.safetensors")
        port, log = free_port(), Path(tmp) / "app.log"
        with log.open("w") as out:
            command = [sys.executable, "app.py", "--model", str(checkpoint), "--port", str(port)]
            app = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_until_up(url, app, log, timeout=300)
            results = measure(url, prompt)
        finally:
            app.terminate()
            app.wait(timeout=30)

    T = PROMPT_TOKENS + NEW_TOKENS
    texts = tokens.text(ids + ids[:NEW_TOKENS])  # the run's own tokens are as long, give or take
    payload = token_view.run_payload("x" * 16, texts, PROMPT_TOKENS, np.tril(np.full((T, T), 1 / T)), 0,
                                     "head 0", T - 1)
    head = results["head"]
    report = [
        "# Token view: repaint time in Chromium, 1,000-token text, 124M-sized model",
        "",
        "`python benchmarks/token_view_click.py` (Debian's Chromium, headless, 1400×1000; random "
        f"124M checkpoint, fp32; {PROMPT_TOKENS}-token prompt + {NEW_TOKENS} new tokens).",
        "",
        machine_line(),
        "",
        f"Run: {results['stats']}",
        "",
        "A click or an arrow key repaints every token from the map the browser already holds; "
        "\"handler\" is the event handler (all colours, titles and weights set), \"next frame\" "
        "runs until the frame after it (requestAnimationFrame, then a task), i.e. the repainted "
        f"text on screen. Median (p90) over {CLICKS} events each.",
        "",
        "| event | handler | next frame |",
        "|---|---|---|",
        f"| click on a token, \"attends to\" (its row) | {summary(results['from'])} |",
        f"| click on a token, \"attended by\" (its column) | {summary(results['to'])} |",
        f"| ← (previous token) | {summary(results['keys'])} |",
        "",
        f"Payload per (run, layer, head) for {T} tokens: {len(json.dumps(payload)):,} bytes of JSON "
        f"({len(payload['weights']):,} of them the base64 map, {T * (T + 1) // 2:,} bytes of weights).",
        "",
        "Changing the head goes to the server (the new head's map is computed from the capture and "
        f"sent): {statistics.median(head):.2f} s median over {len(head)} changes "
        f"([{min(head):.2f}–{max(head):.2f}] s, from the dropdown click to the new caption, "
        "Playwright's own steps included).",
    ]
    args.out.write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
