"""Issue 29, the page polished: each interaction in the real Chromium against the running app,
at 1400 px with a mouse and at 390 px with touch."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import gpt2
from test_app_browser import TOKENS, _generate
from test_app_server import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PROMPT

PHONE = dict(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
DESKTOP = dict(viewport={"width": 1400, "height": 900})


@contextmanager
def browser(url: str, **context) -> Iterator:
    """A page of Debian's Chromium on `url`, in a context such as PHONE or DESKTOP."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(**context)
            page.goto(url)
            yield page
        finally:
            chromium.close()


def _run(page, max_new: int = 8) -> int:
    """Generate on the tiny model and wait for the finished token view; returns the token count."""
    total = len(gpt2.encode(PROMPT)) + max_new
    _generate(page, PROMPT, max_new)
    page.wait_for_function(f"document.querySelectorAll('{TOKENS}').length === {total}"
                           " && !document.querySelector('#token-view .live')", timeout=30_000)
    return total


def _selection(page) -> tuple[int, int, str]:
    """(the token painted, the selection a preview returns to, the info line)."""
    return tuple(page.evaluate("""() => {
        const v = document.querySelector('#token-view [data-selected]');
        return [Number(v.dataset.selected), Number(v.dataset.pinned),
                document.querySelector('#token-view .tv-info').textContent];
    }"""))


def test_hover_previews_and_the_selection_comes_back(app_url):
    with browser(app_url, **DESKTOP) as page:
        last = _run(page) - 1
        assert _selection(page)[:2] == (last, last)
        page.locator(f"{TOKENS}[data-pos='3']").hover()  # the last token is selected: hover still previews
        assert _selection(page)[:2] == (3, last)
        page.mouse.move(5, 5)  # the pointer leaves the text
        assert _selection(page)[:2] == (last, last)
        page.locator(f"{TOKENS}[data-pos='5']").click()  # a click pins
        page.locator(f"{TOKENS}[data-pos='2']").hover()
        assert _selection(page)[:2] == (2, 5)
        page.mouse.move(5, 5)
        assert _selection(page)[:2] == (5, 5)
        page.locator(f"{TOKENS}[data-pos='5']").click()  # a second click keeps it
        page.mouse.move(5, 5)
        assert _selection(page)[:2] == (5, 5)


def test_one_tap_selects_on_a_phone(app_url):
    with browser(app_url, **PHONE) as page:
        last = _run(page) - 1
        for target in (4, 4, 6):  # tapping the selected token again keeps it
            page.locator(f"{TOKENS}[data-pos='{target}']").tap()
            selected, pinned, info = _selection(page)
            assert (selected, pinned) == (target, target)
            assert info.startswith(f"token {target} "), info
        assert last != 6
