"""Issue 28 against the running app: framing, links, cheap checks before model work, odd
input, and what one client may do to the others' sessions."""
from __future__ import annotations

import urllib.parse
import urllib.request

from test_app_server import MODEL, browser_page

from playground.guard import FRAME_ANCESTORS
from playground.ui import LINK_WAITS


def headers_of(url: str) -> dict[str, str]:
    request = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return {k.lower(): v for k, v in error.headers.items()}


def link(url: str, **query: object) -> str:
    return url + "?" + urllib.parse.urlencode(query)


# -- item 7: links and framing ----------------------------------------------------------------------
def test_only_the_page_itself_and_spaces_may_frame_it(app_url):
    for route in ("", "config", "gradio_api/info", "no-such-route"):
        assert headers_of(app_url + route)["content-security-policy"] == FRAME_ANCESTORS
    assert FRAME_ANCESTORS == "frame-ancestors 'self' https://huggingface.co https://*.hf.space"
    from playwright.sync_api import expect

    frame = f'<iframe id="app" src="{app_url}" width="800" height="600"></iframe>'
    with browser_page(app_url + "robots.txt") as page:  # the page's own origin may frame it
        page.set_content(frame)
        expect(page.frame_locator("#app").locator("#model-status")).to_be_visible(timeout=30_000)
    with browser_page("about:blank") as page:  # any other may not: Chromium refuses to show it
        page.set_content(frame)
        page.wait_for_timeout(5000)
        assert page.frame_locator("#app").locator("#model-status").count() == 0


def test_a_links_model_name_is_shown_as_text(app_url):
    from playwright.sync_api import expect

    bad = "<b>bold</b><img src=x id=injected>"
    with browser_page(link(app_url, prompt="Hello", model=bad, max_new_tokens=3, seed=1)) as page:
        warning = page.get_by_text("The link's model was not used", exact=False).first
        expect(warning).to_be_visible(timeout=30_000)
        assert "<b>bold</b><img src=x id=injected>" in warning.inner_text()
        assert page.locator("#injected").count() == 0 and page.locator("b", has_text="bold").count() == 0
        expect(page.locator("#stats")).to_contain_text("seed 1", timeout=60_000)  # the rest of it ran


def test_a_costly_link_waits_for_a_click(app_url):
    """Another model than the page's, and more new tokens than a link may start: the form is
    filled in, nothing is loaded or generated until Generate is pressed."""
    from playwright.sync_api import expect

    with browser_page(link(app_url, prompt="Once upon a time", model="local:long", max_new_tokens=200,
                           seed=2, temperature=0)) as page:
        expect(page.get_by_text(LINK_WAITS).first).to_be_visible(timeout=30_000)
        page.wait_for_timeout(2000)
        assert page.locator("#output textarea").input_value() == ""
        assert "tokens/s" not in page.locator("#stats").inner_text()
        page.locator("#generate").click()
        expect(page.locator("#stats")).to_contain_text("seed 2", timeout=120_000)
        assert "local:long" in page.locator("#stats").inner_text()
