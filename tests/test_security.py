"""Nothing unsafe exposed: no pickle loading, no paths a client can read, no analytics, no
public share link, bounded request bodies (the 413 test is in test_app_server.py)."""
from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PICKLE = re.compile(r"torch\.load\b|\bimport pickle\b|\bpickle\.|\bdill\b|\bjoblib\b|weights_only\s*=\s*False")
# Every component type the page may contain: none of them uploads a file or takes a path. The
# page's `html` components render our own templates and script (playground/page_script.py): no
# file input, no `server_functions` (calls outside the queue), only queued events.
SAFE_COMPONENTS = {"accordion", "api", "button", "checkbox", "column", "dataset", "dropdown", "form", "highlightedtext",
                   "html", "markdown", "plot", "row", "slider", "state", "tabitem", "tabs", "textbox"}


def test_no_pickle_in_product_code():
    files = [p for p in ROOT.rglob("*.py") if "tests" not in p.parts and ".venv" not in p.parts]
    scanned = {p.relative_to(ROOT).as_posix() for p in files}
    assert {"app.py", "playground/models.py", "playground/ui.py", "gpt2/weights.py",
            "benchmarks/load.py"} <= scanned
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in files
                 for n, line in enumerate(p.read_text().splitlines(), 1) if PICKLE.search(line)]
    assert offenders == []


@pytest.fixture
def launched(monkeypatch, tiny_dir) -> dict:
    """`app.main` up to `launch`, whose arguments (and the Blocks) are recorded instead."""
    import gradio as gr

    import app

    seen: dict = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: seen.update(kwargs, blocks=self))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")  # main must turn it off
    for name in ("SPACE_ID", "GPT2_EXTRA_MODELS", "GRADIO_SERVER_PORT", "ONEDNN_PRIMITIVE_CACHE_CAPACITY",
                 "LRU_CACHE_CAPACITY"):
        monkeypatch.delenv(name, raising=False)  # and put back as they were after the test
    app.main(["--model", str(tiny_dir)])
    return seen


def test_launch_settings(launched):
    from playground.app import ONEDNN_CACHE_ENTRIES, SESSION_CAPACITY
    from playground.guard import FramePolicy, RouteGuard
    from playground.limits import BodyLimit

    demo = launched.pop("blocks")
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and demo.analytics_enabled is False
    assert demo.config["analytics_enabled"] is False
    assert launched["share"] is False and launched["server_name"] == "127.0.0.1"
    assert launched["show_error"] is False  # unexpected errors: no exception text
    assert launched["enable_monitoring"] is False
    assert launched["state_session_capacity"] == SESSION_CAPACITY
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):  # oneDNN's per-shape caches
        assert os.environ[name] == str(ONEDNN_CACHE_ENTRIES)
    assert demo.api_open is False  # Gradio's /run/<name> may not skip the queue
    assert "allowed_paths" not in launched and "blocked_paths" not in launched
    middleware = launched["app_kwargs"]["middleware"]
    assert [m.cls for m in middleware] == [FramePolicy, BodyLimit, RouteGuard]
    assert middleware[2].kwargs["blocks"] is demo
    assert middleware[2].kwargs["trust_forwarded_for"] is False  # no SPACE_ID: no proxy to trust


def test_no_component_takes_files_or_paths(launched):
    types = {component["type"] for component in launched["blocks"].config["components"]}
    assert types <= SAFE_COMPONENTS, f"new component types to review: {types - SAFE_COMPONENTS}"


@pytest.mark.parametrize("path", ["/etc/passwd", "app.py", "{tiny}/model.safetensors", "{tiny}/config.json"])
def test_the_running_app_serves_no_files(app_server, tiny_checkpoint, path):
    path = path.format(tiny=tiny_checkpoint)
    if not path.startswith("/"):
        path = str(ROOT / path)
    for route in ("gradio_api/file=", "file="):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(app_server.url + route + path, timeout=10)
        assert refused.value.code in (403, 404)
