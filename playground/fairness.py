"""Gradio's queue shared fairly between clients, and bounded in what it keeps for them.

Gradio's queue (gradio/queueing.py, `Queue`) serves events first come, first served under
each concurrency id, turns everyone away once `max_size` events wait, runs a job whether or
not anyone opened its stream, and keeps every message of a session until that session reads
it. So one client could lock everyone out (48 fire-and-forget generations filled the queue in
under a second: every other visitor got "Queue is full") or grow the server without bound
(150 unread `/attention` replies kept 1.2 GB). Gradio 6 has no setting for any of this, so
`FairQueue` is a subclass of its `Queue`, put in place of the one `Blocks.queue()` made
(`install`). It overrides `push`, `get_events`, `send_message`, `process_events`,
`remove_from_queue`, `clean_events` and `start`, and swaps the container of pending
messages; tests/test_app_fairness.py::test_gradio_queue_is_what_fairness_expects fails if
Gradio changes what these rely on.

What it does:
- **Per client** (`guard.client_address`: the connection's address, or the first address of
  X-Forwarded-For with --trust-forwarded-for): at most PER_CLIENT_JOBS events queued and
  running, and at most PER_CLIENT_WORK tokens to compute among them (the prompt or text,
  ~3 characters a token up to a context, plus the new tokens); beyond either, HTTP 429 at
  once. The page's own load events (what a visit runs on opening) are counted apart, under
  the same limits (so a visit opens however full the queue is, and they are no way around
  it), and go first in their concurrency id.
- **Fair scheduling**: under each concurrency id, the next event is the waiting client's with
  the fewest running there (then the oldest); a client runs at most half of an id's slots and
  at most half of WORK_IN_FLIGHT at once (always at least one job), so another client's
  request starts as soon as a slot frees, never behind a flood.
- **Admission by work**: the "generate" id's running jobs hold at most WORK_IN_FLIGHT tokens
  to compute together (a lone job always runs): eight short generations run at once, four
  full-context ones.
- **Replies nobody reads**: a job whose stream (`/queue/data`, or `/call/<name>/<id>`) is not
  opened within STREAM_WAIT_S of its join being answered is dropped, queued or running, and
  so is what a session holds unread that long with no stream open. A session holds at most
  UNREAD_MESSAGES messages and UNREAD_BYTES bytes unread (a message that would go over ends
  its job with an error saying so; one message alone may be larger), and all sessions
  together UNREAD_TOTAL_BYTES (over it, the oldest sessions with no stream open go first).
`RouteGuard` tells the queue when a session's stream opens and closes (`reading`) and when an
event's join was answered (`answered`).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from asyncio import Queue as AsyncQueue
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import HTTPException
from gradio.queueing import Event, Queue
from gradio.server_messages import ProcessCompletedMessage, ProcessGeneratingMessage
from gradio.utils import LRUCache, run_coro_in_background

from .guard import client_address

log = logging.getLogger(__name__)

PER_CLIENT_JOBS = 16  # queued + running events of one client (the page's own load events aside)
PER_CLIENT_WORK = 16 * 1024  # tokens to compute among them: 16 full-context jobs
WORK_IN_FLIGHT = 4 * 1024  # tokens the "generate" id computes at once: 4 full-context jobs
WORK_ID = "generate"  # the concurrency id whose events are sized by work (ui.py, api.py)
TEXT_INPUTS = {"prompt", "text", "clean", "corrupted", "plus", "minus"}  # API parameter names and the page's elem_ids
NEW_TOKEN_INPUTS = {"max_new_tokens", "max-new-tokens"}
CHARS_PER_TOKEN = 3  # English BPE is ~4; fewer overestimates odd text, which is safe
MAX_TEXT_TOKENS = 1024  # what a forward pass reads at most (GPT-2's context)
STREAM_WAIT_S = 10.0  # a job's stream must open this soon, and unread messages go after this
UNREAD_MESSAGES = 512  # per session (a streamed token is one message)
UNREAD_BYTES = 16 * 2**20  # per session, as JSON
UNREAD_TOTAL_BYTES = 256 * 2**20  # every session together
SWEEP_EVERY_S = 1.0
RECHECK_S = 0.05  # get_events decides again at least this often, changed or not
SMALL_MESSAGE = 256  # bytes counted for a message without output (estimation, heartbeat)


class MessageBox(AsyncQueue):
    """A session's pending messages (asyncio.Queue, as Gradio's), counting their bytes and
    when the oldest was put. `_put`/`_get` are asyncio.Queue's hooks for subclasses."""

    def __init__(self, owner: Mailboxes):
        super().__init__()
        self.owner: Mailboxes | None = owner
        self.nbytes, self.sizes, self._next = 0, deque(), SMALL_MESSAGE

    def put_sized(self, message: Any, nbytes: int) -> None:
        self._next = nbytes
        self.put_nowait(message)

    def _put(self, item: Any) -> None:
        size, self._next = self._next, SMALL_MESSAGE
        super()._put(item)
        self.sizes.append((time.monotonic(), size))
        self._count(size)

    def _get(self) -> Any:
        item = super()._get()
        _, size = self.sizes.popleft()
        self._count(-size)
        return item

    @property
    def oldest(self) -> float | None:
        return self.sizes[0][0] if self.sizes else None

    def _count(self, delta: int) -> None:
        self.nbytes += delta
        if self.owner is not None:
            self.owner.total += delta

    def detach(self) -> None:
        """Gone from the table: its bytes no longer count (idempotent)."""
        if self.owner is not None:
            self.owner.total -= self.nbytes
            self.owner = None


class Mailboxes(LRUCache):
    """Gradio's `pending_messages_per_session` (an LRUCache of asyncio.Queue), whose queues
    are MessageBoxes and whose `total` is the bytes of every box. When full, the least recently
    made box of a session with no stream open goes (Gradio's drops the least recently made,
    open page or not: thousands of cheap calls with fresh session hashes broke open pages)."""

    def __init__(self, max_size: int, readers: dict[str, int] | None = None):
        super().__init__(max_size)
        self.total, self.readers = 0, readers if readers is not None else {}

    def __setitem__(self, key: str, value: Any) -> None:
        if type(value) is AsyncQueue and value.empty():  # Gradio's push makes a bare one
            value = MessageBox(self)
        if key not in self and len(self) >= self.max_size:
            unread = next((k for k in self if not self.readers.get(k)), None)
            if unread is not None:
                self.pop(unread)
        old = self.get(key)
        if old is not None and old is not value and isinstance(old, MessageBox):
            old.detach()
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        box = self.get(key)
        super().__delitem__(key)
        if isinstance(box, MessageBox):
            box.detach()

    def popitem(self, last: bool = True) -> tuple[str, Any]:
        key, box = super().popitem(last=last)
        if isinstance(box, MessageBox):
            box.detach()
        return key, box

    def pop(self, key: str, *default: Any) -> Any:
        box = super().pop(key, *default)
        if isinstance(box, MessageBox):
            box.detach()
        return box


@dataclass
class Job:
    """What the queue knows of an event beyond Gradio: who sent it, its work, and whether it
    is one of the page's own load events."""
    client: str
    work: int
    page_load: bool


def page_load_fns(blocks: Any) -> set[int]:
    """The events a page visit runs on opening: those triggered by the page's load, and what
    follows them (`.then`)."""
    found = {i for i, fn in blocks.fns.items() if any(trigger == "load" for _, trigger in fn.targets)}
    grew = True
    while grew:
        more = {i for i, fn in blocks.fns.items() if getattr(fn, "trigger_after", None) in found} - found
        found |= more
        grew = bool(more)
    return found


def input_names(blocks: Any, fn: Any) -> list[str | None]:
    """Each input's name: the API parameter's for a documented endpoint, else the component's elem_id."""
    if fn.api_name and fn.api_visibility == "public" and fn.fn is not None:
        import inspect

        return list(inspect.signature(fn.fn).parameters)
    return [getattr(block, "elem_id", None) for block in fn.inputs]


def work_of(names: list[str | None], data: object) -> int:
    """Tokens a job computes: its text (~CHARS_PER_TOKEN characters a token, at most a
    context) and its new tokens."""
    if not isinstance(data, list):
        return 0
    work = 0
    for name, value in zip(names, data):
        if name in TEXT_INPUTS and isinstance(value, str):
            work += min(MAX_TEXT_TOKENS, math.ceil(len(value) / CHARS_PER_TOKEN))
        elif name in NEW_TOKEN_INPUTS and isinstance(value, (int, float)) and math.isfinite(value):
            work += int(min(max(value, 0), MAX_TEXT_TOKENS))
    return max(work, 1)


def message_bytes(message: Any) -> int:
    """About what a message takes as JSON (its output; others are small)."""
    if isinstance(message, (ProcessGeneratingMessage, ProcessCompletedMessage)):
        try:
            return SMALL_MESSAGE + len(orjson.dumps(message.output, default=str,
                                                    option=orjson.OPT_SERIALIZE_NUMPY))
        except (TypeError, orjson.JSONEncodeError):
            return SMALL_MESSAGE
    return SMALL_MESSAGE


class FairQueue(Queue):
    """Gradio's Queue with the rules of the module docstring."""

    trust_forwarded_for = False
    changed, recheck_at = True, 0.0  # get_events' shortcut (see there)

    def setup(self, trust_forwarded_for: bool) -> None:
        """After Queue.__init__: the extra state, and `max_size` taken over from Gradio's check."""
        self.trust_forwarded_for = trust_forwarded_for
        self.queue_limit, self.max_size = self.max_size, None  # push checks it, without page loads
        self.readers: dict[str, int] = {}  # session -> streams open now
        self.pending_messages_per_session = Mailboxes(self.pending_messages_per_session.max_size, self.readers)
        self.jobs: dict[str, Job] = {}
        self.opened: dict[str, float] = {}  # session -> when its last stream opened
        self.answers: dict[str, float] = {}  # session -> when its last join was answered (RouteGuard)
        self.page_loads = page_load_fns(self.blocks)
        self.dropped = {"unread jobs": 0, "unread sessions": 0, "over a session's bound": 0}

    # -- who, how much -------------------------------------------------------------------------
    def _running(self) -> list[Event]:
        return [event for job in self.active_jobs if job is not None for event in job]

    def _queued(self) -> list[Event]:
        return [event for q in self.event_queue_per_concurrency_id.values() for event in q.queue]

    def _job(self, event: Event) -> Job:
        job = self.jobs.get(event._id)
        if job is None:  # an event pushed before install (none in practice)
            job = self.jobs[event._id] = Job(client_address(event.request.scope, self.trust_forwarded_for), 1, False)
        return job

    async def push(self, body: Any, request: Any, username: str | None):
        fn = self.blocks.fns.get(body.fn_index) if isinstance(body.fn_index, int) else None
        if fn is None:
            return await super().push(body, request, username)
        client = client_address(request.scope, self.trust_forwarded_for)
        page_load = fn._id in self.page_loads
        work = work_of(input_names(self.blocks, fn), body.data) if fn.concurrency_id == WORK_ID else 0
        # The page's load events are counted apart (a visit must open however full the queue
        # is), each under the same limits: neither is a way around the other's.
        waiting = [e for e in self._queued() if self._job(e).page_load == page_load]
        if self.queue_limit is not None and len(waiting) >= self.queue_limit:
            return False, f"Queue is full. Max size is {self.queue_limit} and size is {len(waiting)}.", "queue_full"
        theirs = [self._job(e) for e in [*waiting, *self._running()]]
        theirs = [j for j in theirs if j.client == client and j.page_load == page_load]
        if theirs:
            if len(theirs) >= PER_CLIENT_JOBS:
                raise HTTPException(429, f"Too many requests at once: {len(theirs)} of yours are queued or "
                                         f"running (at most {PER_CLIENT_JOBS}); wait for one to finish")
            held = sum(j.work for j in theirs)
            if held + work > PER_CLIENT_WORK:
                raise HTTPException(429, f"Too much work at once: yours queued or running would compute "
                                         f"{held + work:,} tokens (at most {PER_CLIENT_WORK:,}); wait for one "
                                         "to finish")
        result = await super().push(body, request, username)
        if result[0]:
            self.jobs[result[1]] = Job(client, work, page_load)
        self._touch()
        return result

    # -- scheduling ----------------------------------------------------------------------------
    def _touch(self) -> None:
        """What get_events decides from changed (an event came, started, ended or went)."""
        self.changed = True

    def get_events(self) -> tuple[list[Event], bool, str] | None:
        # Gradio asks every millisecond while events wait; unless something changed since the
        # last answer (or RECHECK_S passed), that answer stands: ~40 us of sorting saved a call.
        now = time.monotonic()
        if not self.changed and now < self.recheck_at:
            return None
        self.changed, self.recheck_at = False, now + RECHECK_S
        got = self._get_events()
        if got is not None:
            self.changed = True  # it starts now: the next may fit too
        return got

    def _get_events(self) -> tuple[list[Event], bool, str] | None:
        running: dict[tuple[str, str], int] = {}
        work: dict[tuple[str, str], int] = {}
        for event in self._running():
            job = self._job(event)
            key = (event.concurrency_id, job.client)
            running[key] = running.get(key, 0) + 1
            work[key] = work.get(key, 0) + job.work
        busy = {}
        for (cid, _), w in work.items():
            busy[cid] = busy.get(cid, 0) + w
        ids = list(self.event_queue_per_concurrency_id)
        random.shuffle(ids)
        for cid in ids:
            event_queue = self.event_queue_per_concurrency_id[cid]
            limit = event_queue.concurrency_limit
            if not event_queue.queue or (limit is not None and event_queue.current_concurrency >= limit):
                continue
            event = self._next(cid, event_queue.queue, limit, running, work, busy.get(cid, 0))
            if event is None:
                continue
            events = [event]
            if event.fn.batch:
                events += [e for e in event_queue.queue if e is not event and e.fn == event.fn][
                    : event.fn.max_batch_size - 1]
            for e in events:
                event_queue.queue.remove(e)
            return events, event.fn.batch, cid
        return None

    def _next(self, cid: str, queue: list[Event], limit: int | None, running: dict, work: dict,
              busy: int) -> Event | None:
        """The event to start under `cid`: page loads first, then the client running the fewest
        there, oldest first; None when the best one must wait (its client holds its share, or
        its work does not fit beside what runs)."""
        share = None if limit is None else max(1, math.ceil(limit / 2))
        order = sorted(range(len(queue)), key=lambda i: (
            not self._job(queue[i]).page_load, running.get((cid, self._job(queue[i]).client), 0), i))
        for i in order:
            event, job = queue[i], self._job(queue[i])
            mine = running.get((cid, job.client), 0)
            if share is not None and mine >= share and not job.page_load:
                continue  # this client holds its share: someone else's, if any
            if cid == WORK_ID and busy and busy + job.work > WORK_IN_FLIGHT:
                return None  # wait for work to finish rather than pass a big job by forever
            if cid == WORK_ID and mine and work.get((cid, job.client), 0) + job.work > WORK_IN_FLIGHT // 2:
                continue
            return event
        return None

    async def process_events(self, events: list[Event], *args: Any, **kwargs: Any) -> None:
        try:
            await super().process_events(events, *args, **kwargs)
        finally:
            for event in events:
                self.jobs.pop(event._id, None)
            self._touch()

    async def remove_from_queue(self, event_id: str) -> None:
        await super().remove_from_queue(event_id)
        self._touch()

    async def clean_events(self, *args: Any, **kwargs: Any) -> None:
        await super().clean_events(*args, **kwargs)
        self._touch()

    # -- what sessions keep --------------------------------------------------------------------
    @contextlib.contextmanager
    def reading(self, session: str) -> Iterator[None]:
        """A stream of `session` is open (RouteGuard wraps /queue/data and /call streams)."""
        self.readers[session] = self.readers.get(session, 0) + 1
        self.opened[session] = time.monotonic()
        try:
            yield
        finally:
            left = self.readers.get(session, 1) - 1
            if left > 0:
                self.readers[session] = left
            else:
                self.readers.pop(session, None)

    def answered(self, session: str) -> None:
        """An event's join was answered: its client may open the stream from now on (a busy
        server answers late; the wait counts from the answer)."""
        if session in self.pending_messages_per_session:
            self.answers[session] = time.monotonic()

    def send_message(self, event: Event, event_message: Any) -> None:
        if not event.alive:
            return
        box = self.pending_messages_per_session.get(event.session_hash)
        if not isinstance(box, MessageBox):
            if box is not None:
                super().send_message(event, event_message)
            return
        event_message.event_id = event._id
        size = message_bytes(event_message)
        if box.qsize() and (box.qsize() >= UNREAD_MESSAGES or box.nbytes + size > UNREAD_BYTES):
            self.dropped["over a session's bound"] += 1
            self._end(event, box, f"Reply dropped: this session already holds {box.qsize()} unread messages "
                                  f"({box.nbytes / 2**20:.1f} MB; at most {UNREAD_MESSAGES} and "
                                  f"{UNREAD_BYTES // 2**20} MB). Read the stream (/queue/data) as you go.")
            return
        if self.pending_messages_per_session.total + size > UNREAD_TOTAL_BYTES:
            self._drop_unread_sessions(size, keep=event.session_hash)
        box.put_sized(event_message, size)

    def _end(self, event: Event, box: MessageBox, why: str) -> None:
        """Stop `event` (Gradio stops a generator whose event is not alive) and tell its stream why."""
        event.alive = False
        box.put_sized(ProcessCompletedMessage(output={"error": why, "visible": True, "title": "Error"},
                                              success=False, event_id=event._id), SMALL_MESSAGE)

    def _drop_unread_sessions(self, needed: int, keep: str) -> None:
        """Sessions with no stream open, oldest unread first, until `needed` more bytes fit."""
        boxes = self.pending_messages_per_session
        idle = sorted((box.oldest, session) for session, box in boxes.items()
                      if isinstance(box, MessageBox) and box.oldest is not None
                      and session != keep and not self.readers.get(session))
        for _, session in idle:
            if boxes.total + needed <= UNREAD_TOTAL_BYTES:
                return
            self._drop_session(session)

    def _drop_session(self, session: str) -> None:
        """Forget a session's unread messages and its events (a late stream gets 'session not found')."""
        self.dropped["unread sessions"] += 1
        for event in self._running():
            if event.session_hash == session:
                event.alive = False
        for q in self.event_queue_per_concurrency_id.values():
            q.queue[:] = [e for e in q.queue if e.session_hash != session]
        self.pending_messages_per_session.pop(session, None)
        for event_id in self.pending_event_ids_session.pop(session, set()):
            self.event_ids_to_events.pop(event_id, None)
            self.jobs.pop(event_id, None)
        self.opened.pop(session, None)
        self.answers.pop(session, None)
        self._touch()

    def sweep(self, now: float | None = None) -> None:
        """Drop jobs whose stream never opened within STREAM_WAIT_S, and sessions holding
        messages that long with no stream open."""
        now = time.monotonic() if now is None else now
        stale = set()
        for event in [*self._queued(), *self._running()]:
            session = event.session_hash
            since = max(event.enqueue_time, self.answers.get(session, -math.inf))
            if (not self.readers.get(session) and self.opened.get(session, -math.inf) < event.enqueue_time
                    and now - since > STREAM_WAIT_S):
                stale.add(session)
                self.dropped["unread jobs"] += 1
        for session, box in list(self.pending_messages_per_session.items()):
            since = max(box.oldest or 0.0, self.answers.get(session, -math.inf))
            if (isinstance(box, MessageBox) and box.oldest is not None and not self.readers.get(session)
                    and now - since > STREAM_WAIT_S):
                stale.add(session)
        for session in stale:
            self._drop_session(session)
        if stale:
            log.info("dropped %d sessions nobody read (%s so far)", len(stale),
                     ", ".join(f"{k}: {v}" for k, v in self.dropped.items()))
        live = set(self.event_ids_to_events)
        for event_id in [i for i in self.jobs if i not in live]:
            self.jobs.pop(event_id, None)
        for seen in (self.opened, self.answers):
            for session in [s for s in seen if s not in self.pending_messages_per_session]:
                seen.pop(session, None)

    async def _sweeping(self) -> None:
        while not self.stopped:
            await asyncio.sleep(SWEEP_EVERY_S)
            async with self.delete_lock:
                try:
                    self.sweep()
                except Exception:  # never let the sweeper die
                    log.exception("sweeping the queue failed")

    def start(self) -> None:
        super().start()
        run_coro_in_background(self._sweeping)


def install(blocks: Any, trust_forwarded_for: bool) -> FairQueue:
    """Put a FairQueue in place of the Queue `blocks.queue()` made (before launch)."""
    old = blocks._queue
    queue = FairQueue(live_updates=old.live_updates, concurrency_count=old.max_thread_count,
                      update_intervals=old.update_intervals, max_size=old.max_size, blocks=blocks,
                      default_concurrency_limit=old.default_concurrency_limit)
    queue.setup(trust_forwarded_for)
    blocks._queue = queue
    return queue
