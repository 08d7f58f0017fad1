"""Container logs in Docker's json-file format (agent_runtime.jsonfile, shoal.base.logopts): rotation by size in
the shim's writer, reading the tail from the end, follow by cursor across rotations, bounded reads."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_runtime import jsonfile
from agent_runtime.containers import ContainerError, Runtime
from agent_runtime.images import ImageStore
from agent_runtime.jsonfile import LogWriter, file_count, parse_cursor, parse_time, read_page
from agent_runtime.spec import ContainerSpec
from shoal.base import logopts
from shoal.base.logopts import LogOptError, check_driver, check_options, effective, parse_flags, parse_size
from shoal.base.util import now_rfc3339
from shoal.rpc import wire


def _files(p: Path) -> list[Path]:
    """The log's files, oldest first."""
    rotated = sorted((f for f in p.parent.iterdir() if f.name.startswith(p.name + ".")),
                     key=lambda f: -int(f.name.rsplit(".", 1)[1]))
    return rotated + ([p] if p.exists() else [])


def _logs(recs: list[dict[str, Any]]) -> list[str]:
    return [r["log"] for r in recs]


def _follow_all(p: Path, cursor: str, limit: int = jsonfile.READ_LIMIT) -> tuple[list[dict[str, Any]], str]:
    out: list[dict[str, Any]] = []
    while True:
        page = read_page(p, cursor=cursor, limit=limit)
        out.extend(page.records)
        cursor = page.cursor
        if not page.more:
            return out, cursor


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "container.log"


@pytest.fixture
def count_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Bytes read through os.pread (how the reader reads), one entry per call."""
    calls: list[int] = []
    real = os.pread

    def pread(fd: int, n: int, off: int) -> bytes:
        data = real(fd, n, off)
        calls.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", pread)
    yield calls


# ------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize(("text", "size"), [
    ("100", 100), ("10m", 10_000_000), ("10M", 10_000_000), ("512k", 512_000), ("1g", 1_000_000_000),
    ("1.5m", 1_500_000), ("64kb", 64_000), ("64KiB", 64_000), ("20 m", 20_000_000), ("7b", 7),
])
def test_sizes_parse_as_docker_from_human_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "m", "10x", "-1m", "10 mb b", "ten", "1e3", "10mm", "10ib", "0x10"])
def test_bad_sizes_are_refused_with_the_accepted_form(text: str) -> None:
    with pytest.raises(LogOptError, match=r"invalid size .*e\.g\. 10m"):
        parse_size(text)


def test_options_are_checked_and_merged_key_by_key() -> None:
    assert effective(None) == (10 * 1024 * 1024, 3)
    assert effective({"max-size": "1m"}, {"max-size": "5m", "max-file": "7"}) == (1_000_000, 7)
    assert effective({}, {"max-file": "1"}) == (logopts.DEFAULT_MAX_SIZE, 1)
    assert parse_flags(["max-size=64k", "max-file=2", "max-file=4"]) == {"max-size": "64k", "max-file": "4"}
    for opts, message in [
        ({"compress": "true"}, "unknown log opt 'compress' for the json-file log driver: shoal accepts "
                               "max-size and max-file"),
        ({"max-size": "0"}, "max-size must be a positive number"),
        ({"max-size": "big"}, "invalid size 'big'"),
        ({"max-file": "0"}, "max-file cannot be less than 1"),
        ({"max-file": "two"}, "use a whole number of files"),
        ({"max-file": "100000"}, "at most 1000 files"),
        ({"max-file": 3}, "must be a string"),
        (["max-size"], "must be a map of strings"),
    ]:
        with pytest.raises(LogOptError, match=message):
            check_options(opts)
    with pytest.raises(LogOptError, match="use KEY=VALUE"):
        parse_flags(["max-size"])
    check_driver("json-file")
    check_driver("")
    with pytest.raises(LogOptError, match="log driver 'syslog' is not supported by shoal: the only log driver is "
                                          "'json-file'"):
        check_driver("syslog")


# ------------------------------------------------------------------------------------------ writer


def test_writer_rotates_at_max_size_keeps_max_file_and_never_splits_a_record(log: Path) -> None:
    w = LogWriter(log, max_size=4096, max_file=3)
    written = [f"line {i:05d} " + "x" * (i % 97) + "\n" for i in range(2000)]
    for i in range(0, len(written), 7):  # chunks that cut lines anywhere
        w.feed("stdout", "".join(written[i:i + 7]).encode()[:-3])
        w.feed("stdout", "".join(written[i:i + 7]).encode()[-3:])
    w.close()
    files = _files(log)
    assert [f.name for f in files] == ["container.log.2", "container.log.1", "container.log"]
    kept: list[str] = []
    for f in files:
        data = f.read_bytes()
        assert len(data) <= 4096
        assert data.endswith(b"\n")  # whole records only: none continues in the next file
        kept.extend(json.loads(line)["log"] for line in data.splitlines())
    # the oldest were dropped; what is kept is the newest, in order, without gaps
    assert kept == written[-len(kept):]
    assert len(kept) < len(written) and len("".join(kept)) > 2 * 4096 // 2


def test_max_file_1_truncates_in_place(log: Path) -> None:
    w = LogWriter(log, max_size=1000, max_file=1)
    ino = os.stat(log).st_ino
    for i in range(100):
        w.feed("stderr", f"message {i}\n".encode())
    w.close()
    assert _files(log) == [log] and os.stat(log).st_ino == ino
    assert 0 < log.stat().st_size <= 1000
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert recs[-1]["log"] == "message 99\n" and recs[-1]["stream"] == "stderr"


def test_a_record_larger_than_max_size_is_split_so_no_file_exceeds_it(log: Path) -> None:
    w = LogWriter(log, max_size=2048, max_file=20)
    line = "é" * 1500 + "\x01" * 300 + "end\n"  # escapes make the record ~12 KiB of JSON
    w.feed("stdout", line.encode())
    w.close()
    files = _files(log)
    assert all(f.stat().st_size <= 2048 for f in files)
    recs = [json.loads(x) for f in files for x in f.read_text().splitlines()]
    assert "".join(r["log"] for r in recs) == line
    assert all(not r["log"].endswith("\n") for r in recs[:-1])  # partial records, as Docker's 16 KiB split


def test_long_lines_split_at_16k_and_flush_writes_the_rest(log: Path) -> None:
    w = LogWriter(log)
    w.feed("stdout", b"a" * 40000)
    w.feed("stderr", b"no newline")
    w.flush()
    w.close()
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [len(r["log"]) for r in recs if r["stream"] == "stdout"] == [16384, 16384, 40000 - 32768]
    assert [r["log"] for r in recs if r["stream"] == "stderr"] == ["no newline"]
    assert w.last_stderr == "no newline"
    assert log.stat().st_mode & 0o777 == 0o640


# ------------------------------------------------------------------------------------------ reader


def _big_log(log: Path, n_bytes: int) -> int:
    """Write a log of about ``n_bytes`` straight (no rotation) and return its record count."""
    rec = (json.dumps({"log": "y" * 900 + "\n", "stream": "stdout", "time": now_rfc3339()}) + "\n").encode()
    n = n_bytes // len(rec)
    with open(log, "wb") as f:
        for i in range(n):
            f.write(rec.replace(b"yyyyyyyy", f"{i:08d}".encode(), 1))
    return n


def test_tail_reads_from_the_end_of_a_large_file(log: Path, count_reads: list[int]) -> None:
    n = _big_log(log, 50 * 1024 * 1024)
    assert log.stat().st_size > 49 * 1024 * 1024
    page = read_page(log, tail=10)
    assert [r["log"][:8] for r in page.records] == [f"{i:08d}" for i in range(n - 10, n)]
    assert page.more is False
    assert sum(count_reads) <= 3 * jsonfile.BLOCK  # not the 50 MiB: a block back, the records, the cursor check


def test_since_stops_reading_backwards_at_older_records(log: Path, count_reads: list[int]) -> None:
    with open(log, "w") as f:
        for i in range(20000):
            f.write(json.dumps({"log": f"r{i}\n", "stream": "stdout", "time": now_rfc3339(1_000_000 + i)}) + "\n")
    page = read_page(log, since=1_000_000 + 19990)
    assert _logs(page.records) == [f"r{i}\n" for i in range(19990, 20000)]
    assert sum(count_reads) <= 3 * jsonfile.BLOCK
    assert _logs(read_page(log, tail=3, since=1_000_000 + 19999).records) == ["r19999\n"]
    assert read_page(log, since=time.time() + 60).records == []


def test_tail_and_since_across_rotated_files(log: Path) -> None:
    w = LogWriter(log, max_size=1000, max_file=4)  # about 13 records a file
    for i in range(20):
        w.feed("stdout", f"n{i}\n".encode())
    assert file_count(log) == 2
    assert _logs(read_page(log, tail=3).records) == ["n17\n", "n18\n", "n19\n"]
    assert _logs(read_page(log, tail=18).records) == [f"n{i}\n" for i in range(2, 20)]  # starts in .1
    assert _logs(read_page(log).records) == [f"n{i}\n" for i in range(20)]
    for i in range(20, 100):
        w.feed("stdout", f"n{i}\n".encode())
    assert file_count(log) == 4
    kept = _logs(read_page(log).records)
    assert kept[-1] == "n99\n" and kept == [f"n{i}\n" for i in range(100 - len(kept), 100)] and len(kept) > 39
    assert _logs(read_page(log, tail=len(kept) - 2).records) == kept[2:]  # starts in container.log.3
    assert _logs(read_page(log, tail=0).records) == []
    assert _logs(read_page(log, tail=10_000).records) == kept


def test_a_record_being_written_is_not_returned_until_complete(log: Path) -> None:
    with open(log, "wb") as f:
        f.write(b'{"log": "done\\n", "stream": "stdout", "time": "2024-01-01T00:00:00.000000001Z"}\n')
        f.write(b'{"log": "half", "stream": "stdout", "time": "2024-01-01T00:00:00.000000002Z"}')
    page = read_page(log)
    assert _logs(page.records) == ["done\n"]
    assert _logs(read_page(log, tail=1).records) == ["done\n"]
    with open(log, "ab") as f:
        f.write(b"\n")
    assert _logs(read_page(log, cursor=page.cursor).records) == ["half"]


def test_follow_by_cursor_across_rotations_loses_and_repeats_nothing(log: Path) -> None:
    w = LogWriter(log, max_size=600, max_file=5)
    page = read_page(log, tail=0)
    seen: list[str] = []
    cursor = page.cursor
    n = 0
    for burst in (1, 5, 9, 3, 12, 0, 7, 1, 14):  # at most ~4 files of output between two reads
        for _ in range(burst):
            w.feed("stdout", f"rec {n:04d} {'z' * (n % 40)}\n".encode())
            n += 1
        recs, cursor = _follow_all(log, cursor)
        seen.extend(_logs(recs))
    assert seen == [f"rec {i:04d} {'z' * (i % 40)}\n" for i in range(n)]
    assert file_count(log) == 5


def test_cursor_of_a_dropped_file_continues_at_the_oldest_kept(log: Path) -> None:
    w = LogWriter(log, max_size=300, max_file=2)
    w.feed("stdout", b"first\n")
    cursor = read_page(log).cursor
    for i in range(30):  # rotates the cursor's file out of existence
        w.feed("stdout", f"later {i}\n".encode())
    recs, _ = _follow_all(log, cursor)
    assert _logs(recs) == _logs(read_page(log).records)  # exactly the kept records, once, in order
    assert _logs(recs)[-1] == "later 29\n" and "first\n" not in _logs(recs)


def test_cursor_after_truncation_in_place_starts_over(log: Path) -> None:
    w = LogWriter(log, max_size=400, max_file=1)
    for i in range(3):
        w.feed("stdout", f"a{i}\n".encode())
    cursor = read_page(log).cursor
    for i in range(10):
        w.feed("stdout", f"b{i}\n".encode())
    recs, _ = _follow_all(log, cursor)
    assert _logs(recs) == _logs(read_page(log).records) and _logs(recs)[-1] == "b9\n"


def test_reads_are_bounded_and_paging_returns_everything(log: Path) -> None:
    w = LogWriter(log, max_size=1 << 20, max_file=3)
    for i in range(5000):
        w.feed("stdout", f"{i:05d} {'p' * 200}\n".encode())
    page = read_page(log, limit=20_000)
    assert page.more and 0 < len(page.records) < 100
    assert sum(len(json.dumps(r)) + 1 + jsonfile.RECORD_COST for r in page.records) <= 20_000
    rest, _ = _follow_all(log, page.cursor, limit=20_000)
    assert [r["log"][:5] for r in page.records + rest] == [f"{i:05d}" for i in range(5000)]
    # a zero budget returns no record but the position: the next read starts there
    zero = read_page(log, tail=2, limit=0)
    assert zero.records == [] and zero.more
    assert [r["log"][:5] for r in read_page(log, cursor=zero.cursor).records] == ["04998", "04999"]
    # the default budget: 4 MiB a read
    big = read_page(log)
    assert big.more is False and len(big.records) == 5000


def test_missing_log_and_bad_cursors(log: Path) -> None:
    empty = read_page(log)
    assert (empty.records, empty.more) == ([], False)
    LogWriter(log).feed("stdout", b"hello\n")
    assert _logs(read_page(log, cursor=empty.cursor).records) == ["hello\n"]  # the log began after the read
    for bad in ["", "1:2", "a:b:c", "1:2:zzzz", "1:2:3:4", "9" * 30 + ":0:0"]:
        with pytest.raises(ValueError, match="invalid log cursor"):
            parse_cursor(bad)
    assert parse_time("2024-02-29T12:00:00.5Z") == 1709208000.5
    assert parse_time("not a time") == 0.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(st.integers(min_value=1, max_value=300), st.just(0)), min_size=1, max_size=40),
       max_size=st.integers(min_value=200, max_value=3000))
def test_follower_sees_every_record_once_in_order(tmp_path: Path, ops: list[int], max_size: int) -> None:
    """Property: whatever the writes (n > 0 bytes of output) and reads (0) interleave, a follower that
    reads at least once per max_file-1 files of output gets every record exactly once."""
    d = tmp_path / os.urandom(4).hex()
    d.mkdir()
    log = d / "container.log"
    w = LogWriter(log, max_size=max_size, max_file=4)
    cursor = read_page(log, tail=0).cursor
    out: list[str] = []
    expect: list[str] = []
    since_read = 0
    k = 0
    for n in ops:
        if n and since_read + n + 200 < 2 * max_size:
            text = f"{k}:" + "q" * n + "\n"
            k += 1
            expect.append(text)
            w.feed("stdout", text.encode())
            since_read += len(text) + 80
            continue
        recs, cursor = _follow_all(log, cursor, limit=max(1, max_size // 2))
        out.extend(_logs(recs))
        since_read = 0
    recs, cursor = _follow_all(log, cursor)
    out.extend(_logs(recs))
    assert "".join(out) == "".join(expect)
    assert all(f.stat().st_size <= max_size for f in _files(log))


# ------------------------------------------------------------------------------------------ runtime


def _fake_container(rt: Runtime, cid: str, meta: dict[str, Any]) -> Path:
    d = rt.root / cid
    d.mkdir(parents=True)
    (d / "container.json").write_text(json.dumps(meta))
    return d


def test_runtime_pages_and_an_old_container_json_still_loads(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "containers", tmp_path / "exec", ImageStore(tmp_path / "images"),
                 log_opts={"max-size": "2k", "max-file": "4"})
    cid = "c" * 64
    old_spec = ContainerSpec(id=cid, image="busybox").to_dict()
    del old_spec["log_opts"]  # as written before the field existed
    _fake_container(rt, cid, {"spec": old_spec, "image_id": "sha256:x", "created_at": now_rfc3339()})
    assert rt.spec(cid).log_opts == {}
    assert rt._log_config(cid, rt._meta(cid)) == (2000, 4)  # the daemon's defaults
    w = LogWriter(rt.log_path(cid), 2000, 4)
    for i in range(50):
        w.feed("stdout", f"{i}\n".encode())
    page = rt.read_log_page(cid, tail=2)
    assert _logs(page.records) == ["48\n", "49\n"]
    w.feed("stdout", b"50\n")
    assert _logs(rt.read_log_page(cid, cursor=page.cursor).records) == ["50\n"]
    assert _logs(rt.read_logs(cid, tail=1)) == ["50\n"]
    with pytest.raises(ContainerError, match="invalid log cursor"):
        rt.read_log_page(cid, cursor="../../etc/passwd")
    cid2 = "d" * 64
    _fake_container(rt, cid2, {"spec": ContainerSpec(id=cid2, image="busybox", log_opts={"max-file": "2"}).to_dict(),
                               "log_config": {"max-size": 64000, "max-file": 2}})
    assert rt._log_config(cid2, rt._meta(cid2)) == (64000, 2)
    with pytest.raises(ValueError, match="unknown log opt 'mode'"):
        Runtime(tmp_path / "c2", tmp_path / "e2", ImageStore(tmp_path / "images"), log_opts={"mode": "non-blocking"})


async def test_runtime_create_refuses_a_bad_log_option(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "containers", tmp_path / "exec", ImageStore(tmp_path / "images"))
    cid = "e" * 64
    with pytest.raises(ContainerError, match="max-size must be a positive number"):
        await rt.create(ContainerSpec(id=cid, image="busybox", log_opts={"max-size": "0"}))
    assert not (rt.root / cid).exists()


@pytest.mark.parametrize("line", [b"x\n", "\U0001f600".encode() * 4000 + b"\n", b"y" * 20000 + b"\n"],
                         ids=["tiny lines", "4-byte characters", "16 KiB records"])
def test_a_full_page_fits_a_workers_logs_read_reply(log: Path, line: bytes) -> None:
    """A page of the worker's size (shoal.rpc.wire.LOGS_REPLY_BYTES) of the worst records — tiny
    ones (per-record overhead), 4-byte characters, 16 KiB ones — encoded as the agent's
    ``logs.read`` reply, is read by the manager within ``WORKER_LIMITS`` (the reply is never cut,
    which would lose lines behind the cursor)."""
    w = jsonfile.LogWriter(log, max_size=1 << 30, max_file=1)
    for _ in range(2 * wire.LOGS_REPLY_BYTES // len(line * 64) + 1):
        w.feed("stdout", line * 64)
    w.close()
    page = jsonfile.read_page(log, limit=wire.LOGS_REPLY_BYTES)
    assert page.more and page.records
    reply = {"lines": [{"task_id": "t" * 25, "stream": r["stream"], "time": r["time"], "log": r["log"]}
                       for r in page.records], "cursors": {"t" * 25: page.cursor}, "more": True}
    frame = wire.encode_frame({"t": "reply", "id": 1, "b": reply})
    assert wire.decode_frame(frame[4:], wire.WORKER_LIMITS)["b"]["lines"][-1]["log"] == page.records[-1]["log"]
