"""Gradio's sessions, counted in the app's memory budget (issue 14): the app served in this
process, so that what a session holds can be measured by dropping it."""
from __future__ import annotations

import gc
import json
import tracemalloc
import urllib.request
import uuid

from conftest import free_port


def page_visit(url: str, config: dict, **values: object) -> str:
    """A browser's visit: Generate (the page's `ui_generate`, inputs by elem_id, the rest their
    defaults), then the views of the run (`show_run`); its session hash."""
    components = {c["id"]: c for c in config["components"]}
    events = {d["api_name"]: d for d in config["dependencies"] if d.get("api_name")}
    session = uuid.uuid4().hex
    for name in ("ui_generate", "show_run"):
        data = []
        for cid in events[name]["inputs"]:
            props = components[cid].get("props", {})
            data.append(values.get(props.get("elem_id"), None if components[cid]["type"] == "state"
                                   else props.get("value")))
        body = json.dumps({"data": data, "fn_index": events[name]["id"], "session_hash": session,
                           "event_data": None, "trigger_id": None}).encode()
        join = urllib.request.Request(url + "gradio_api/queue/join", body, {"Content-Type": "application/json"})
        urllib.request.urlopen(join, timeout=60).close()
        with urllib.request.urlopen(f"{url}gradio_api/queue/data?session_hash={session}", timeout=300) as stream:
            for line in stream:
                if line.startswith(b"data: "):
                    message = json.loads(line.removeprefix(b"data: "))
                    if message["msg"] == "process_completed":
                        assert message["success"], message["output"]
                        break
    return session


def test_sessions_fit_their_budget(long_checkpoint):
    """Gradio keeps, per session (a page visit, a gradio_client, a bare REST call), a copy of
    the page's config with the last value of every output, until more than SESSION_CAPACITY
    sessions exist. A page that showed a 1,024-token run holds the most (the token view's map,
    the heads grid, the logit-lens grid): the cap times that must fit SESSION_BUDGET. With the
    old cap of 1,000, sessions alone could take 1.6 GB on this 4-head model."""
    from playground import ui
    from playground.app import SESSION_BUDGET, SESSION_CAPACITY

    demo = ui.build(str(long_checkpoint))
    demo.queue(default_concurrency_limit=ui.VIEW_CONCURRENCY, api_open=False)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                ssr_mode=False, enable_monitoring=False, state_session_capacity=SESSION_CAPACITY)
    url = f"http://127.0.0.1:{port}/"
    try:
        with urllib.request.urlopen(url + "config", timeout=30) as response:
            config = json.load(response)
        full = {"prompt": " x" * 1000, "max-new-tokens": 8, "seed": "1"}  # 1,008 of 1,024 tokens
        page_visit(url, config, **full)  # loads the model, imports what the views use
        tracemalloc.start()
        sessions = [page_visit(url, config, **full) for _ in range(3)]
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        for session in sessions:
            demo.state_holder.session_data.pop(session)
        gc.collect()
        per_session = (held - tracemalloc.get_traced_memory()[0]) / len(sessions)
    finally:
        tracemalloc.stop()
        demo.close()
    assert per_session > 1 * 2**20, f"{per_session / 2**20:.2f} MB: not the full page measured"
    assert SESSION_CAPACITY * per_session <= SESSION_BUDGET, \
        f"{SESSION_CAPACITY} sessions x {per_session / 2**20:.2f} MB > {SESSION_BUDGET / 2**20:.0f} MB"


def test_a_session_makes_component_configs_only_when_needed(tiny_checkpoint):
    """A new session copies no component config (Gradio's own copies every one, for each
    request), yet gives deep links the very configs Gradio's would, before and after the
    session changed a component's props and another's value."""
    import gradio as gr
    from gradio.state_holder import SessionState

    from playground import ui
    from playground.sessions import Session

    demo = ui.build(str(tiny_checkpoint))
    lazy, eager = Session(demo), SessionState(demo)
    assert lazy.config_values == {} and len(eager.config_values) > 100
    assert list(lazy.components) == list(eager.components)
    slider = next(b for b in demo.blocks.values() if isinstance(b, gr.Slider))
    textbox = next(b for b in demo.blocks.values() if isinstance(b, gr.Textbox))
    for state in (lazy, eager):
        state[slider._id] = gr.Slider(minimum=1, maximum=7, value=3)
        state._update_value_in_config(textbox._id, "changed")
    assert len(lazy.config_values) == 2
    assert list(lazy.components) == list(eager.components)
    assert any(c["props"].get("value") == "changed" for c in lazy.components)


def test_the_api_stream_sends_an_update_at_most_every_interval(long_checkpoint):
    """/generate's stream (Service.stream_text) gathers the tokens made while its last update
    went out: updates at least UPDATE_EVERY_S apart (the last, with any incomplete bytes,
    follows at once), each text extending the one before, the last the library's text."""
    import asyncio
    import time

    import torch

    import gpt2
    from playground import validate
    from playground.inspection import RunStore
    from playground.models import ModelTable
    from playground.service import UPDATE_EVERY_S, Service

    service = Service(ModelTable({"long": str(long_checkpoint)}), RunStore())
    prompt, new = "Once upon a time", 200
    s = validate.settings(prompt, "long", 0.0, 0, 1.0, new, 0, offered=["long"])

    async def stream() -> list[tuple[float, str]]:
        return [(time.monotonic(), text) async for text in service.stream_text(s)]

    updates = asyncio.run(stream())
    times, texts = [t for t, _ in updates], [text for _, text in updates]
    assert all(b - a >= UPDATE_EVERY_S for a, b in zip(times[:-2], times[1:-1]))
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))
    assert len(texts) < new  # a 2-layer model makes several tokens between updates
    model = gpt2.load_model(long_checkpoint)
    ids = torch.tensor([gpt2.encode(prompt)])
    assert texts[-1] == gpt2.decode(gpt2.generate(model, ids, new)[0, ids.size(1):].tolist())
