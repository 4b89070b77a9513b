"""Screenshots of the running app for the README: `python scripts/app_screenshots.py [--model M]`.

Starts `app.py` on a free port, drives it with Chromium (Debian's, at /usr/bin/chromium),
and writes assets/app-*.png: every view at 1400 px wide and at a phone's 390 px (app-phone-*)
on the built-in model's induction example (Compare against a random checkpoint, Explain with
its own example and head patching), the token view in dark mode and while a run writes. Without --model it uses the built-in
model, whose heads show real structure (layer 0 head 2 looks one token back, layer 1
holds induction heads).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, save_random_gpt2, wait_until_up  # noqa: E402
from tests.test_app_server import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

PROMPT = "Once upon a time, there was a girl named Mira. Mira had a red kite. One day, Mira"
VIEWS = "#views"  # the right-hand column: output, stats, layer and head, the tabs


def start(page, url: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator("#model-status")).to_contain_text("ready", timeout=120_000)


def shown_run(page) -> str:
    """The id of the run the token view shows ("" before the first)."""
    return page.evaluate("document.querySelector('#token-view [data-run]')?.dataset.run || ''")


def generate(page, prompt: str | None, max_new: int | None = None, stop_at_end: bool = True) -> str:
    """Start a run (None: keep the prompt or length on the page); returns the id of the run
    shown before it, for `finished`."""
    if prompt is not None:
        page.fill("#prompt textarea", prompt)
    if max_new is not None:
        page.fill("#max-new-tokens input[type=number]", str(max_new))
        page.press("#max-new-tokens input[type=number]", "Enter")
    page.fill("#seed textarea, #seed input", "42")
    page.locator("#stop-at-end input").set_checked(stop_at_end)
    before = shown_run(page)
    page.locator("#generate").click()
    return before


def finished(page, before: str) -> None:
    """Wait until the token view shows a new, finished run."""
    page.wait_for_function(f"""() => {{
        const view = document.querySelector('#token-view [data-run]');
        return view && view.dataset.run !== {before!r} && !view.classList.contains('live');
    }}""", timeout=120_000)
    page.wait_for_timeout(300)  # the other panels of the same update


def tab(page, name: str, ready: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_selector(ready, timeout=60_000)
    page.wait_for_timeout(800)  # Plotly's first draw


def every_view(page, out: Path, prefix: str) -> None:
    """After a finished run on the built-in model's induction example: each tab in turn."""
    tab(page, "Heatmap", "#attention-heatmap .js-plotly-plot")
    page.locator(VIEWS).screenshot(path=str(out / f"{prefix}-heatmap.png"))
    tab(page, "Heads", "#head-overview .js-plotly-plot")
    page.locator(VIEWS).screenshot(path=str(out / f"{prefix}-heads.png"))
    tab(page, "Next token", "#candidates .js-plotly-plot")
    page.locator(VIEWS).screenshot(path=str(out / f"{prefix}-next-token.png"))
    tab(page, "Logit lens", "#lens-grid .js-plotly-plot")
    page.locator(VIEWS).screenshot(path=str(out / f"{prefix}-logit-lens.png"))
    page.get_by_role("tab", name="Knock-out").click()
    page.locator("#ko-induction").click()
    page.wait_for_selector("#ko-texts .sbs", timeout=120_000)
    page.wait_for_timeout(500)
    page.locator(VIEWS).screenshot(path=str(out / f"{prefix}-knockout.png"))
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-run").click()
    page.wait_for_selector("#compare-rows .js-plotly-plot", timeout=120_000)
    page.wait_for_timeout(800)
    page.locator(VIEWS).screenshot(path=str(out / f"{prefix}-compare.png"))
    page.get_by_role("tab", name="Explain").click()
    before = shown_run(page)
    page.locator("#explain-example").click()  # generates the example itself, then explains a token
    finished(page, before)
    page.wait_for_selector("#attribution-heads .js-plotly-plot", timeout=120_000)
    page.locator("#patch-heads-run").click()
    page.wait_for_selector("#patch-heads .js-plotly-plot", timeout=120_000)
    page.wait_for_timeout(800)
    page.locator(VIEWS).screenshot(path=str(out / f"{prefix}-explain.png"))
    page.get_by_role("tab", name="Tokens").click()
    page.wait_for_timeout(300)
    page.locator(VIEWS).screenshot(path=str(out / f"{prefix}-saliency.png"))


def induction_run(page) -> None:
    page.get_by_role("tab", name="Tokens").click()
    page.locator("#induction-example").click()  # a repeated random sequence on the built-in model
    page.wait_for_function(f"document.querySelector('#prompt textarea').value !== {PROMPT!r}")
    finished(page, generate(page, None, stop_at_end=False))


def shoot(url: str, out: Path, max_new: int) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            start(page, url + "?__theme=light")
            generate(page, PROMPT, 200, stop_at_end=False)  # long enough to catch it writing
            page.wait_for_function("document.querySelectorAll('#token-view .live [data-pos]').length > 60",
                                   timeout=60_000)
            page.locator(VIEWS).screenshot(path=str(out / "app-token-view-live.png"))
            page.locator("#stop").click()
            expect(page.locator("#stats")).to_contain_text("Stopped after", timeout=60_000)

            finished(page, generate(page, PROMPT, max_new))
            page.screenshot(path=str(out / "app-token-view.png"), full_page=True)
            induction_run(page)
            page.locator(VIEWS).screenshot(path=str(out / "app-induction-tokens.png"))
            every_view(page, out, "app")
            page.close()

            dark = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme="dark")
            start(dark, url + "?__theme=dark")
            finished(dark, generate(dark, PROMPT, max_new))
            dark.locator(VIEWS).screenshot(path=str(out / "app-token-view-dark.png"))
            dark.close()

            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                     is_mobile=True, has_touch=True)
            start(phone, url + "?__theme=light")
            finished(phone, generate(phone, PROMPT, max_new))
            phone.locator(VIEWS).screenshot(path=str(out / "app-phone-tokens.png"))
            induction_run(phone)
            every_view(phone, out, "app-phone")
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin", help="preset, checkpoint or builtin (default)")
    parser.add_argument("--out", type=Path, default=ROOT / "assets")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        log = Path(tmp) / "app.log"
        with log.open("w") as handle:
            other = save_random_gpt2(Path(tmp) / "random", n_positions=256)  # for Compare: another model
            proc = subprocess.Popen([sys.executable, "app.py", "--model", args.model, "--extra-model", str(other),
                                     "--port", str(port)], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_until_up(url, proc, log)
            shoot(url, args.out, args.max_new_tokens)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
