"""raftkv: a small key-value state machine on :class:`raft.replicated.ReplicatedLog`, for the lab.

One member per process::

    python -m tests.e2e.raftkv --id 1 --peers 1=10.99.0.11:7000,2=10.99.0.12:7000,3=10.99.0.13:7000 \\
        --dir /tmp/kv1 --http 10.99.0.11:8000 [--snapshot-every 200] [--keep 20]

The initial members bootstrap the cluster (``bootstrap=True``); restarting on the same ``--dir``
recovers from its snapshot and WAL. Raft timing is :class:`raft.driver.DriverConfig`'s default
(tick 100 ms, heartbeat 1 tick, election 10–20 ticks = 1–2 s).

State machine: ``{key: [value, value, …]}`` — every write is appended to the key's list, and the
key's current value (what a read returns) is the last element; so the register semantics the
linearizability checker needs hold, and the list records every write ever applied, in order, for
the "nothing acknowledged is lost" check. A log entry is msgpack ``{"k": key, "v": value}``
(strings); a snapshot is msgpack of the whole dict.

HTTP API (JSON bodies, aiohttp):

- ``PUT /kv/{key}`` body = the value (UTF-8 text). ``200 {"key", "value", "index"}`` once the
  entry is committed and applied on this member (the leader). ``503 {"message", "outcome",
  "leader"}`` otherwise, where ``outcome`` is ``"not-applied"`` when the write was refused before
  it entered the log (this member is not the leader — the message names the leader, e.g. "not
  the leader; the leader is 2 at 10.99.0.12:7000" — or no leader / no quorum), and
  ``"unknown"`` when it entered the log but its commit was not seen (lost quorum, timeout,
  leadership change): it may or may not take effect. Writes are NOT forwarded: a client retries
  on the leader named in ``leader`` (0 = unknown). ``400`` for a body that is not UTF-8.
- ``POST /kv/{key}``: the same as PUT. Test clients use it because HTTP clients resend an
  idempotent request (PUT) on their own when a kept-alive connection drops (aiohttp does, after
  RFC 9112 §9.3.1), which would turn one client write into two attempts whose outcomes the
  client cannot tell apart.
- ``GET /kv/{key}``: linearizable read (ReadIndex, Raft thesis §6.4, on any member, then the
  local state machine). ``200 {"key", "value", "index"}``, ``404 {"message"}`` when the key was
  never written, ``503 {"message"}`` when no read point could be confirmed. ``?local=1`` skips
  ReadIndex (a possibly stale local read); ``?all=1`` adds ``"values"``: the key's whole list.
- ``GET /status``: ``{"id", "role", "term", "leader", "commit", "applied", "snapshot_index",
  "first_index", "restores", "keys"}`` (``restores``: snapshots from the leader installed since
  this process started; ``first_index``: first entry still in the in-memory log).
- ``GET /dump``: ``{"applied", "data": {key: [values]}}`` — the whole state, local.

Logs (timestamped) go to stderr. SIGTERM/SIGINT close the log and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

import msgpack
from aiohttp import web

from raft.driver import DriverConfig
from raft.replicated import LogUnavailable, ReplicatedLog
from raft.snapshot import Snapshot
from raft.transport import parse_addr
from raft.wal import Entry

log = logging.getLogger("raftkv")

__all__ = ["KVStore", "main", "make_app", "parse_peers"]


class KVStore:
    """The state machine: ``data`` = ``{key: [values in apply order]}``; ``applied`` = the last
    log index folded in. Entries that are not msgpack ``{"k": str, "v": str}`` are logged and
    skipped (they cannot come from this program)."""

    def __init__(self) -> None:
        self.data: dict[str, list[str]] = {}
        self.applied = 0
        self.restores = 0

    @staticmethod
    def encode(key: str, value: str) -> bytes:
        """The log entry for a put of ``value`` under ``key``."""
        out: bytes = msgpack.packb({"k": key, "v": value}, use_bin_type=True)
        return out

    def apply(self, e: Entry) -> None:
        """Fold committed entry ``e`` in (called by the Raft log in index order)."""
        try:
            d = msgpack.unpackb(e.data, raw=False)
            key, value = d["k"], d["v"]
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("k and v must be strings")
        except Exception as err:  # noqa: BLE001 - report, never break the log
            log.error("entry %d is not a raftkv put (%s): %r", e.index, err, e.data[:64])
        else:
            self.data.setdefault(key, []).append(value)
        self.applied = e.index

    def restore(self, snap: Snapshot) -> None:
        """Replace the state with snapshot ``snap`` (from the leader or from disk at start)."""
        raw = msgpack.unpackb(snap.data, raw=False) if snap.data else {}
        self.data = {str(k): [str(v) for v in vs] for k, vs in raw.items()}
        self.applied = snap.index

    def on_restore(self, snap: Snapshot) -> None:
        """``set_restore`` callback: a snapshot sent by the leader."""
        self.restore(snap)
        self.restores += 1
        log.info("installed a snapshot from the leader at index %d (%d keys)", snap.index, len(self.data))

    def snapshot_bytes(self) -> bytes:
        """``set_snapshot_source`` callback: msgpack of the whole dict."""
        out: bytes = msgpack.packb(self.data, use_bin_type=True)
        return out


def parse_peers(text: str) -> dict[int, str]:
    """``"1=ip:port,2=ip:port"`` → ``{1: "ip:port", 2: "ip:port"}``. Raises ValueError saying
    what is wrong."""
    peers: dict[int, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        nid, sep, addr = part.partition("=")
        if not sep or not nid.strip().isdigit() or int(nid) <= 0:
            raise ValueError(f"bad peer {part!r}: write ID=HOST:PORT with a positive integer ID, "
                             "e.g. 1=10.99.0.11:7000")
        parse_addr(addr.strip())
        peers[int(nid)] = addr.strip()
    if not peers:
        raise ValueError("--peers is empty: give every initial member as ID=HOST:PORT, comma-separated")
    return peers


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def make_app(rlog: ReplicatedLog, kv: KVStore, node_id: int, write_timeout: float = 3.0,
             read_timeout: float = 2.0) -> web.Application:
    """The aiohttp application serving the API in the module docstring for member ``node_id``.
    ``write_timeout``/``read_timeout``: seconds a write waits for its commit / a read for its
    read point before answering 503."""

    async def put(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        raw = await request.read()
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            return _json(400, {"message": "the value must be UTF-8 text"})
        try:
            index, fut = rlog.submit(KVStore.encode(key, value))
        except LogUnavailable as e:  # refused before it entered the log
            return _json(503, {"message": str(e), "outcome": "not-applied", "leader": rlog.leader_id})
        # The future may still fail after we answered (a leader change): retrieve its exception so
        # asyncio does not log "Future exception was never retrieved".
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait_for(asyncio.shield(fut), write_timeout)
        except TimeoutError:
            return _json(503, {"message": f"entry {index} not committed within {write_timeout:g} s "
                                          f"({rlog.driver.no_quorum_message()}); outcome unknown",
                               "outcome": "unknown", "leader": rlog.leader_id})
        except LogUnavailable as e:
            return _json(503, {"message": f"{e} (entry {index}; outcome unknown)", "outcome": "unknown",
                               "leader": rlog.leader_id})
        return _json(200, {"key": key, "value": value, "index": index})

    async def get(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        index = kv.applied
        if request.query.get("local") != "1":
            try:
                index = await rlog.read_index(timeout=read_timeout)
            except LogUnavailable as e:
                return _json(503, {"message": str(e), "leader": rlog.leader_id})
        values = kv.data.get(key)
        if not values:
            return _json(404, {"message": f"no such key: {key}", "index": index})
        body: dict[str, Any] = {"key": key, "value": values[-1], "index": index}
        if request.query.get("all") == "1":
            body["values"] = list(values)
        return _json(200, body)

    async def status(_request: web.Request) -> web.Response:
        node = rlog.driver.node
        return _json(200, {
            "id": node_id, "role": node.role.value, "term": rlog.term, "leader": rlog.leader_id,
            "commit": node.log.committed, "applied": rlog.applied_index,
            "snapshot_index": rlog.driver.snap_index, "first_index": node.log.first_index(),
            "restores": kv.restores, "keys": len(kv.data)})

    async def dump(_request: web.Request) -> web.Response:
        return _json(200, {"applied": kv.applied, "data": kv.data})

    app = web.Application()
    app.router.add_put("/kv/{key}", put)
    app.router.add_post("/kv/{key}", put)
    app.router.add_get("/kv/{key}", get)
    app.router.add_get("/status", status)
    app.router.add_get("/dump", dump)
    return app


async def serve(node_id: int, peers: dict[int, str], directory: str, http: str,
                config: DriverConfig) -> None:
    """Run member ``node_id`` until SIGTERM/SIGINT. Raises OSError (ports), WALCorruptError."""
    kv = KVStore()
    rlog = ReplicatedLog(node_id, peers, directory, bootstrap=True, config=config, propose_timeout=3.0)
    snap = rlog.snapshot()
    if snap is not None:
        kv.restore(snap)
    for e in rlog.entries_from(kv.applied + 1):  # committed on disk at open: replayed here
        kv.apply(e)
    log.info("member %d opened %s: snapshot at %d, replayed to %d, %d keys", node_id, directory,
             snap.index if snap else 0, kv.applied, len(kv.data))
    rlog.set_apply(kv.apply)
    rlog.set_restore(kv.on_restore)
    rlog.set_snapshot_source(kv.snapshot_bytes)
    await rlog.start()
    host, port = parse_addr(http)
    runner = web.AppRunner(make_app(rlog, kv, node_id), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("member %d: raft on %s, http on %s", node_id, peers[node_id], http)
    print(f"ready {node_id}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("member %d: stopping", node_id)
    await runner.cleanup()
    await rlog.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring). Returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m tests.e2e.raftkv", description=__doc__.split("\n\n")[0])
    p.add_argument("--id", type=int, required=True, help="this member's ID (a key of --peers)")
    p.add_argument("--peers", required=True, help="ID=HOST:PORT,… of every initial member (Raft addresses)")
    p.add_argument("--dir", required=True, help="data directory (WAL and snapshots)")
    p.add_argument("--http", required=True, help="HOST:PORT for the HTTP API")
    p.add_argument("--snapshot-every", type=int, default=200, help="applied entries between snapshots")
    p.add_argument("--keep", type=int, default=20, help="entries kept after a snapshot for slow followers")
    a = p.parse_args(argv)
    try:
        peers = parse_peers(a.peers)
    except ValueError as e:
        p.error(f"--peers: {e}")
    try:
        parse_addr(a.http)
    except ValueError:
        p.error(f"--http must be HOST:PORT (e.g. 10.99.0.11:8000), got {a.http!r}")
    if a.id not in peers:
        p.error(f"--id {a.id} is not in --peers ({sorted(peers)}): list this member's own address too")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")
    cfg = DriverConfig(snapshot_every=a.snapshot_every, keep=a.keep)
    coro = serve(a.id, peers, a.dir, a.http, cfg)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
