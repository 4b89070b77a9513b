"""Issue 14, items 1, 2 and 10 against the running app, with raw HTTP where gradio_client
would not send the request: no uploads, no file serving, no queue bypass, no monitoring, no
private events by name, missing parameters named, warnings on the curl route, slow bodies
cut off."""
from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
import uuid

import pytest
import torch

import gpt2
from test_app_server import browser_page

MODEL = "local:tiny"
LONG_PROMPT = "The rain in Spain stays mainly in the plain. " * 40  # ~440 tokens > the 128 context
PRIVATE = ["ui_generate", "show_run", "model_status", "update_attention", "induction_example", "load_example",
           "knockout", "compare", "restore", "update_lens", "induction_heads", "await_stop", "stop"]


def status_of(url: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None) -> int:
    request = urllib.request.Request(url, body, headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def post_json(url: str, payload: object) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def fn_index(url: str, api_name: str) -> int:
    with urllib.request.urlopen(url + "config", timeout=30) as response:
        return next(d["id"] for d in json.load(response)["dependencies"] if d["api_name"] == api_name)


# -- item 1: uploads and files ----------------------------------------------------------------------
def test_an_upload_is_refused_and_nothing_is_stored(app_server):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + b"\0" * 100_000 + \
        f"\r\n--{boundary}--\r\n".encode()
    for route in ("gradio_api/upload", "upload", "gradio_api/upload?upload_id=x"):
        assert status_of(app_server.url + route, body,
                         {"Content-Type": f"multipart/form-data; boundary={boundary}"}) == 404
    stored = [p for p in app_server.gradio_tmp.rglob("*") if p.is_file()] if app_server.gradio_tmp.exists() else []
    assert stored == []


@pytest.mark.parametrize("route", ["gradio_api/file=", "file=", "gradio_api/file/", "gradio_api/proxy=",
                                   "gradio_api/stream/x/y/z/playlist.m3u8"])
def test_no_file_route_serves_anything(app_server, tiny_checkpoint, route):
    for target in ("/etc/passwd", str(tiny_checkpoint / "config.json"), str(app_server.gradio_tmp / "x")):
        assert status_of(app_server.url + route + target) == 404


# -- item 2: every model-touching call goes through the queue ------------------------------------------
@pytest.mark.parametrize("name", ["generate", "attention", "next_tokens", "load_model", "logit_lens", "ablate",
                                  *PRIVATE])
def test_run_and_api_routes_skip_nothing(app_server, name):
    for route in ("gradio_api/run/", "gradio_api/api/", "run/", "api/"):
        assert status_of(app_server.url + route + name, json.dumps({"data": ["x"]}).encode(),
                         {"Content-Type": "application/json"}) == 404


@pytest.mark.parametrize("name", PRIVATE)
def test_private_events_are_not_callable_by_name(app_server, name):
    for route in ("gradio_api/call/", "gradio_api/call/v2/"):
        status, _ = post_json(app_server.url + route + name, {"data": ["x"]})
        assert status == 404


def test_gradios_other_routes_are_closed(app_server):
    for route in ("monitoring", "monitoring/summary", "monitoring/abc", "gradio_api/mcp/schema",
                  "gradio_api/openapi.json", "gradio_api/upload_progress", "login", "gradio_api/vibe-code",
                  "gradio_api/process_recording", "gradio_api/deep_link", "gradio_api/run-history/buckets"):
        assert status_of(app_server.url + route) == 404, route
    assert "monitoring" not in app_server.log.read_text().lower()  # no secret dashboard URL logged


# -- item 10: missing parameters, warnings on /call, slow bodies ------------------------------------
def test_missing_parameters_are_named(app_server):
    url = app_server.url
    logged = len(app_server.log.read_text())
    status, reply = post_json(url + "gradio_api/call/generate", {"data": []})
    assert status == 422 and reply["error"].startswith("/generate is missing prompt, model, temperature")
    status, reply = post_json(url + "gradio_api/call/attention", {"data": ["Hello"]})
    assert status == 422 and reply["error"].startswith("/attention is missing model, layer, head, start, size")
    status, reply = post_json(url + "gradio_api/call/v2/generate", {"model": MODEL})
    assert status == 422 and reply["error"].startswith("/generate is missing prompt")
    status, reply = post_json(url + "gradio_api/queue/join", {"data": [], "fn_index": fn_index(url, "next_tokens"),
                                                             "session_hash": uuid.uuid4().hex})
    assert status == 422 and "/next_tokens is missing text, model, k" in reply["error"]
    assert "Traceback" not in app_server.log.read_text()[logged:]  # what these requests logged


def call_events(url: str, name: str, data: list) -> list[tuple[str, object]]:
    """POST /gradio_api/call/<name>, then read its event stream: [(event, data), ...]."""
    status, reply = post_json(url + f"gradio_api/call/{name}", {"data": data})
    assert status == 200, reply
    events = []
    with urllib.request.urlopen(f"{url}gradio_api/call/{name}/{reply['event_id']}", timeout=60) as stream:
        for block in stream.read().decode().split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "event" in lines:
                events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_the_explain_endpoints_answer_on_the_curl_route_and_the_queue(app_server):
    """/logit_lens and /ablate are public like the others: /call/<name> and the queue (join by
    fn_index) both reach them; their missing parameters are named."""
    events = call_events(app_server.url, "logit_lens", ["Hello there, friend", MODEL, -1, 3])
    event, data = events[-1]
    assert event == "complete" and [len(e["top"]) for e in data[0]["layers"]] == [3, 3]
    events = call_events(app_server.url, "ablate", ["Hello there", MODEL, ["0.1"], 3, 0, 0, 1, 0])
    event, data = events[-1]
    assert event == "complete" and len(data[0]["baseline_ids"]) == len(data[0]["ablated_ids"]) == 3
    status, reply = post_json(app_server.url + "gradio_api/call/ablate", {"data": []})
    assert status == 422 and reply["error"].startswith("/ablate is missing prompt")
    assert fn_index(app_server.url, "logit_lens") >= 0 and fn_index(app_server.url, "ablate") >= 0


def test_the_curl_route_carries_the_long_prompt_warning(app_server, tiny_checkpoint):
    events = call_events(app_server.url, "generate", [LONG_PROMPT, MODEL, 0.0, 0, 1.0, 4, 1])
    logs = [data for event, data in events if event == "log"]
    n_prompt = len(gpt2.encode(LONG_PROMPT))
    assert len(logs) == 1 and logs[0]["level"] == "warning"
    assert f"The prompt is {n_prompt} tokens; only its last 124 were used" in logs[0]["log"]
    model = gpt2.load_model(tiny_checkpoint)
    ids = gpt2.encode(LONG_PROMPT)[-124:]
    expected = gpt2.decode(gpt2.generate(model, torch.tensor([ids]), 4)[0, 124:].tolist())
    assert events[-1] == ("complete", [expected])
    assert [event for event, _ in events if event == "generating"]  # streamed as before


def test_a_body_trickled_byte_by_byte_is_cut_off(app_server):
    host, port = app_server.url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        started = time.monotonic()
        reply = b""
        sock.settimeout(2)
        while time.monotonic() - started < 45 and b"\r\n\r\n" not in reply:
            try:
                sock.sendall(b"{")
                reply += sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


def test_oversized_bodies_are_still_refused(app_url):
    conn = http.client.HTTPConnection(*app_url.removeprefix("http://").rstrip("/").split(":"), timeout=10)
    try:
        conn.request("POST", "/gradio_api/call/generate", body=b"x" * 600_000,
                     headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 413
    finally:
        conn.close()


# -- the page and gradio_client still get everything they need ---------------------------------------
def test_the_page_and_its_api_docs_hit_no_closed_route(app_url):
    from playwright.sync_api import expect

    refused = []
    with browser_page(app_url) as page:
        page.on("response", lambda r: refused.append(r.url) if r.status in (403, 404, 405) else None)
        page.reload()
        expect(page.locator("#model-status")).to_contain_text("ready", timeout=30_000)
        page.fill("#prompt textarea", "Hello there")
        page.locator("#generate").click()
        expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=30_000)
        page.get_by_text("Use via API").first.click()
        expect(page.get_by_text("/generate").first).to_be_visible(timeout=20_000)
    # The API page also asks for MCP's schema and the monitoring summary, both off here.
    optional = ("/gradio_api/mcp/schema", "/monitoring/summary")
    assert [url for url in refused if not url.split("?")[0].endswith(optional)] == []
