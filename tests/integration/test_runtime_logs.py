"""Container logs on a real container (root, one host): the shim rotates ``container.log`` at the
json-file max-size and keeps max-file files, tail reads the end, and a follower's cursor survives the
rotations of a container that is still writing. Everything is removed afterwards, even on failure."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_runtime.containers import ContainerSpec, Runtime
from shoal.base.util import new_container_id
from tests.integration.conftest import TEST_REF, scratch_runtime

pytestmark = pytest.mark.root


@pytest.fixture
async def runtime(scratch_dir: Path, busybox_archive: Path) -> AsyncIterator[Runtime]:
    """A Runtime (shoal-oci) whose daemon default is ``--log-opt max-size=16k --log-opt max-file=3``."""
    async with scratch_runtime(scratch_dir, busybox_archive, "shoal-test", log_opts={"max-size": "16k", "max-file": "3"}) as rt:
        yield rt


def _log_files(rt: Runtime, cid: str) -> dict[str, int]:
    d = rt.log_path(cid).parent
    return {p.name: p.stat().st_size for p in d.iterdir() if p.name.startswith("container.log")}


async def _run(rt: Runtime, script: str, **kw: object) -> str:
    cid = new_container_id()
    await rt.create(ContainerSpec(id=cid, image=TEST_REF, command=["sh", "-c", script], **kw))  # type: ignore[arg-type]
    await rt.start(cid)
    assert await asyncio.wait_for(rt.wait(cid), 60) == 0
    return cid


LINES = 'i=0; while [ $i -lt {n} ]; do echo "line $i of the test output"; i=$((i+1)); done'


async def test_a_service_max_size_rotates_the_log_and_tail_reads_the_end(runtime: Runtime) -> None:
    cid = await _run(runtime, LINES.format(n=20000), log_opts={"max-size": "64k", "max-file": "2"})
    files = _log_files(runtime, cid)
    assert set(files) == {"container.log", "container.log.1"}  # max-file 2: the older ones were dropped
    assert all(0 < size <= 64_000 for size in files.values()), files  # 64k is 64,000 bytes, as Docker
    kept = []
    for name in ("container.log.1", "container.log"):
        data = (runtime.log_path(cid).parent / name).read_bytes()
        assert data.endswith(b"\n")  # no record split across files
        kept += [json.loads(line)["log"] for line in data.splitlines()]
    assert kept == [f"line {i} of the test output\n" for i in range(20000 - len(kept), 20000)]
    assert len(kept) > 1000
    tail = runtime.read_logs(cid, tail=5)
    assert [r["log"] for r in tail] == [f"line {i} of the test output\n" for i in range(19995, 20000)]
    assert [r["log"] for r in runtime.read_logs(cid)] == kept
    meta = json.loads((runtime.log_path(cid).parent / "container.json").read_text())
    assert meta["log_config"] == {"max-size": 64_000, "max-file": 2}


async def test_the_daemon_default_applies_when_the_service_sets_none(runtime: Runtime) -> None:
    cid = await _run(runtime, LINES.format(n=3000))
    files = _log_files(runtime, cid)
    assert set(files) == {"container.log", "container.log.1", "container.log.2"}
    assert all(size <= 16_000 for size in files.values()), files
    assert runtime.read_logs(cid, tail=1)[0]["log"] == "line 2999 of the test output\n"


async def test_follow_by_cursor_keeps_up_with_a_rotating_container(runtime: Runtime) -> None:
    """The container writes 40 bursts of ~9 KB (16 KB files, 3 kept: the whole output is far more than
    is kept); a follower polling with its cursor gets every line exactly once, in order."""
    script = ('b=0; while [ $b -lt 40 ]; do i=0; while [ $i -lt 100 ]; do echo "burst $b line $i"; '
              'i=$((i+1)); done; b=$((b+1)); sleep 0.05; done')
    cid = new_container_id()
    await runtime.create(ContainerSpec(id=cid, image=TEST_REF, command=["sh", "-c", script]))
    page = runtime.read_log_page(cid, tail=0)
    await runtime.start(cid)
    waiter = asyncio.ensure_future(runtime.wait(cid))
    seen: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while True:
            done = waiter.done()
            page = runtime.read_log_page(cid, cursor=page.cursor)
            seen += [r["log"] for r in page.records]
            if done and not page.more:
                break
            assert time.monotonic() < deadline, "the container did not finish within 60 s"
            if not page.more:
                await asyncio.sleep(0.01)
    finally:
        if not waiter.done():
            waiter.cancel()
    assert waiter.result() == 0
    assert seen == [f"burst {b} line {i}\n" for b in range(40) for i in range(100)]
    assert len(_log_files(runtime, cid)) == 3
