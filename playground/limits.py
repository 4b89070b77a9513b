"""Bounds on a request's body: its size, and how long the client may take to send it.

Gradio's own `max_file_size` covers uploads only (this app takes none). The largest honest
request is a 20,000-character prompt, well under the size cap even JSON-escaped, and sent in
well under the time cap; a body trickled at a byte a second would otherwise hold a
connection (and its buffer) open forever.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

MAX_BODY_BYTES = 512 * 1024
BODY_SECONDS = 20.0  # the whole body, from the first read

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Refused(Exception):
    def __init__(self, status: int, text: str):
        self.status, self.text = status, text


class BodyLimit:
    """ASGI middleware: 413 for a declared or streamed body over `max_bytes`, 408 for one
    that has not fully arrived `seconds` after the app first asked for it."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, seconds: float = BODY_SECONDS):
        self.app, self.max_bytes, self.seconds = app, max_bytes, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = Refused(413, f"Request body too large (limit {self.max_bytes // 1024} KB)")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(send, too_large)
            return
        seen, complete, deadline, started = 0, False, None, False

        async def counted() -> Message:
            nonlocal seen, complete, deadline
            if complete:  # the body is in: later reads only wait for a disconnect
                return await receive()
            deadline = deadline or time.monotonic() + self.seconds
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                raise Refused(408, f"Request body not received within {self.seconds:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise too_large
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except Refused as refused:
            if not started:
                await self._reject(send, refused)

    @staticmethod
    async def _reject(send: Send, refused: Refused) -> None:
        body = refused.text.encode()
        await send({"type": "http.response.start", "status": refused.status,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
