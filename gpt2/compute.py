"""The process's compute thread: where decode loops step and other model work runs.

Each thread that runs torch (or the decode kernels) gets its own team of OpenMP threads, as
many as the setting, and a team that waits for a core spins. So N requests computing on N
threads of a 2-core machine ran 2N busy threads: two generations at once gave less in total
than one alone (issue 17). Here every `gpt2.BatchedGenerator` loop, for every model, takes
its steps on one thread, in turn, and `run(fn)` hands it any other model work (a capture
over a text, say): the process computes on at most `threads()` threads, whatever the number
of requests or models.

The one setting: `threads()`, from `GPT2_THREADS` or `set_threads(n)`, by default the cores
this process may run on. It applies to the compute thread (torch's intra-op threads and the
decode kernels'); code that calls the model on its own threads is not covered, and costs
more than its own time: a thread that has computed keeps its OpenMP team while it lives, and
while more threads are in teams than there are cores libgomp stops letting idle workers
spin, so every parallel region of every team pays a wake-up (measured on 2 cores: a 4-row
decode step 10 -> 16 ms, 25 LayerNorms 0.1 -> 1.4 ms). So load models through `run` too.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future
from typing import Callable, Protocol, TypeVar

import torch

T = TypeVar("T")
log = logging.getLogger(__name__)
_settings_lock = threading.Lock()
_threads: int | None = None  # None: GPT2_THREADS, else the cores we may use
_worker: "Worker | None" = None


def threads() -> int:
    """Threads the compute thread computes with: `set_threads`, else `GPT2_THREADS`, else the
    number of cores this process may use."""
    if _threads is not None:
        return _threads
    env = os.environ.get("GPT2_THREADS")
    if env:
        return _check(int(env) if env.strip().isdigit() else env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads(n: int | None) -> None:
    """Set the compute thread's thread count (None: back to the default); from its next step."""
    global _threads
    with _settings_lock:
        _threads = None if n is None else _check(n)
    if _worker is not None:
        _worker.wake()


def _check(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the compute thread count must be an integer >= 1, got {n!r}")
    return n


class Loop(Protocol):
    """What the compute thread steps: a decode loop (`gpt2.BatchedGenerator`)."""

    def has_work(self) -> bool: ...

    def step(self) -> None: ...


class Worker:
    """The compute thread. Each round: one job (if any), then one step of every loop with
    work, loops in the order they registered; it sleeps when there is nothing to do."""

    def __init__(self):
        threads()  # a bad GPT2_THREADS fails here, for the caller, not on the compute thread
        self.cond = threading.Condition()  # guards the jobs, the loops, and the loops' inboxes
        self._loops: list[Loop] = []
        self._jobs: deque[tuple[Callable[[], object], Future]] = deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gpt2-compute", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    @property
    def native_id(self) -> int | None:
        return self._thread.native_id

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def add(self, loop: Loop) -> None:
        with self.cond:
            self._loops.append(loop)

    def remove(self, loop: Loop) -> None:
        with self.cond:
            if loop in self._loops:
                self._loops.remove(loop)

    def wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def run(self, fn: Callable[[], T]) -> T:
        """fn() on the compute thread, between steps; its result or its exception here."""
        if self.on_thread():  # already here (a job that runs another): no deadlock
            return fn()
        future: Future = Future()
        with self.cond:
            if self._stopping:
                raise RuntimeError("the compute thread has stopped (the interpreter is exiting)")
            self._jobs.append((fn, future))
            self.cond.notify()
        return future.result()

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify()
        if not self.on_thread():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        applied = None
        while True:
            with self.cond:
                while not (self._stopping or self._jobs or any(loop.has_work() for loop in self._loops)):
                    self.cond.wait()
                if self._stopping:
                    jobs, self._jobs = list(self._jobs), deque()
                    for _, future in jobs:
                        future.set_exception(RuntimeError("the compute thread has stopped"))
                    return
                job = self._jobs.popleft() if self._jobs else None
                loops = [loop for loop in self._loops if loop.has_work()]
            if threads() != applied:
                applied = threads()
                torch.set_num_threads(applied)  # this thread's OpenMP team (and the kernels')
            if job is not None:
                fn, future = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as error:  # noqa: BLE001 - the caller gets it
                        future.set_exception(error)
            for loop in loops:
                try:
                    loop.step()  # a loop reports its own requests' failures to them
                except Exception:  # noqa: BLE001 - the thread must outlive a broken loop
                    log.exception("a decode loop's step failed")


def worker() -> Worker:
    """The process's compute thread, started on first use."""
    global _worker
    with _settings_lock:
        if _worker is None:
            _worker = Worker()
        return _worker


def run(fn: Callable[[], T]) -> T:
    """Run fn() on the compute thread and return its result: model work outside the decode
    loops (a forward pass over a text for its attention maps, say) without a thread of its own."""
    return worker().run(fn)
