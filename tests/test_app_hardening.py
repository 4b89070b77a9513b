"""Issue 28 against the running app: framing, links, cheap checks before model work, odd
input, and what one client may do to the others' sessions."""
from __future__ import annotations

import functools
import html
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import gradio as gr
import pytest
from conftest import BROKEN
from test_app_server import MODEL, browser_page

from playground.guard import FRAME_ANCESTORS
from playground.service import Service
from playground.views.form import LINK_WAITS

TEXT = "The cat sat on the mat. The cat sat on the"  # 12 tokens
DEFAULTS = {  # a good call of each inspection endpoint on local:tiny (2 layers, 4 heads)
    "attention": dict(text=TEXT, model=MODEL, layer=0, head="mean", start=None, size=8),
    "token_attention": dict(text=TEXT, model=MODEL, layer=0, head="mean", position=-1, direction="from"),
    "next_tokens": dict(text=TEXT, model=MODEL, k=5),
    "logit_lens": dict(text=TEXT, model=MODEL, position=-1, k=5),
}
BAD_ARGUMENTS = [  # endpoint, change to its good call, what the refusal says
    ("attention", dict(layer=999), "layer must be between 0 and 1, got 999"),
    ("attention", dict(head="zzz"), "head must be 'mean' or a head number 0..3, got 'zzz'"),
    ("attention", dict(head="4"), "head must be in 0..3 (or 'mean'), got 4"),
    ("attention", dict(start=12), "start must be between 0 and 11, got 12"),
    ("attention", dict(size=0), "size must be between 1 and 128, got 0"),
    ("token_attention", dict(layer=2), "layer must be between 0 and 1, got 2"),
    ("token_attention", dict(head=[1]), "head must be 'mean' or a head number 0..3, got [1]"),
    ("token_attention", dict(position=-13), "position must be between -12 and 11, got -13"),
    ("token_attention", dict(direction="sideways"), "direction must be 'from' or 'to', got 'sideways'"),
    ("next_tokens", dict(k=21), "k must be between 1 and 20, got 21"),
    ("logit_lens", dict(position=12), "position must be between -12 and 11, got 12"),
    ("logit_lens", dict(k=0), "k must be between 1 and 20, got 0"),
]


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


# -- item 8: every argument checked before any model work ------------------------------------------
@pytest.mark.parametrize("endpoint, change, message", BAD_ARGUMENTS, ids=lambda v: str(v)[:24])
def test_bad_arguments_are_refused_by_the_running_app(client, endpoint, change, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as refused:
        client.predict(**{**DEFAULTS[endpoint], **change}, api_name=f"/{endpoint}")
    assert str(refused.value) == message


@pytest.fixture(scope="module")
def endpoints(tiny_checkpoint, monkeypatch_module) -> tuple[dict, list]:
    """The app's endpoints built in this process ({api name: handler}), and a list that each
    forward pass over a text appends to."""
    from playground import ui

    forwards = []
    captured = Service.inspect_ids
    monkeypatch_module.setattr(Service, "inspect_ids",
                               lambda self, name, ids, **kept: forwards.append(len(ids)) or captured(self, name, ids, **kept))
    demo = ui.build(str(tiny_checkpoint))
    return {fn.api_name: fn.fn for fn in demo.fns.values() if fn.api_name in DEFAULTS}, forwards


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_no_forward_pass_before_every_argument_is_checked(endpoints):
    handlers, forwards = endpoints
    for endpoint, change, message in BAD_ARGUMENTS:
        with pytest.raises(gr.Error, match=re.escape(message)):
            handlers[endpoint](**{**DEFAULTS[endpoint], **change})
    assert forwards == []
    for endpoint, call in DEFAULTS.items():  # good calls: one forward pass each over the 12 tokens
        handlers[endpoint](**call)
    assert forwards == [12] * len(DEFAULTS)


# -- item 9: odd input --------------------------------------------------------------------------------
NESTED = b"[" * 100_000 + b"]" * 100_000  # 200 KB, under the body cap


def raw_post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.parametrize("route", ["gradio_api/queue/join", "gradio_api/call/generate",
                                   "gradio_api/call/v2/generate", "gradio_api/cancel", "gradio_api/reset"])
@pytest.mark.parametrize("body", [NESTED, b'{"data": [' + NESTED + b'], "fn_index": 0}',
                                  b'{"data": [' + b"[" * 500 + b"]" * 500 + b'], "fn_index": 0}',
                                  b'{"data": [' + b"9" * 5000 + b'], "fn_index": 0}'],
                         ids=["brackets", "nested-data", "500-levels", "5000-digits"])
def test_odd_bodies_are_refused_without_a_traceback(app_server, route, body):
    logged = len(app_server.log.read_text())
    status, reply = raw_post(app_server.url + route, body)
    assert 400 <= status < 500, (status, reply[:200])
    assert b"Traceback" not in reply
    time.sleep(0.2)
    assert "Traceback" not in app_server.log.read_text()[logged:]


GENERATE = dict(prompt="Hello there", model=MODEL, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=4, seed=1)
HUGE_NUMBERS = [  # change to GOOD, the message (its quote of the value at most 40 characters)
    ({"seed": 10**399}, "seed must be between 0 and 9223372036854775807, got 1" + "0" * 39 + "… (400 characters)"),
    ({"seed": "9" * 400}, "seed must be between 0 and 9223372036854775807, got " + "9" * 40 + "… (400 characters)"),
    ({"top_k": 10**300}, "top_k must be between 0 and 50257, got 1" + "0" * 39 + "… (301 characters)"),
    ({"top_k": 1e300}, "top_k must be between 0 and 50257, got 1" + "0" * 15),
    ({"temperature": 10**400}, "temperature must be a finite number, got 1" + "0" * 39 + "… (401 characters)"),
    ({"max_new_tokens": -(10**50)}, "max_new_tokens must be between 1 and 512, got -1" + "0" * 38 + "… (52 characters)"),
]


@pytest.mark.parametrize("change, message", HUGE_NUMBERS, ids=lambda v: str(v)[:20])
def test_huge_numbers_get_a_specific_message(app_server, client, change, message):
    from gradio_client.exceptions import AppError

    logged = len(app_server.log.read_text())
    with pytest.raises(AppError) as refused:
        client.predict(**{**GENERATE, **change}, api_name="/generate")
    assert str(refused.value).startswith(message)
    assert len(str(refused.value)) < 120
    assert "Traceback" not in app_server.log.read_text()[logged:]


@functools.lru_cache
def page_config(url: str) -> dict:
    with urllib.request.urlopen(url + "config", timeout=30) as response:
        return json.load(response)


class PageSession:
    """A browser's visit without the browser: the page's own events by name, in one session
    hash, each event's inputs by elem_id (the rest their defaults; state from the session),
    sent from `client` (X-Forwarded-For, which the test app trusts)."""

    def __init__(self, url: str, client: str = "127.0.0.1"):
        config = page_config(url)
        self.url, self.session, self.client = url, uuid.uuid4().hex, client
        self.components = {c["id"]: c for c in config["components"]}
        self.events = {d["api_name"]: d for d in config["dependencies"] if d.get("api_name")}

    def join(self, name: str, values: dict | list) -> str:
        """Send the event to the queue (its inputs by elem_id, or all of them as a list); its event id."""
        data = values if isinstance(values, list) else []
        for cid in self.events[name]["inputs"] if isinstance(values, dict) else ():
            component = self.components[cid]
            props = component.get("props", {})
            data.append(values.get(props.get("elem_id"), None if component["type"] == "state" else props.get("value")))
        body = json.dumps({"data": data, "fn_index": self.events[name]["id"], "session_hash": self.session,
                           "event_data": None, "trigger_id": None}).encode()
        request = urllib.request.Request(self.url + "gradio_api/queue/join", body,
                                         {"Content-Type": "application/json", "X-Forwarded-For": self.client})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)["event_id"]

    def messages(self, timeout: float = 120) -> Iterator[dict]:
        """The session's queue stream, message by message, until the server closes it."""
        with urllib.request.urlopen(f"{self.url}gradio_api/queue/data?session_hash={self.session}",
                                    timeout=timeout) as stream:
            for line in stream:
                if line.startswith(b"data: "):
                    yield json.loads(line.removeprefix(b"data: "))

    def run(self, name: str, values: dict | list) -> list:
        """The event's outputs, once it completed."""
        event = self.join(name, values)
        for message in self.messages():
            if message.get("event_id") == event and message["msg"] == "process_completed":
                assert message["success"], message["output"]
                return message["output"]["data"]
        raise AssertionError(f"{name} never completed")


@pytest.mark.parametrize("event, values, message", [
    ("update_lens", {"lens-position": 10**6, "window-start": 0, "window-size": 8}, "greater than maximum value"),
    ("update_view", {"layer": 99, "head": "mean", "window-start": 0, "window-size": 8}, "not in the list of choices"),
])
def test_a_page_event_out_of_its_components_bounds_is_refused_without_a_traceback(app_server, event, values,
                                                                                   message):
    """A page a step behind (a model switch lowering a slider's maximum) or a hand-made request:
    Gradio's own message, and nothing in the log."""
    logged = len(app_server.log.read_text())
    page = PageSession(app_server.url)
    joined = page.join(event, values)
    done = next(m for m in page.messages() if m.get("event_id") == joined and m["msg"] == "process_completed")
    assert not done["success"] and message in json.dumps(done["output"])
    time.sleep(0.2)
    assert "Traceback" not in app_server.log.read_text()[logged:]


def test_a_page_a_step_behind_a_model_switch_is_refused_without_a_traceback(app_server):
    """The model switch lowers max new tokens to the model's limit: Gradio keeps the session's
    own rebuilt slider, and a generate event still sending the old value is refused by it, quietly."""
    logged = len(app_server.log.read_text())
    page = PageSession(app_server.url)
    page.run("model_status", {"max-new-tokens": 60})  # the page's first model: its limit is below 500
    joined = page.join("ui_generate", {"prompt": "a page a step behind", "max-new-tokens": 500, "seed": "1"})
    done = next(m for m in page.messages() if m.get("event_id") == joined and m["msg"] == "process_completed")
    assert not done["success"] and "greater than maximum value" in json.dumps(done["output"])
    time.sleep(0.2)
    assert "Traceback" not in app_server.log.read_text()[logged:]


def test_the_logit_lens_table_escapes_text_once(app_url):
    prompt = "if a <b && c> d"  # tokens: if ·a ·< b ·&& ·c > ·d
    page = PageSession(app_url)
    page.run("ui_generate", {"prompt": prompt, "max-new-tokens": 2, "seed": "1"})
    page.run("show_run", {})
    table = page.run("update_lens", {"lens-position": 2, "window-start": 0, "window-size": 8})[0]
    assert "&amp;lt;" not in table and "&amp;amp;" not in table
    caption = re.search(r'<div class="lens-caption">(.*?)</div>', table)[1]
    assert "<code>·&lt;</code>" in caption and "<code>b</code> followed" in caption
    assert html.unescape(re.sub(r"<[^>]+>", "", caption)).startswith("After position 2 ·<; b followed")


# -- item 10: the docs say what the code does ----------------------------------------------------------
def test_the_docs_say_how_many_generations_are_admitted(tiny_checkpoint):
    """The limit Gradio's queue applies to the "generate" events once each of them has been
    called (it creates a concurrency id's queue at the first event and lowers its limit to any
    smaller one a later event names: an endpoint left at the default used to set 8 where the
    code said 16), with the queue app.py sets up, is the number docs/SECURITY.md and docs/APP.md give."""
    from conftest import ROOT

    from playground import app, ui

    demo = ui.build(str(tiny_checkpoint))
    demo.queue(max_size=app.QUEUE_MAX_SIZE, default_concurrency_limit=ui.VIEW_CONCURRENCY, api_open=False)
    for fn in demo.fns.values():
        if fn.fn is not None:
            demo._queue.create_event_queue_for_fn(fn)  # what each event's first push does
    queues = demo._queue.event_queue_per_concurrency_id
    admitted, views = queues["generate"].concurrency_limit, queues["view"].concurrency_limit
    assert admitted == ui.GENERATE_CONCURRENCY == 8 and views == ui.VIEW_CONCURRENCY
    assert {fn.concurrency_limit for fn in demo.fns.values() if fn.concurrency_id == "generate"} == {admitted}
    for doc in ("docs/SECURITY.md", "docs/APP.md"):
        text = " ".join((ROOT / doc).read_text().split())
        said = re.search(r"at most (\d+) waiting requests; (\d+) generation and API events admitted at once", text)
        assert said and (int(said[1]), int(said[2])) == (app.QUEUE_MAX_SIZE, admitted), doc
        assert f"view updates up to {views} at once" in text, doc
        assert not re.search(r"\b(?!8\b)\d+ generations? (and API )?events (admitted|at once)|admits (?!8\b)\d+ generation",
                             text), doc


# -- item 3: stop floods ----------------------------------------------------------------------------------
def test_a_flood_of_stops_waits_once_per_session(app_url):
    """One session's generation runs; its client sends the page's Stop event 24 times without
    cancelling anything. One Stop waits for the run (as a coroutine, holding no view slot),
    the others return at once, long before the generation ends."""
    page = PageSession(app_url)
    generation = page.join("ui_generate", {"prompt": "Once upon a time", "model": "local:long",
                                           "max-new-tokens": 512, "seed": "3", "temperature": 0})
    completed, stops = {}, []  # event id -> when its reply came
    for message in page.messages():
        if message["msg"] == "process_generating" and message["event_id"] == generation and not stops:
            stops = [page.join("await_stop", {}) for _ in range(24)]  # the run id is in the session now
        if message["msg"] == "process_completed":
            assert message["success"], message["output"]
            completed[message["event_id"]] = time.monotonic()
            if set(stops) | {generation} <= set(completed):
                break
    assert len(stops) == 24
    waited = max(stops, key=completed.get)  # the one that waited until the run was stored
    others = max(completed[s] for s in stops if s != waited)
    # the other 23 returned at once, while the run went on; the one that waited ended with it
    # (its reply may come just before the generation's own: the run is stored before that is sent)
    assert completed[generation] - others > 0.5, completed[generation] - others
    assert abs(completed[waited] - completed[generation]) < 1.0, completed[waited] - completed[generation]


@pytest.mark.parametrize("sessions", [1, 3])
def test_stop_waits_hold_no_thread_and_one_per_session(tiny_checkpoint, sessions):
    """In-process: a run that stays pending; 24 Stops per session at once: one wait per
    session (the rest return at once), all of them coroutines on one event loop."""
    import asyncio
    from types import SimpleNamespace

    from playground import ui

    demo = ui.build(str(tiny_checkpoint))
    handler = next(fn.fn for fn in demo.fns.values() if fn.api_name == "await_stop")
    owner = handler.__self__  # the Page
    run_id = owner.service.runs.reserve()

    async def flood() -> list[bool]:
        requests = [SimpleNamespace(session_hash=f"s{i % sessions}") for i in range(24 * sessions)]
        tasks = [asyncio.ensure_future(handler(run_id, r)) for r in requests]
        await asyncio.sleep(0.3)
        done = [t.done() for t in tasks]
        assert len(owner._stopping) == sessions
        owner.service.runs.release(run_id)  # the generation stopped: the waits end
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return done

    done = asyncio.run(flood())
    assert done.count(False) == sessions and owner._stopping == set()


# -- item 4: sessions ------------------------------------------------------------------------------------
def api_call(url: str, client: str) -> None:
    """A cheap stateless call (/load_model) with a fresh session hash, as a bare REST client makes."""
    call = PageSession(url, client=client)
    call.run("load_model", [MODEL])


def open_page(url: str, client: str) -> PageSession:
    """A visit that generated a run and shows it: its layer menu now offers layers 0 and 1."""
    page = PageSession(url, client=client)
    page.run("ui_generate", {"prompt": "Hello there", "max-new-tokens": 3, "seed": "1"})
    page.run("show_run", {})
    return page


def change_layer(page: PageSession) -> dict:
    """The page's layer menu moved to layer 1: what Gradio answers (an evicted session's menu
    is back to its default choices, so layer 1 is refused)."""
    event = page.join("update_view", {"layer": 1, "head": "1", "window-start": 0, "window-size": 8})
    return next(m for m in page.messages() if m.get("event_id") == event and m["msg"] == "process_completed")


def test_stateless_api_calls_do_not_push_out_open_pages(app_url):
    pages = [open_page(app_url, "10.0.0.1"), open_page(app_url, "10.0.0.2")]
    with ThreadPoolExecutor(4) as pool:  # more fresh sessions than the table holds (256)
        list(pool.map(lambda i: api_call(app_url, f"10.1.{i // 250}.{i % 250}"), range(320)))
    for page in pages:
        answer = change_layer(page)
        assert answer["success"], answer["output"]


def test_a_client_opening_many_pages_pushes_out_only_its_own(app_url):
    from playground.sessions import PAGES_PER_CLIENT

    other = open_page(app_url, "10.0.0.3")
    first = open_page(app_url, "10.0.0.4")
    for _ in range(PAGES_PER_CLIENT):  # each visit's first event makes its session a page
        PageSession(app_url, client="10.0.0.4").run("restore", {})
    refused = change_layer(first)
    assert not refused["success"] and "is not in the list of choices" in str(refused["output"])
    answer = change_layer(other)
    assert answer["success"], answer["output"]


def test_the_session_table_rules():
    """Idle sessions go; API sessions beyond their cap go first; a client's pages beyond its
    cap go, its own; over capacity, the page of the client holding the most."""
    import datetime

    from playground.sessions import SessionTable

    table = SessionTable(idle_s=60, api_sessions=2, per_client=3)
    table.capacity = 6
    now = datetime.datetime.now()

    def visit(session: str, client: str | None = None, ago: float = 0) -> None:
        if client:
            table.note(session, client, page=True)
        table.session_data[session] = object()  # what Gradio's __getitem__ does, then update
        table.time_last_used[session] = now - datetime.timedelta(seconds=ago)
        table.update(session)

    visit("old", "A", ago=120)
    visit("api1")
    assert "old" not in table.session_data  # idle for 120 s > 60
    visit("api2"), visit("api3")
    assert list(table.session_data) == ["api2", "api3"]  # api1: over the API cap
    for i in range(4):
        visit(f"A{i}", "A")
    assert [s for s in table.session_data if s.startswith("A")] == ["A1", "A2", "A3"]  # A's own oldest
    visit("B0", "B")
    assert len(table.session_data) == 6
    visit("C0", "C")  # over capacity: an API session goes first
    assert "api2" not in table.session_data and "api3" in table.session_data
    visit("D0", "D")
    assert "api3" not in table.session_data
    visit("E0", "E")  # only pages left: A holds the most
    assert list(table.session_data) == ["A2", "A3", "B0", "C0", "D0", "E0"]


# -- item 6: failed loads remembered ----------------------------------------------------------------------
def test_a_failed_load_is_not_retried_until_its_files_change(app_server, client, broken_checkpoints):
    """A broken local checkpoint: the first request loads and fails; the next ones get the same
    error at once, without a load (which would hold the page's single load slot); once its file
    changes, the next request loads it again."""
    from gradio_client.exceptions import AppError

    weights = broken_checkpoints["truncated"] / "model.safetensors"

    def loads() -> int:
        return app_server.log.read_text().count("loading model local:truncated\n")

    os.utime(weights)  # whatever an earlier test left remembered: changed now
    before = loads()
    for _ in range(6):
        with pytest.raises(AppError, match=re.escape(BROKEN["truncated"])):
            client.predict(model="local:truncated", api_name="/load_model")
    assert loads() == before + 1
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(AppError, match=re.escape(BROKEN["truncated"])):
        client.predict(model="local:truncated", api_name="/load_model")
    assert loads() == before + 2


def test_a_failed_preset_load_is_retried_after_a_while(monkeypatch, tmp_path):
    """A preset (the Hub did not answer): the same error for FAILED_LOAD_S, then a new try."""
    import gpt2
    from playground import models

    monkeypatch.setenv("GPT2_WEIGHTS_DIR", str(tmp_path))
    tries, clock = [], [1000.0]
    monkeypatch.setattr(models.time, "monotonic", lambda: clock[0])

    def unreachable(name: str, source: str, tier: str, *rest) -> gpt2.GPT:  # rest: a repo, its size cap
        tries.append(name)
        raise gpt2.WeightsError("no Hub")

    monkeypatch.setattr(models.ModelTable, "_load", staticmethod(unreachable))
    table = models.ModelTable({"gpt2": "gpt2"}, max_bytes=2**40)
    for _ in range(5):
        with pytest.raises(gpt2.WeightsError, match="no Hub"):
            table.get("gpt2")
    assert tries == ["gpt2"]
    clock[0] += models.FAILED_LOAD_S + 1
    with pytest.raises(gpt2.WeightsError, match="no Hub"):
        table.get("gpt2")
    assert tries == ["gpt2", "gpt2"]
