"""The request body cap, as plain ASGI."""
from __future__ import annotations

import asyncio

from playground.limits import BodyLimit


async def echo_length(scope, receive, send):
    """An app that reads the whole body and answers with its length."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def call(chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> list[dict]:
    sent: list[dict] = []
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
             for i, c in enumerate(chunks)]

    async def receive():
        return queue.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(BodyLimit(echo_length, max_bytes=10)({"type": "http", "headers": headers}, receive, send))
    return sent


def test_small_bodies_pass():
    assert call([b"12345"], [(b"content-length", b"5")])[1]["body"] == b"5"


def test_declared_or_streamed_large_bodies_get_413():
    assert call([b"x" * 11], [(b"content-length", b"11")])[0]["status"] == 413
    assert call([b"x" * 6, b"x" * 6], [])[0]["status"] == 413  # chunked, no length declared
    assert call([b""], [(b"content-length", b"-1")])[0]["status"] == 413


def test_a_trickled_body_is_cut_off():
    """A body still incomplete when the time is up gets 408, however slowly it keeps coming."""
    sent: list[dict] = []

    async def receive():
        await asyncio.sleep(0.05)  # a byte every 50 ms, forever
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def send(message):
        sent.append(message)

    app = BodyLimit(echo_length, max_bytes=10**6, seconds=0.3)
    asyncio.run(app({"type": "http", "headers": []}, receive, send))
    assert sent[0]["status"] == 408 and b"not received within 0.3 s" in sent[1]["body"]


def test_reads_after_a_complete_body_wait_without_a_deadline():
    """Streaming responses listen for the client's disconnect after the body: no timeout there."""
    async def waits_for_disconnect(scope, receive, send):
        await receive()  # the (complete) body
        message = await receive()  # arrives long after the body's deadline
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["type"].encode()})

    sent: list[dict] = []
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}, {"type": "http.disconnect"}]

    async def receive():
        if len(messages) == 1:
            await asyncio.sleep(0.4)
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(BodyLimit(waits_for_disconnect, seconds=0.2)({"type": "http", "headers": []}, receive, send))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"http.disconnect"
