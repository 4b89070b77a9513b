"""Issue 28, items 1, 2, 5, 6 and 9 (partial headers): what one client may cost the others,
against the running app (clients told apart by X-Forwarded-For, which the test app trusts)
and, for the memory budgets, in-process."""
from __future__ import annotations

import inspect
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from test_app_hardening import PageSession, page_config

from playground import fairness
from playground.connections import HEADER_SECONDS

LONG = "local:long"  # 1,024-token context


def api_join(url: str, name: str, data: list, session: str, client: str) -> tuple[int, dict]:
    """Send a documented endpoint's event to the queue without reading its stream: (HTTP status, body)."""
    fn_index = next(d["id"] for d in page_config(url)["dependencies"] if d.get("api_name") == name)
    body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session,
                       "event_data": None, "trigger_id": None}).encode()
    request = urllib.request.Request(url + "gradio_api/queue/join", body,
                                     {"Content-Type": "application/json", "X-Forwarded-For": client})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def stream(url: str, session: str, timeout: float = 60) -> list[dict]:
    """Every message of a session's queue stream until the server closes it."""
    out = []
    try:
        with urllib.request.urlopen(f"{url}gradio_api/queue/data?session_hash={session}", timeout=timeout) as s:
            for line in s:
                if line.startswith(b"data: "):
                    out.append(json.loads(line.removeprefix(b"data: ")))
    except urllib.error.HTTPError as error:
        out.append({"msg": "http_error", "status": error.code})
    return out


def attention_text(tokens: int = 130) -> str:
    return " ".join(["cat", "dog"] * (tokens // 2))


def generate_args(prompt: str, new: int) -> list:
    return [prompt, LONG, 1.0, 0, 1.0, new, 1, False]  # prompt, model, temperature, top_k, top_p, new, seed, stop


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


# -- item 1: replies nobody reads ----------------------------------------------------------------
def test_a_session_keeps_a_bounded_number_of_unread_bytes(app_server):
    """42 `/attention` calls (every head of 4, a 128-token window: ~0.8 MB of JSON each) sent to one
    session and read only once they are done: what waited for the reader is within the
    session's bound, the rest were ended with a message saying why."""
    url, session = app_server.url, uuid.uuid4().hex
    before = rss_mb(app_server.pid)
    args = [attention_text(), LONG, 1, "all", None, 128]
    for i in range(42):
        while (status := api_join(url, "attention", args, session, f"10.20.0.{i % 3}")[0]) == 503:
            time.sleep(0.5)  # the queue is full (32 waiting): these run in a few seconds
        assert status == 200
    time.sleep(fairness.STREAM_WAIT_S - 3)  # they run (the tiny model is quick), nobody reads
    messages = stream(url, session)  # (a reader opened while they still ran would make room)
    done = [m for m in messages if m.get("msg") == "process_completed"]
    kept = [m for m in done if m["success"]]
    dropped = [m for m in done if not m["success"]]
    assert len(done) == 42, [m.get("msg") for m in messages][:20]
    assert dropped and all("Reply dropped" in m["output"]["error"] for m in dropped)
    size = [len(json.dumps(m["output"], separators=(",", ":"))) for m in kept]  # as the server counts
    kept_bytes, biggest = sum(size), max(size)
    assert kept_bytes <= fairness.UNREAD_BYTES + biggest
    print(f"kept {len(kept)} replies, {kept_bytes / 2**20:.1f} MB; dropped {len(dropped)}; "
          f"RSS {before:.0f} -> {rss_mb(app_server.pid):.0f} MB")


def test_jobs_whose_stream_never_opens_are_dropped(app_server):
    """Jobs sent and never read: within seconds the server forgets them and what they
    produced (a stream opened later finds no session), and their client may send again."""
    url, session, client = app_server.url, uuid.uuid4().hex, "10.21.0.1"
    args = [attention_text(), LONG, 1, "all", None, 128]
    assert [api_join(url, "attention", args, session, client)[0] for _ in range(fairness.PER_CLIENT_JOBS)] \
        == [200] * fairness.PER_CLIENT_JOBS
    time.sleep(fairness.STREAM_WAIT_S + 3 * fairness.SWEEP_EVERY_S + 2)
    late = stream(url, session, timeout=30)
    assert late and all(m.get("msg") in ("unexpected_error", "http_error") for m in late), late[:3]
    assert "dropped" in app_server.log.read_text() and "sessions nobody read" in app_server.log.read_text()


# -- item 2: one client must not lock everyone out -------------------------------------------------
def test_a_second_client_is_served_while_one_floods(app_server):
    """One client sends 48 fire-and-forget generations (20,000-character prompt, 512 new
    tokens): it gets HTTP 429 beyond its share, and another client's page opening and its
    own generation are served within seconds meanwhile. The flood's jobs, never read, are
    dropped, after which the flooding client may send again."""
    url = app_server.url
    flood = [api_join(url, "generate", generate_args("x" * 20_000, 512), uuid.uuid4().hex, "10.22.0.1")
             for _ in range(48)]
    codes = [code for code, _ in flood]
    assert codes.count(200) <= fairness.PER_CLIENT_JOBS and codes.count(429) >= 48 - fairness.PER_CLIENT_JOBS, flood[:2]
    assert "wait for one to finish" in next(body["detail"] for code, body in flood if code == 429)

    started = time.monotonic()
    page = PageSession(url, client="10.22.0.2")
    page.run("restore", {})  # what a visit runs on opening
    opened = time.monotonic() - started
    other = PageSession(url, client="10.22.0.2")
    text = other.run("generate", ["Hello", LONG, 1.0, 0, 1.0, 8, 1, False])
    served = time.monotonic() - started
    assert isinstance(text[0], str) and served < 30, (opened, served)
    print(f"while flooded: a page opened in {opened:.1f} s, a generation done {served:.1f} s after")

    time.sleep(fairness.STREAM_WAIT_S + 3 * fairness.SWEEP_EVERY_S + 2)  # the unread flood is dropped
    again = api_join(url, "generate", generate_args("Hello", 4), uuid.uuid4().hex, "10.22.0.1")
    assert again[0] == 200


def test_a_client_runs_at_most_half_of_a_concurrency_id_while_others_wait():
    """In-process scheduling: client A's eight queued events and client B's one under a limit
    of 8: A starts 4, then B's starts though A's came first; page loads go before both."""
    from types import SimpleNamespace

    queue = object.__new__(fairness.FairQueue)

    def event(i: int, client: str, page_load: bool = False) -> SimpleNamespace:
        e = SimpleNamespace(_id=str(i), concurrency_id="view", fn=SimpleNamespace(batch=False))
        queue.jobs[e._id] = fairness.Job(client, 0, page_load)
        return e

    queue.jobs = {}
    waiting = [event(i, "A") for i in range(8)] + [event(8, "B"), event(9, "C", page_load=True)]
    queue.event_queue_per_concurrency_id = {"view": SimpleNamespace(queue=list(waiting), concurrency_limit=8,
                                                                    current_concurrency=0)}
    queue.active_jobs = [None] * 40
    started = []
    for _ in range(6):
        events, _, cid = queue.get_events()
        queue.active_jobs[queue.active_jobs.index(None)] = events
        queue.event_queue_per_concurrency_id[cid].current_concurrency += 1
        started.append(events[0]._id)
    assert started[0] == "9"  # the page load
    assert started[1:] == ["0", "8", "1", "2", "3"]  # A and B alternate by running count, A stops at 4
    assert queue.get_events() is None  # A holds half of the slots and only A waits


def test_work_is_admitted_by_tokens_to_compute():
    from types import SimpleNamespace

    queue = object.__new__(fairness.FairQueue)
    queue.jobs = {}
    waiting = []
    for i, (client, work) in enumerate([("A", 1024), ("B", 1024), ("C", 1024), ("D", 1024), ("E", 1024), ("F", 10)]):
        e = SimpleNamespace(_id=str(i), concurrency_id="generate", fn=SimpleNamespace(batch=False))
        queue.jobs[e._id] = fairness.Job(client, work, False)
        waiting.append(e)
    queue.event_queue_per_concurrency_id = {"generate": SimpleNamespace(queue=waiting, concurrency_limit=8,
                                                                        current_concurrency=0)}
    queue.active_jobs = [None] * 40
    started = []
    while (got := queue.get_events()) is not None:
        queue.active_jobs[queue.active_jobs.index(None)] = got[0]
        started.append(got[0][0]._id)
    assert started == ["0", "1", "2", "3"]  # 4 x 1,024 tokens fill WORK_IN_FLIGHT; E waits (F behind it)
    assert fairness.work_of(["prompt", "model", "max_new_tokens"], ["x" * 30, "gpt2", 64]) == 10 + 64
    assert fairness.work_of(["text"], ["x" * 100_000]) == fairness.MAX_TEXT_TOKENS


# -- item 9 (rest): partial headers ---------------------------------------------------------------------
def closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes `sock` without answering."""
    started = time.monotonic()
    try:
        got = sock.recv(1024)
    except ConnectionResetError:
        got = b""
    assert got == b"", got[:200]
    return time.monotonic() - started


def test_a_connection_sending_part_of_its_headers_is_closed(app_server):
    host, port = urllib.parse.urlsplit(app_server.url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=HEADER_SECONDS + 30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
        waited = closed_after(sock)
    assert HEADER_SECONDS - 1 <= waited <= HEADER_SECONDS + 20, waited
    with socket.create_connection((host, int(port)), timeout=HEADER_SECONDS + 30) as sock:  # nothing sent
        assert closed_after(sock) <= HEADER_SECONDS + 20
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # slow but whole: served
        for part in (b"GET /robots.txt HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            sock.sendall(part)
            time.sleep(1)
        assert sock.recv(1024).startswith(b"HTTP/1.1 ")


# -- what the patches rely on --------------------------------------------------------------------------
def test_gradio_queue_is_what_fairness_expects():
    """FairQueue overrides gradio.queueing.Queue's push, get_events, send_message,
    process_events, remove_from_queue, clean_events and start and swaps its
    pending_messages_per_session; the header timeout
    goes in through uvicorn's HTTP_PROTOCOLS['auto'] because Gradio builds uvicorn's Config
    without `http=`. If any of this changes in Gradio or uvicorn, this fails."""
    import gradio.blocks
    import gradio.http_server
    import uvicorn
    from gradio.queueing import Queue
    from gradio.utils import LRUCache
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from playground.connections import HeaderTimeoutProtocol, use_header_timeout

    expected = {"push": ["self", "body", "request", "username"], "get_events": ["self"],
                "send_message": ["self", "event", "event_message"], "start": ["self"],
                "process_events": ["self", "events", "batch", "begin_time", "fn"],
                "remove_from_queue": ["self", "event_id"], "clean_events": ["self", "session_hash", "event_id"]}
    for name, params in expected.items():
        assert list(inspect.signature(getattr(Queue, name)).parameters) == params, name
    assert "self.pending_messages_per_session[body.session_hash] = AsyncQueue()" in inspect.getsource(Queue.push)
    assert "len(self) >= self.max_size" in inspect.getsource(Queue.push)
    assert "self.get_events()" in inspect.getsource(Queue.start_processing)
    assert "event_queue.queue.append(event)" in inspect.getsource(Queue.push)
    assert "queueing.Queue(" in inspect.getsource(gradio.blocks.Blocks.queue)
    source = inspect.getsource(gradio.http_server)
    assert "uvicorn.Config(" in source and "http=" not in source
    assert issubclass(fairness.Mailboxes, LRUCache) and "LRUCache(" in inspect.getsource(Queue.__init__)
    assert {"connection_made", "data_received", "connection_lost"} <= set(vars(H11Protocol))
    use_header_timeout()
    config = uvicorn.Config(app=lambda *a: None)
    config.load()
    assert config.http_protocol_class is HeaderTimeoutProtocol


def test_the_running_app_uses_the_fair_queue(app_server):
    """The app's log says nothing failed installing it, and a stream of a session the queue
    never saw is refused as Gradio refuses it."""
    assert stream(app_server.url, uuid.uuid4().hex, timeout=30)[0]["msg"] in ("unexpected_error", "http_error")
    log = app_server.log.read_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 300:][:3000]


def test_message_boxes_count_their_bytes():
    import asyncio

    boxes = fairness.Mailboxes(3)
    boxes["a"] = asyncio.Queue()
    box = boxes["a"]
    assert isinstance(box, fairness.MessageBox)
    box.put_sized("x", 1000)
    box.put_sized("y", 500)
    assert boxes.total == 1500 and box.nbytes == 1500 and box.oldest is not None
    assert box.get_nowait() == "x" and boxes.total == 500
    for key in "bcd":  # "a" is pushed out of the LRU: its bytes no longer count
        boxes[key] = asyncio.Queue()
    assert "a" not in boxes and boxes.total == 0
    del boxes["b"]
    assert boxes.total == 0
    readers = {"open": 1}
    boxes = fairness.Mailboxes(2, readers)
    boxes["open"], boxes["x"], boxes["y"] = asyncio.Queue(), asyncio.Queue(), asyncio.Queue()
    assert list(boxes) == ["open", "y"]  # full: the oldest box nobody reads went, not the open page's


# -- item 5: bytes in flight ------------------------------------------------------------------------------
def test_inspections_in_flight_stay_within_the_run_store_budget(long_checkpoint):
    """16 concurrent logit-lens captures over 1,000 tokens with a run store of 2.5 captures:
    at most two are held at once (the store's stored runs go first), every one completes,
    and all is let go with the runs."""
    from concurrent.futures import ThreadPoolExecutor

    from playground.inspection import RunStore
    from playground.models import ModelTable
    from playground.service import Service

    service = Service(ModelTable({LONG: str(long_checkpoint)}), RunStore())
    config = service.models.get(LONG).config
    ids = [i % 1000 for i in range(1000)]
    one = 4 * len(ids) * config.n_embd * (3 + config.n_layer)  # layer 0's attention, every block's output
    store = service.runs = RunStore(max_bytes=int(2.5 * one))
    peak, lock = [0], threading.Lock()
    hold = store.hold

    def counted(nbytes: int, **kwargs):
        release = hold(nbytes, **kwargs)
        with lock:
            peak[0] = max(peak[0], store.held)
        return release

    store.hold = counted

    def lens(_: int) -> int:
        run = service.inspect_ids(LONG, ids, layers=[0])
        assert run.nbytes() == one
        time.sleep(0.2)  # the request reads its answer off the run
        return len(run.capture.blocks)

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(lens, range(16))) == [config.n_layer] * 16
    assert one < peak[0] <= store.max_bytes  # more than one at once, never over the budget
    assert store.held == 0  # every run let go


# -- item 6: loads reserve their memory first --------------------------------------------------------------
def test_concurrent_loads_stay_within_the_model_budget(long_checkpoint, tmp_path):
    """Four checkpoints loaded at once under a budget of 2.5 of them: each load reserves its
    size before it starts, so what is loaded plus what is loading never exceeds the budget
    (least recently used models make way), and every request gets its model."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from playground.models import ModelTable, load_bytes

    sources = {f"local:m{i}": str(shutil.copytree(long_checkpoint, tmp_path / f"m{i}")) for i in range(4)}
    size = load_bytes(sources["local:m0"])
    table = ModelTable(sources, max_bytes=int(2.5 * size))
    seen, lock, loading = [], threading.Lock(), [0]
    real = ModelTable._load

    def load(name, source, tier, *rest):
        with lock:
            loading[0] += size
            seen.append(table._used() + loading[0])
        try:
            time.sleep(0.5)  # the loads overlap
            return real(name, source, tier, *rest)
        finally:
            with lock:
                loading[0] -= size

    table._load = load
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(table.get, sources))
    assert all(m.config.context_length == 1024 for m in models)
    assert len(seen) == 4 and max(seen) <= table.max_bytes, (seen, table.max_bytes)
    assert table._used() <= table.max_bytes and not table._loading
