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


def _ranges(page) -> list:
    """Every visible figure's axis ranges (and whether it may be dragged), in page order."""
    return page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
        .filter(el => el.getBoundingClientRect().width > 0 && el._fullLayout)
        .map(el => {
            const L = el._fullLayout;
            const axes = Object.keys(L).filter(k => /^[xy]axis\\d*$/.test(k)).sort();
            return [L.dragmode, axes.map(k => [k, L[k].fixedrange, L[k].range.map(v => +Number(v).toFixed(3))])];
        })""")


def _swipe(page, selector: str, dx: int) -> None:
    """A one-finger horizontal swipe over the plot area of `selector`'s figure (where a drag
    would zoom), as touch events."""
    x, y = page.eval_on_selector(selector, """el => {
        const area = el.querySelector('.nsewdrag').getBoundingClientRect(), box = el.getBoundingClientRect();
        const left = Math.max(area.left, box.left), right = Math.min(area.right, box.right, innerWidth);
        return [left + (right - left) * 0.7, area.top + Math.min(area.height, 200) / 2];
    }""")
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    for i in range(1, 11):
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x + dx * i / 10, "y": y}]})
        page.wait_for_timeout(16)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    page.wait_for_timeout(300)


def test_a_swipe_on_a_figure_scrolls_and_never_zooms_on_a_phone(app_url):
    from playwright.sync_api import expect

    with browser(app_url, **PHONE) as page:
        _run(page, 20)
        for tab, figure in (("Heatmap", "#attention-heatmap"), ("Heads", "#head-overview"), ("Heads", "#all-heads"),
                            ("Next token", "#candidates"), ("Logit lens", "#lens-grid")):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_function(f"""() => {{
                const el = document.querySelector('{figure} .js-plotly-plot');
                return el && el._fullLayout && el._fullLayout.dragmode === false;
            }}""", timeout=30_000)
            page.locator(figure).scroll_into_view_if_needed()
            page.wait_for_timeout(500)  # Plotly settles its autorange after the first draw
            before = _ranges(page)
            assert before and all(drag is False and all(fixed for _, fixed, _ in axes) for drag, axes in before)
            scrolled = page.eval_on_selector(figure, "el => el.scrollLeft")
            _swipe(page, figure, -200)
            assert _ranges(page) == before, f"{tab}: a swipe changed a figure"
            if figure in ("#attention-heatmap", "#lens-grid"):  # wider than the phone: the swipe scrolls it
                assert page.eval_on_selector(figure, "el => el.scrollLeft") > scrolled, figure
            expect(page.locator(f"{figure} .modebar-container")).to_be_hidden()  # no toolbar over the title
            page.screenshot(path=str(ARTIFACTS / f"app-phone-swipe-{figure[1:]}.png"))


def test_figures_keep_their_zoom_on_a_desktop(app_url):
    with browser(app_url, **DESKTOP) as page:
        _run(page)
        page.get_by_role("tab", name="Heatmap").click()
        page.wait_for_selector("#attention-heatmap .js-plotly-plot", timeout=30_000)
        page.wait_for_timeout(500)
        assert all(drag is not False for drag, _ in _ranges(page))


def _shades(page) -> dict:
    """The token view's legend, and each painted token's weight and shade (its colour's alpha)."""
    return page.evaluate("""() => {
        const legend = document.querySelector('#token-view .tv-legend');
        const tokens = [...document.querySelectorAll('#token-view [data-weight]')].map(s => [
            Number(s.dataset.weight), Number(getComputedStyle(s).backgroundColor.match(/[\\d.]+\\)$/)[0].slice(0, -1))]);
        return {scale: legend.dataset.scale, darkest: Number(legend.dataset.darkest),
                visible: legend.getBoundingClientRect().width > 0, text: legend.textContent, tokens};
    }""")


def test_shading_is_absolute_by_default_with_a_relative_toggle_and_a_legend(app_url):
    with browser(app_url, **DESKTOP) as page:
        _run(page)
        shades = _shades(page)
        top = max(w for w, _ in shades["tokens"])
        assert shades["visible"] and shades["scale"] == "absolute" and abs(shades["darkest"] - top) < 1e-4
        assert f"darkest {top:.3f}" in shades["text"] or top < 0.001
        for weight, alpha in shades["tokens"]:  # 0..1 through a square root, whatever the row's maximum
            assert abs(alpha - 0.85 * weight ** 0.5) < 0.01, (weight, alpha)
        page.locator("#token-view .tv-relative").click()
        relative = _shades(page)
        assert relative["scale"] == "relative" and abs(relative["darkest"] - top) < 1e-4
        for weight, alpha in relative["tokens"]:  # linear up to the darkest shown
            assert abs(alpha - 0.85 * weight / top) < 0.01, (weight, alpha)
        page.locator("#token-view").screenshot(path=str(ARTIFACTS / "app-token-view-relative.png"))


def test_the_live_view_shows_the_legend(app_url):
    from playwright.sync_api import expect

    with browser(app_url, **PHONE) as page:
        _generate(page, PROMPT, 400, model="local:long")
        page.wait_for_selector("#token-view .live [data-weight]", timeout=30_000)
        shades = _shades(page)
        page.locator("#stop").click()
        assert shades["visible"] and shades["scale"] == "absolute"
        assert abs(shades["darkest"] - max(w for w, _ in shades["tokens"])) < 1e-4
        # stopped, or (on a loaded machine) finished before the click: either way a run's line
        expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=30_000)


def test_the_speed_line_tells_the_first_token_from_generation(app_url):
    import re

    with browser(app_url, **DESKTOP) as page:
        _run(page, 12)
        stats = page.locator("#stats").inner_text()
    found = re.search(r"first token in ([\d.]+) s · then ([\d.]+) tokens/s · ([\d.]+) s in all", stats)
    assert found, stats
    first, rate, total = map(float, found.groups())
    assert 0 < first <= total
    decoding = total - first  # the 11 tokens after the first, both times rounded to 0.01 s
    assert 11 / (decoding + 0.011) - 0.1 <= rate <= 11 / max(decoding - 0.011, 1e-3) + 0.1


def _download(page) -> dict:
    import json

    with page.expect_download() as download:
        page.locator("#download-json").click()
    return json.loads(open(download.value.path(), encoding="utf-8").read())


def test_the_download_is_the_whole_run_without_visiting_a_tab(app_url):
    from test_app_server import MODEL, _pick

    from playground import tokens

    for context in (DESKTOP, PHONE):
        with browser(app_url, **context) as page:
            page.fill("#seed textarea, #seed input", "9")
            total = _run(page, 6)
            text = page.locator("#output textarea").input_value()
            run = _download(page)
            ids = run["token_ids"]
            assert run["model"] == MODEL and run["seed"] == 9 and run["settings"]["max_new_tokens"] == 6
            assert run["prompt"] == PROMPT and run["generated"] == text == gpt2.decode(ids[run["n_prompt"]:])
            assert len(ids) == total and run["tokens"] == tokens.text(ids)
            assert isinstance(run["layer"], int) and (run["head"] == "mean" or isinstance(run["head"], int))
            assert run["attention"]["stop"] == total and len(run["attention"]["weights"]) == total
            assert run["logit_lens"]["position"] == total - 1 and len(run["logit_lens"]["layers"]) == 2
            assert [p["position"] for p in run["next_tokens"]] == list(range(1, total))
            assert all(p["id"] == ids[p["position"]] and p["top"] for p in run["next_tokens"])
            _pick(page, "head", "head 3")
            page.wait_for_function("document.querySelector('#token-view .tv-caption').textContent.includes('head 3')",
                                   timeout=20_000)
            assert _download(page)["head"] == 3
            _pick(page, "head", "mean over heads")
            page.wait_for_function("document.querySelector('#token-view .tv-caption').textContent.includes('mean')",
                                   timeout=20_000)
            assert _download(page)["head"] == "mean"


def _notes(page) -> dict:
    """Whether the token view is live, and the note over each rendered tab but the token view's."""
    return page.evaluate("""() => ({live: !!document.querySelector('#token-view .live'),
        notes: [...document.querySelectorAll('.tabitem')].filter(t => !t.querySelector('#token-view'))
            .map(t => getComputedStyle(t, '::before').content).map(c => c === 'none' ? '' : c)})""")


def test_views_of_the_previous_run_are_marked_while_a_new_run_streams(app_url):
    from playwright.sync_api import expect

    for context in (DESKTOP, PHONE):
        with browser(app_url, **context) as page:
            _run(page, 6)
            for tab in ("Heatmap", "Heads", "Logit lens", "Compare", "Knock-out"):  # each drawn once
                page.get_by_role("tab", name=tab).click()
            page.fill("#ko-heads textarea, #ko-heads input", "0.1")
            page.locator("#ko-run").click()
            expect(page.locator("#ko-texts .sbs-col")).to_have_count(2, timeout=30_000)
            before = _notes(page)
            assert len(before["notes"]) >= 5 and not any(before["notes"])  # every tab but the token view
            _generate(page, PROMPT, 500, model="local:long")
            page.wait_for_function("""() => {
                const panels = [...document.querySelectorAll('.tabitem')].filter(t => !t.querySelector('#token-view'));
                return document.querySelector('#token-view .live') && panels.every(
                    t => getComputedStyle(t, '::before').content.includes('Previous run'));
            }""", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / f"app-stale-{context['viewport']['width']}.png"))
            page.locator("#stop").click()  # stopped or finished meanwhile, the views are this run's then
            page.wait_for_function("!document.body.classList.contains('views-stale')", timeout=30_000)
            expect(page.locator("#stats")).to_contain_text("tokens/s")
            assert not any(_notes(page)["notes"])
            expect(page.locator("#ko-texts .sbs-col")).to_have_count(0)  # the previous run's knock-out went


def test_knockout_and_compare_say_what_to_do_before_a_result(app_url):
    from playwright.sync_api import expect

    from test_app_server import MODEL, _pick

    for context in (DESKTOP, PHONE):
        with browser(app_url, **context) as page:
            expect(page.locator("#model-status")).to_contain_text("ready", timeout=30_000)
            page.get_by_role("tab", name="Knock-out").click()
            expect(page.locator("#ko-texts .empty-state")).to_contain_text("press Knock out")
            expect(page.locator("#ko-position")).to_be_hidden()
            page.screenshot(path=str(ARTIFACTS / f"app-knockout-empty-{context['viewport']['width']}.png"))
            page.get_by_role("tab", name="Compare").click()
            expect(page.locator("#compare-texts .empty-state")).to_contain_text("press Compare")
            expect(page.locator("#compare-position")).to_be_hidden()
            expect(page.locator("#compare-rows")).to_be_hidden()
            other = page.locator("#compare-model input").input_value()
            assert other and other != MODEL  # never the same model twice
            _pick(page, "model", "local:long")
            expect(page.locator("#compare-model input")).not_to_have_value("local:long")

            _pick(page, "model", MODEL)
            expect(page.locator("#model-status")).to_contain_text(f"{MODEL} ready", timeout=30_000)
            page.get_by_role("tab", name="Compare").click()
            page.locator("#compare-run").click()
            expect(page.locator("#compare-rows .js-plotly-plot")).to_be_visible(timeout=60_000)
            expect(page.locator("#compare-position")).to_be_visible()
            names = page.eval_on_selector("#compare-rows .js-plotly-plot", "el => el.layout.yaxis.ticktext")
            assert len(names) == 2 and all("“" in n for n in names)  # each run's own token named


def test_compare_defaults_to_another_tier_of_the_same_model():
    from playground.views.compare import compare_default

    names = ["local:a", "gpt2", "gpt2 · fp32", "gpt2 · bf16", "gpt2-medium", "gpt2-medium · fp32"]
    assert compare_default(names, "gpt2") == "gpt2 · fp32"
    assert compare_default(names, "gpt2 · fp32") == "gpt2"
    assert compare_default(names, "gpt2-medium · fp32") == "gpt2-medium"
    assert compare_default(names, "local:a") == "gpt2"
    assert compare_default(["local:a"], "local:a") == "local:a"


def test_details_generate_in_view_head_menu_fits_stop_shows_what_it_kept(app_url):
    from playwright.sync_api import expect

    with browser(app_url, **DESKTOP) as page:  # 1400 x 900: Generate is in view on load
        expect(page.locator("#model-status")).to_contain_text("ready", timeout=30_000)
        assert page.locator("#generate").bounding_box()["y"] + 40 < 900
        _generate(page, PROMPT, 500, model="local:long")
        page.wait_for_selector("#token-view .live [data-weight]", timeout=30_000)
        page.locator("#stop").click()
        page.wait_for_function("!document.body.classList.contains('views-stale')", timeout=30_000)
        if "Stopped after" in page.locator("#stats").inner_text():  # else it finished first
            generated = int(page.locator("#stats strong").first.inner_text())
            shown = page.locator("#output textarea").input_value()
            assert len(gpt2.encode(shown)) >= generated - 1  # every kept token is on screen (±1 merge)
            kept = page.evaluate("document.querySelectorAll('#token-view [data-pos]').length")
            assert shown == gpt2.decode(gpt2.encode(shown)) and kept == len(gpt2.encode(PROMPT)) + generated
    with browser(app_url, **PHONE) as page:  # the Head menu shows "mean over heads" whole
        expect(page.locator("#model-status")).to_contain_text("ready", timeout=30_000)
        box = page.locator("#head input").bounding_box()
        text = page.eval_on_selector("#head input", "el => el.scrollWidth <= el.clientWidth")
        assert text and box["width"] > 120
        page.screenshot(path=str(ARTIFACTS / "app-phone-menus.png"))


def _figure_fit(page, figure: str) -> dict:
    """How `figure`'s plot sits in its box: its width and the box's, the scroll hint, and where
    its row labels, y title and x title are (each [left, right] on screen) against the box's
    visible part; the fill behind the row labels."""
    return page.eval_on_selector(figure, """box => {
        const plot = box.querySelector('.js-plotly-plot'), r = box.getBoundingClientRect();
        const span = el => { const b = el.getBoundingClientRect(); return [b.left, b.right]; };
        const hint = box.querySelector('.scroll-hint');
        const patch = plot.querySelector('rect.sticky-rows');
        return {plot: plot.scrollWidth, box: box.clientWidth, left: r.left, right: r.left + box.clientWidth,
                hint: hint && !hint.hidden && hint.getBoundingClientRect().width > 0 ? hint.textContent : '',
                hintSpan: hint && !hint.hidden ? span(hint) : null,
                rows: [...plot.querySelectorAll('.yaxislayer-above .ytick text')].map(span),
                ytitle: [...plot.querySelectorAll('.g-ytitle')].map(span),
                xtitle: [...plot.querySelectorAll('.g-xtitle')].map(span),
                patch: patch ? getComputedStyle(patch).fill : ''};
    }""")


def _luminance(css_color: str) -> float:
    import re

    r, g, b = (int(v) for v in re.findall(r"\d+", css_color)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_wide_figures_scroll_with_their_row_labels_in_view_and_say_so(app_url):
    """Item 3: the heatmap and the logit-lens grid over 36 tokens either fit their panel or,
    scrolled to either end, keep their row labels and axis titles inside the box, with a line
    above saying that they scroll (at 1400 px the lens grid is 1,520 px in 720 px; at 390 px
    both are wider than the 326 px panel)."""
    for context, theme in ((DESKTOP, "light"), (PHONE, "light"), (PHONE, "dark")):
        width = context["viewport"]["width"]
        with browser(app_url + ("?__theme=dark" if theme == "dark" else ""), **context) as page:
            assert _run(page, 36 - len(gpt2.encode(PROMPT))) == 36
            scrolled = []
            for tab, figure in (("Heatmap", "#attention-heatmap"), ("Logit lens", "#lens-grid")):
                page.get_by_role("tab", name=tab).click()
                page.wait_for_function(f"document.querySelector('{figure} .js-plotly-plot')?._fullLayout", timeout=30_000)
                page.locator(figure).scroll_into_view_if_needed()
                fit = _figure_fit(page, figure)
                if fit["plot"] <= fit["box"] + 1:
                    assert not fit["hint"], (figure, fit)
                    continue
                scrolled.append(figure)
                assert "Scroll sideways" in fit["hint"] and f"of 36 columns in view" in fit["hint"], fit
                for end in ("el => { el.scrollLeft = el.scrollWidth; }", "el => { el.scrollLeft = el.scrollWidth / 2; }"):
                    page.eval_on_selector(figure, end)
                    page.wait_for_timeout(200)
                    fit = _figure_fit(page, figure)
                    inside = lambda s: fit["left"] - 1 <= s[0] and s[1] <= fit["right"] + 1  # noqa: E731
                    assert len(fit["rows"]) >= 2 and all(inside(s) for s in fit["rows"]), (figure, width, fit)
                    assert fit["ytitle"] and all(inside(s) for s in fit["ytitle"]), (figure, width, fit)
                    assert fit["xtitle"] and all(inside(s) for s in fit["xtitle"]), (figure, width, fit)
                    assert fit["hint"] and inside(fit["hintSpan"]), (figure, width, fit)
                    assert (_luminance(fit["patch"]) < 0.5) == (theme == "dark"), fit["patch"]  # the page's own ground
                page.screenshot(path=str(ARTIFACTS / f"app-scrolled-{figure[1:]}-{width}-{theme}.png"))
            assert "#lens-grid" in scrolled and (width > 600 or "#attention-heatmap" in scrolled), scrolled


def test_chart_tabs_are_ready_before_their_first_visit(app_url):
    """Item 6: every tab of the views is opened with the page (the Tokens tab stays selected)
    and Plotly is loaded before any figure is drawn, so a run's figures are drawn into their
    tabs as they arrive and a first visit only shows them (it took 1.2-6.3 s)."""
    for context in (DESKTOP, PHONE):
        with browser(app_url, **context) as page:
            page.wait_for_function("document.body.dataset.viewsMounted && document.body.dataset.plotlyLoaded",
                                   timeout=30_000)
            tabs = page.evaluate("""() => {
                const list = document.querySelector('#views [role=tablist]');
                return {tabs: list.querySelectorAll('[role=tab]').length,
                        panels: list.closest('.tabs').querySelectorAll('.tabitem').length,
                        selected: list.querySelector('[aria-selected=true]').textContent.trim(),
                        plotly: typeof window.Plotly?.react === 'function',
                        mounting: document.body.classList.contains('views-mounting')}}""")
            assert tabs == {"tabs": tabs["tabs"], "panels": tabs["tabs"], "selected": "Tokens", "plotly": True,
                            "mounting": False}, tabs
            _run(page, 12)
            figures = ("#attention-heatmap", "#head-overview", "#all-heads", "#candidates", "#lens-grid")
            page.wait_for_function(f"""() => ['{"', '".join(figures)}'].every(f =>
                document.querySelector(f + ' .js-plotly-plot')?._fullLayout) && document.body.dataset.drawing === '0'""",
                                   timeout=30_000)  # out of sight, drawn when the browser was idle
            assert page.evaluate(f"""['{"', '".join(figures)}'].map(f =>
                document.querySelectorAll(f + ' .js-plotly-plot').length)""") == [1] * len(figures)
            for tab, figure in (("Heatmap", "#attention-heatmap"), ("Logit lens", "#lens-grid")):
                started = page.evaluate("performance.now()")
                page.get_by_role("tab", name=tab).click()
                shown = page.evaluate("""async figure => {
                    const el = () => document.querySelector(figure + ' .js-plotly-plot');
                    while (!(el()?.getBoundingClientRect().width > 0)) await new Promise(r => requestAnimationFrame(r));
                    return performance.now(); }""", figure)
                assert shown - started < 1500, (tab, shown - started)  # drawn already: shown, not built
            for tab, figure in (("Heads", "#all-heads"), ("Next token", "#candidates")):  # drawn out of sight:
                page.get_by_role("tab", name=tab).click()  # fitted to their box once shown
                page.wait_for_function(f"""() => {{ const box = document.querySelector('{figure}');
                    const plot = box.querySelector('.js-plotly-plot');
                    return plot.getBoundingClientRect().width > 0 && plot._fullLayout.width <= box.clientWidth + 1; }}""",
                                       timeout=10_000)


def test_a_model_that_cannot_load_offline_is_one_clear_message(app_url):
    """Item 9: picking a preset that is not cached, offline: the status is one paragraph (the
    reason, one way to fix it), the previous model's line ('local:tiny ready · …') is gone and
    no toast adds a second message."""
    from playwright.sync_api import expect

    from test_app_server import MODEL, _pick

    for context in (DESKTOP, PHONE):
        with browser(app_url, **context) as page:
            expect(page.locator("#model-status")).to_contain_text(f"{MODEL} ready", timeout=30_000)
            _pick(page, "model", "gpt2")
            expect(page.locator("#model-status")).to_contain_text("Could not load", timeout=30_000)
            page.wait_for_timeout(500)
            status = page.evaluate("""() => { const s = document.querySelector('#model-status');
                return {paragraphs: s.querySelectorAll('p').length, text: s.innerText,
                        toasts: document.querySelectorAll('.toast-body').length}; }""")
            assert status["paragraphs"] == 1 and status["toasts"] == 0, status
            assert status["text"].count("To fix") == 1 and "HF_HUB_OFFLINE" not in status["text"], status
            assert "ready" not in status["text"] and MODEL not in status["text"], status
            page.screenshot(path=str(ARTIFACTS / f"app-model-offline-{context['viewport']['width']}.png"))
