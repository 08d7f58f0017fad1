"""Waiting for a condition with a deadline: how every test here waits, never sleep-and-hope."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(cond: Callable[[], object], timeout: float = 5.0, what: str = "the condition",
                     interval: float = 0.01) -> None:
    """Poll ``cond()`` every ``interval`` seconds until it is truthy; raise ``AssertionError``
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
