"""A time limit on a request's headers: a connection that sends only part of them is closed.

uvicorn (0.55) times a connection out only between requests (`timeout_keep_alive`, armed
after a response and cancelled by the next byte that arrives), so a client that opens a
connection and trickles its headers, or sends half of them and waits, holds it (and a file
descriptor) forever: a few thousand such connections exhaust the server. uvicorn has no
setting for it, and Gradio builds uvicorn's `Config` itself (gradio/http_server.py) without
a way to pass one, so the only way in is the protocol class uvicorn picks for `http="auto"`:
`use_header_timeout` points uvicorn's `HTTP_PROTOCOLS["auto"]` at `HeaderTimeoutProtocol`
(uvicorn's own h11 protocol, which "auto" picks when httptools is not installed) before the
server starts. tests/test_app_limits.py checks that the running app's server uses it and
that partial headers are cut off.

The timer runs from a connection's first byte of a request (or from the connection itself)
until h11 has every header; a body is bounded separately (`limits.BodyLimit`).
"""
from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_SECONDS = 10.0


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers have not all
    arrived HEADER_SECONDS after it opened or after the request's first byte."""

    header_seconds = HEADER_SECONDS

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self._header_timer is None:
                self._arm()  # a new request has begun: its headers are not all in yet
        else:
            self._disarm()  # h11 has the request line and every header

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_seconds, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def use_header_timeout() -> None:
    """Make uvicorn's default ("auto") HTTP protocol HeaderTimeoutProtocol, for every server
    this process starts from now on."""
    from uvicorn import config

    config.HTTP_PROTOCOLS["auto"] = f"{__name__}:HeaderTimeoutProtocol"
