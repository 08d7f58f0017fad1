"""Waiting for a condition with a deadline: how every test here waits, never sleep-and-hope.

:func:`wait_until` (in a coroutine) and :func:`wait_until_sync` (in plain code, e.g. the e2e
tests driving the lab through subprocesses) poll a condition until it holds and return its
value; after the timeout they fail with ``AssertionError("timed out after <t> s waiting for
<what>…")`` naming what was awaited, with the last value or error seen and any ``detail``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["wait_until", "wait_until_sync"]

T = TypeVar("T")


def _timed_out(timeout: float, what: str, last: Any, detail: Callable[[], str] | None) -> AssertionError:
    msg = f"timed out after {timeout:g} s waiting for {what}"
    if isinstance(last, BaseException):
        msg += f"; last error: {last!r}"
    elif last is not None and not isinstance(last, bool):
        msg += f"; last: {last!r}"
    if detail is not None:
        msg += f"\n{detail()}"
    return AssertionError(msg)


async def wait_until(cond: Callable[[], T | Awaitable[T]], timeout: float = 5.0, what: str = "the condition",
                     interval: float = 0.01, retry: tuple[type[BaseException], ...] = (),
                     detail: Callable[[], str] | None = None) -> T:
    """Poll ``cond()`` every ``interval`` seconds until it is truthy and return that value;
    ``cond`` may be a plain function or return an awaitable (awaited each time).

    Exceptions of the types in ``retry`` count as "not yet" (the last one is named on failure);
    any other exception propagates at once. Raises ``AssertionError`` naming ``what`` (and the
    text ``detail()`` returns, e.g. log tails) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = cond()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            last = value
        except retry as e:
            last = e
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, last, detail) from (last if isinstance(last, BaseException) else None)
        await asyncio.sleep(interval)


def wait_until_sync(cond: Callable[[], T], timeout: float = 5.0, what: str = "the condition",
                    interval: float = 0.2, retry: tuple[type[BaseException], ...] = (),
                    detail: Callable[[], str] | None = None) -> T:
    """:func:`wait_until` for code outside an event loop: sleeps between polls (blocking) and
    returns ``cond()``'s first truthy value. Raises ``AssertionError`` naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = cond()
            if value:
                return value
            last = value
        except retry as e:
            last = e
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, last, detail) from (last if isinstance(last, BaseException) else None)
        time.sleep(interval)
