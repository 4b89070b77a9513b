"""Which of Gradio's HTTP routes the app answers, and what they must carry.

Gradio's server offers far more than this page uses: an upload route and a file route that
serves uploads back (a public disk), `/run/<name>` that skips the queue with its concurrency
limits and size cap, a monitoring dashboard, MCP and more. This ASGI middleware answers only
the routes the page and `gradio_client` use (recorded from a real browser and client;
tests/test_app_guard.py drives both through it) and 404s everything else. Besides:
- `/call/<name>` (the API page's curl snippet) only for the documented endpoints, and its
  event stream also carries the endpoint's warnings as `event: log` (Gradio drops them there,
  so a curl user never heard that a long prompt was cut);
- a request that leaves out an endpoint's parameter is refused with the parameter's name (422)
  instead of reaching Gradio, which answers `{"error": null}` and logs a traceback, and so is
  JSON nested deeper than MAX_DEPTH (Gradio would end in a RecursionError and a 500);
- each queued event tells the session table (`playground/sessions.py`) its session, its
  client and whether it is one of the page's own events, and each open queue stream tells
  the queue (`playground/fairness.py`) that its session is being read.
`FramePolicy`, in front of everything, says who may frame the page.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from .sessions import SessionTable

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API = "/gradio_api"
OPEN_ROUTES = [  # (method, path pattern); <name> routes are added per endpoint
    ("GET", r"/"), ("GET", r"/config/?"), ("GET", r"/theme\.css"), ("GET", r"/favicon\.ico"),
    ("GET", r"/manifest\.json"), ("GET", r"/robots\.txt"), ("GET", r"/(assets|static)/[\w./@-]+"),
    ("GET", API + r"/info/?"), ("GET", API + r"/queue/data"), ("GET", API + r"/heartbeat/[\w-]+"),
    ("GET", API + r"/startup-events"),  # launch() checks the server answers it
    ("POST", API + r"/queue/join"), ("POST", API + r"/cancel"), ("POST", API + r"/reset/?"),
]
CALL = re.compile(API + r"/call/(?:v2/)?(?P<name>\w+)(?:/(?P<event_id>[\w-]+))?/?")
# JSON levels a request may nest (the page's deepest, an event's data, has 4): Gradio walks
# what it receives recursively, so a deeper body could end in a RecursionError and a 500.
MAX_DEPTH = 32
# Who may show the page in a frame: itself, and a Space's page on huggingface.co (which frames
# the app served from <space>.hf.space). Any other site framing it could start work unseen.
FRAME_ANCESTORS = "frame-ancestors 'self' https://huggingface.co https://*.hf.space"


def endpoint_parameters(blocks: Any) -> dict[str, tuple[list[str], list[str]]]:
    """{api name: (parameter names in order, the required ones)} of the public endpoints."""
    out = {}
    for fn in blocks.fns.values():
        if fn.api_name and fn.api_visibility == "public" and fn.fn is not None:
            params = list(inspect.signature(fn.fn).parameters.values())
            out[fn.api_name] = ([p.name for p in params],
                                [p.name for p in params if p.default is inspect.Parameter.empty])
    return out


class FramePolicy:
    """ASGI middleware: every HTTP response says who may frame it (FRAME_ANCESTORS)."""

    def __init__(self, app: ASGIApp, policy: str = FRAME_ANCESTORS):
        self.app, self.header = app, (b"content-security-policy", policy.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != self.header[0]]
                message = {**message, "headers": [*headers, self.header]}
            await send(message)

        await self.app(scope, receive, with_policy)


class RouteGuard:
    """ASGI middleware in front of Gradio's app: see the module docstring."""

    def __init__(self, app: ASGIApp, blocks: Any, sessions: SessionTable | None = None,
                 trust_forwarded_for: bool = False):
        self.app, self.blocks, self.sessions = app, blocks, sessions
        self.trust_forwarded_for = trust_forwarded_for
        self.endpoints = endpoint_parameters(blocks)
        self.open = [(method, re.compile(pattern)) for method, pattern in OPEN_ROUTES]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        call = CALL.fullmatch(path)
        if call is not None and call["name"] in self.endpoints:
            if method == "POST" and call["event_id"] is None:
                await self._checked(scope, receive, send, call["name"], v2="/call/v2/" in path)
                return
            if method == "GET" and call["event_id"] is not None:
                await self._call_stream(scope, receive, send, call["event_id"])
                return
        as_get = "GET" if method == "HEAD" else method  # launch() polls HEAD / until up
        if not any(as_get == m and pattern.fullmatch(path) for m, pattern in self.open):
            await respond(send, 404, {"detail": "Not Found"})
            return
        if method == "POST" and path == API + "/queue/join":
            await self._checked(scope, receive, send, None, v2=False)
            return
        if method == "GET" and path == API + "/queue/data":
            session = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash", [""])[0]
            if not await self._known(session, send):
                return
            with self._reading(session):
                await self.app(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _known(self, session: str, send: Send) -> bool:
        """Whether the queue holds `session`; if not, a 404 saying so (Gradio would start the
        stream, then fail inside it and log a traceback)."""
        if session in self.blocks._queue.pending_messages_per_session:
            return True
        await respond(send, 404, {"detail": "Session not found: it sent no event, or what it had "
                                            "was dropped unread (see the app's limits)"})
        return False

    def _reading(self, session: str) -> contextlib.AbstractContextManager:
        """The queue's note that a stream of `session` is open (fairness.FairQueue.reading),
        so that it keeps the session's jobs and replies."""
        reading = getattr(self.blocks._queue, "reading", None)
        return reading(session) if reading is not None and session else contextlib.nullcontext()

    # -- arguments ---------------------------------------------------------------------------
    async def _checked(self, scope: Scope, receive: Receive, send: Send, name: str | None, v2: bool) -> None:
        """Read the (size-capped) body, refuse it if a parameter is missing, else replay it."""
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
        payload, problem = parsed(body)
        problem = problem or self._missing(payload, name, v2)
        if problem:
            await respond(send, 422, {"error": problem})
            return
        if name is None:
            self._note_session(scope, payload)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        answer = b""

        async def kept(message: Message) -> None:  # the answer's body, for its event id
            nonlocal answer
            if message["type"] == "http.response.body" and len(answer) < 4096:
                answer += message.get("body", b"")
            await send(message)

        await self.app(scope, replay, kept)
        self._answered(payload, answer)

    def _answered(self, payload: object, answer: bytes) -> None:
        """Tell the queue (fairness.FairQueue.answered) that an event's join was answered: its
        client has had the event id from then on, and its stream may open."""
        answered = getattr(self.blocks._queue, "answered", None)
        if answered is None:
            return
        session = payload.get("session_hash") if isinstance(payload, dict) else None
        if not isinstance(session, str):  # /call: the event's own id is its session
            try:
                session = json.loads(answer).get("event_id")
            except (ValueError, AttributeError):
                return
        if isinstance(session, str):
            answered(session)

    def _note_session(self, scope: Scope, payload: object) -> None:
        """Tell the session table which client sent a queued event, and whether it is one of
        the page's own events (which make its session a page)."""
        if self.sessions is None or not isinstance(payload, dict):
            return
        fn_index, session = payload.get("fn_index"), payload.get("session_hash")
        fn = self.blocks.fns.get(fn_index) if isinstance(fn_index, int) else None
        if fn is not None and isinstance(session, str):
            self.sessions.note(session, client_address(scope, self.trust_forwarded_for),
                               page=fn.api_name not in self.endpoints)

    def _missing(self, payload: object, name: str | None, v2: bool) -> str | None:
        if not isinstance(payload, dict):
            return None
        if name is None:  # queue/join names its event by index
            fn = self.blocks.fns.get(payload.get("fn_index")) if isinstance(payload.get("fn_index"), int) else None
            if fn is None:
                return None
            if fn.api_name not in self.endpoints:
                wanted = len(fn.inputs)
                data = payload.get("data")
                given = len(data) if isinstance(data, list) else 0
                return None if given >= wanted else f"expected {wanted} input values, got {given}"
            name = fn.api_name
        names, required = self.endpoints[name]
        if v2:
            missing = [p for p in required if p not in payload]
        else:
            data = payload.get("data")
            missing = names[len(data):] if isinstance(data, list) else names
        if not missing:
            return None
        return (f"/{name} is missing {', '.join(missing)}: send every parameter ({', '.join(names)}), "
                + ("by name" if v2 else "in this order in \"data\""))

    # -- /call/<name>/<event id> ---------------------------------------------------------------
    async def _call_stream(self, scope: Scope, receive: Receive, send: Send, event_id: str) -> None:
        """Gradio's /call event stream, rebuilt from its queue stream so that warnings reach
        the client too (`event: log`); the other events are as Gradio sends them."""
        queue = self.blocks._queue
        event = queue.event_ids_to_events.get(event_id)
        session = event.session_hash if event is not None else next(
            (s for s, ids in queue.pending_event_ids_session.items() if event_id in ids), event_id)
        scope = {**scope, "path": API + "/queue/data", "raw_path": (API + "/queue/data").encode(),
                 "query_string": f"session_hash={session}".encode()}
        pending = b""

        async def translated(message: Message) -> None:
            nonlocal pending
            if message["type"] != "http.response.body":
                await send(message)
                return
            pending += message.get("body", b"")
            *complete, pending = pending.split(b"\n\n")
            out = "".join(call_event(chunk) for chunk in complete)
            await send({"type": "http.response.body", "body": out.encode(),
                        "more_body": message.get("more_body", False)})

        if not await self._known(session, send):
            return
        with self._reading(session):
            await self.app(scope, receive, translated)


def parsed(body: bytes) -> tuple[object, str | None]:
    """A request's JSON (None when it is not JSON: Gradio answers that itself, 422), or why
    it is refused: nested deeper than MAX_DEPTH."""
    too_deep = f"the request body nests deeper than {MAX_DEPTH} levels"
    try:
        payload = json.loads(body)
    except RecursionError:  # Gradio would parse it again, fail the same way and answer 500
        return None, too_deep
    except ValueError:
        return None, None
    return payload, too_deep if nests_deeper(payload, MAX_DEPTH) else None


def client_address(scope: Scope, trust_forwarded_for: bool) -> str:
    """Who sent a request: the first address of X-Forwarded-For when the operator trusts the
    proxy in front to set it (--trust-forwarded-for), else the connection's own address."""
    if trust_forwarded_for:
        forwarded = dict(scope.get("headers") or []).get(b"x-forwarded-for", b"").decode("latin-1")
        first = forwarded.split(",")[0].strip()
        if first:
            return first
    client = scope.get("client")
    return client[0] if client else "unknown"


def nests_deeper(value: object, limit: int) -> bool:
    """Whether lists and dicts in `value` nest more than `limit` levels (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            if level > limit:
                return True
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def call_event(chunk: bytes) -> str:
    """One queue-stream message as the /call stream's event (Gradio's format), '' to drop."""
    if not chunk.startswith(b"data: "):
        return ""
    msg = json.loads(chunk.removeprefix(b"data: "))
    kind = msg.get("msg")
    if kind == "heartbeat":
        return "event: heartbeat\ndata: null\n\n"
    if kind == "log":
        data = {"level": msg.get("level"), "log": msg.get("log"), "title": msg.get("title")}
        return f"event: log\ndata: {json.dumps(data)}\n\n"
    if kind in ("process_generating", "process_completed"):
        if msg.get("success"):
            event = "generating" if kind == "process_generating" else "complete"
            return f"event: {event}\ndata: {json.dumps(msg['output'].get('data'))}\n\n"
        return f"event: error\ndata: {json.dumps(msg.get('output'))}\n\n"
    if kind == "unexpected_error":
        return f"event: error\ndata: {json.dumps(msg.get('message'))}\n\n"
    return ""


async def respond(send: Send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
