"""What a failed request shows: the reason when it is the user's to fix, never a traceback."""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import gradio as gr

import gpt2

from .inspection import Busy
from .service import RunExpired

log = logging.getLogger(__name__)
USER_ERRORS = (ValueError, RunExpired, gpt2.WeightsError, Busy)


def to_gr_error(error: Exception) -> gr.Error:
    """A message for the page: the reason for expected failures, a generic line otherwise."""
    if isinstance(error, USER_ERRORS):
        return gr.Error(str(error), print_exception=False)
    log.exception("request failed", exc_info=error)
    return gr.Error(f"Something went wrong on the server ({type(error).__name__}). "
                    "Try again; if it persists, try a shorter prompt or another model.",
                    print_exception=False)


@contextlib.contextmanager
def _as_gr_error() -> Iterator[None]:
    """What escapes the block, as gr.Error (gr.Error itself passes as it is)."""
    try:
        yield
    except gr.Error:
        raise
    except Exception as error:  # noqa: BLE001 - the server must keep serving
        raise to_gr_error(error) from None


def friendly(fn: Callable) -> Callable:
    """Turn the exceptions of a handler (a plain function, a generator or an async generator)
    into gr.Error."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def streamed_async(*args: Any, **kwargs: Any) -> AsyncIterator:
            with _as_gr_error():
                async with contextlib.aclosing(fn(*args, **kwargs)) as items:  # closed with this one
                    async for item in items:
                        yield item
        return streamed_async

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streamed(*args: Any, **kwargs: Any) -> Iterator:
            with _as_gr_error():
                yield from fn(*args, **kwargs)
        return streamed

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _as_gr_error():
            return fn(*args, **kwargs)
    return wrapper
