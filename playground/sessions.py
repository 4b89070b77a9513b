"""Gradio's sessions, kept so that no client can push out another's open page.

Gradio keeps a session per page visit, per `gradio_client` and per bare REST call (a copy of
the page's config with the last value of every output), and by default drops the least
recently used once there are more than its capacity: 320 cheap API calls with fresh session
hashes used to wipe every open page (which then failed on its next event). Here a session
counts as a page once it runs one of the page's own (private) events; the rest are API
sessions, which the stateless endpoints never need again. What is dropped, in this order:
- any session idle for more than `idle_s`;
- API sessions beyond `api_sessions`, and first whenever there are more than `capacity`;
- a client's pages beyond `per_client` (that client's least recently used);
- over `capacity` with only pages left, the least recently used page of the client with the
  most pages.
`RouteGuard` tells the table which client sent each queued event (`note`).

Each new session is a `Session`: Gradio's, without the copy of every component's config that
Gradio makes up front for each one (for deep links, which this app does not offer): at 8
users streaming through the API that copy was 23% of the event loop's work (LOAD.md
"profile"), made once per request.
"""
from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from gradio.state_holder import SessionState, StateHolder

SESSION_IDLE_S = 3600.0  # Gradio keeps a closed page's state as long
API_SESSIONS = 64  # 0.17 MB each (tests/test_app_sessions.py measures a page's)
PAGES_PER_CLIENT = 32


class Session(SessionState):
    """Gradio's SessionState whose component configs are made when the session first changes
    a component (as Gradio's own methods already do for one it lacks) or when all of them are
    asked for (`components`: deep links), not all at its start."""

    def __init__(self, blocks: Any):
        super().__init__(SimpleNamespace(default_config=blocks.default_config, blocks={}))  # no configs yet
        self.page_blocks = blocks.blocks  # those Gradio would have made configs of

    @property
    def components(self) -> Iterator[dict]:
        seen = set()
        for key, block in self.blocks_config.blocks.items():
            if key in self.page_blocks or key in self.config_values:
                seen.add(key)
                config = self.config_values.get(key)
                if config is None:
                    config = self.blocks_config.config_for_block(key, [], block)
                if config:
                    yield config
        yield from (config for key, config in self.config_values.items() if key not in seen and config)


class SessionTable(StateHolder):
    """Gradio's StateHolder with the eviction rules of the module docstring."""

    def __init__(self, idle_s: float = SESSION_IDLE_S, api_sessions: int = API_SESSIONS,
                 per_client: int = PAGES_PER_CLIENT):
        super().__init__()
        self.idle = datetime.timedelta(seconds=idle_s)
        self.api_sessions, self.per_client = api_sessions, per_client
        self.pages: dict[str, str] = {}  # page session -> its client

    def install(self, blocks: Any) -> None:
        """Take over from the holder Gradio's server made at launch, with its sessions."""
        app = blocks.server_app
        with app.state_holder.lock:
            self.session_data.update(app.state_holder.session_data)
            self.time_last_used.update(app.state_holder.time_last_used)
        self.set_blocks(blocks)  # capacity: launch's state_session_capacity
        app.state_holder = self

    def __getitem__(self, session_id: str) -> SessionState:
        if session_id not in self.session_data:
            self.session_data[session_id] = Session(self.blocks)
        return super().__getitem__(session_id)

    def note(self, session: str, client: str, page: bool) -> None:
        """A queued event of `session` from `client`; `page`: one of the page's own events."""
        if not page:
            return
        with self.lock:
            if session in self.pages:
                return
            if len(self.pages) > 2 * self.capacity:  # forget pages whose session never came
                self.pages = {s: c for s, c in self.pages.items() if s in self.session_data}
            self.pages[session] = client
            theirs = [s for s in self.session_data if self.pages.get(s) == client and s != session]
            for old in theirs[:max(0, len(theirs) + 1 - self.per_client)]:
                self._drop(old)

    def update(self, session_id: str) -> None:
        with self.lock:
            if session_id in self.session_data:
                self.session_data.move_to_end(session_id)
            self._drop_idle(session_id)
            victim = self._victim(session_id)
            if victim is not None:
                self._drop(victim)

    def _drop_idle(self, keep: str) -> None:
        """From the least recently used on: sessions untouched for longer than `idle`."""
        now = datetime.datetime.now()
        for session in list(self.session_data):
            if session == keep:
                continue
            if now - self.time_last_used.get(session, now) <= self.idle:
                return
            self._drop(session)

    def _victim(self, keep: str) -> str | None:
        others = [s for s in self.session_data if s != keep]  # least recently used first
        api = [s for s in others if s not in self.pages]
        n_api = len(api) + (keep in self.session_data and keep not in self.pages)
        if api and (n_api > self.api_sessions or len(self.session_data) > self.capacity):
            return api[0]
        if len(self.session_data) <= self.capacity or not others:
            return None
        counts = Counter(self.pages[s] for s in others)
        most = max(counts.values())
        return next(s for s in others if counts[self.pages[s]] == most)

    def _drop(self, session: str) -> None:
        self.session_data.pop(session, None)
        self.time_last_used.pop(session, None)
        self.pages.pop(session, None)
