"""The shape every reconciling loop of the manager shares: watch the store, let a burst of
changes settle, then run one pass (swarmkit's orchestrators and reaper work the same way)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from manager.store import Event, Store
from shoal.base.util import wait_timeout


async def reconcile_loop(store: Store, tables: Iterable[str], tick: Callable[[], Awaitable[object]],
                         debounce: float, log: logging.Logger, what: str,
                         wake_in: Callable[[], float | None] = lambda: None,
                         observe: Callable[[Event], None] | None = None) -> None:
    """Run ``tick()`` once, then again after every burst of changes to ``tables`` — a burst ends
    after ``debounce`` seconds without a change — or when ``wake_in()`` seconds (None = never)
    have passed with no change. A failing pass is logged (``what`` names the loop) and the loop
    goes on. Runs until cancelled or the store closes; cancellation is never lost (it waits
    with :func:`shoal.base.util.wait_timeout`, not ``asyncio.wait_for``). ``observe(event)``
    (None: nothing) sees every event before the pass that follows it, so a loop can note what
    changed and work on that alone (the store's own objects: read them, never change them).
    """
    watch = store.watch(tables, copy=False)  # the events only wake the loop: no copies

    async def safe_tick() -> None:
        try:
            await tick()
        except Exception:
            log.exception("%s pass failed", what)

    try:
        await safe_tick()
        while True:
            try:
                ev = await wait_timeout(watch.__anext__(), wake_in())
                if observe is not None:
                    observe(ev)
            except TimeoutError:
                pass
            while True:
                try:
                    ev = await wait_timeout(watch.__anext__(), debounce)
                except TimeoutError:
                    break
                if observe is not None:
                    observe(ev)
            await safe_tick()
    except StopAsyncIteration:
        return
    finally:
        watch.close()
