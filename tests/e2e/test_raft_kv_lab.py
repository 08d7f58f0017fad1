"""Raft on real processes in the lab: a key-value state machine (``tests/e2e/raftkv.py``) on three
lab hosts, driven by concurrent clients while members are killed with -9 and cut off with nftables.

Issue 3, "Proof": the history must be linearizable (:mod:`raft.linearizability`, checked per key)
and every acknowledged write must be there at the end. Also measures leader failover with the
default Raft timing (election timeout randomised 1–2 s): kill -9 of the leader → a new leader on
``/status``, and → the first successful write. Figures are printed as ``FIGURE name value unit``
lines (run with ``-s`` to see them); only a generous sanity bound (10 s) is asserted on time.

The lab part is only the network: bridge ``shoal-lab0`` and netns ``shoal-h1..3`` made with
:func:`deploy.lab.lab.make_network` (no registry, no shoald); this module's fixture always runs
:func:`deploy.lab.lab.down` afterwards and asserts nothing is left. The test process is the
client, reaching the members over the bridge (10.99.0.1 → 10.99.0.1x). Cutting a member off drops
its traffic to and from the other members only (table ``shoal-raftkv-cut-<pid>`` in its netns):
clients can still talk to it and must get refusals or timeouts, never stale answers.

Timeline (seconds from the first client operation, roughly): 3 kill -9 the leader, restart it on
the same data directory once a new leader is seen; ~6 cut the (new) leader off for 4 s, heal;
~14 kill -9 a follower and keep it down until the leader compacted past its log (so it must
catch up from a snapshot), restart it; ~17 cut the leader and a follower off for 3 s (no quorum
anywhere: writes must fail with "no quorum", those the leader took have unknown outcomes), heal;
clients run ~2 s more. Then: everything healed, wait for the three state machines to be
identical, final reads through every member, the checks: the history is linearizable (and the
checker rejects the same history with one read made stale, so it is not vacuous); every
acknowledged write is in the final per-key list, in real-time order, nothing applied twice or
invented; the three members hold the same state.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deploy.lab import lab
from raft.linearizability import Operation, check_history
from tests.waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.timeout(180)]

N = 3
RAFT_PORT = 7000
HTTP_PORT = 8000
KEYS = ("a", "b", "c")
CLIENTS = 6
SNAPSHOT_EVERY = 200
KEEP = 20
CUT_TABLE = f"shoal-raftkv-cut-{os.getpid()}"
REPO = Path(__file__).resolve().parents[2]
SANITY_FAILOVER = 10.0  # seconds: not the 2 s target, only "something is badly wrong"


def url(i: int, path: str) -> str:
    """The HTTP address of member ``i``'s API."""
    return f"http://{lab.host_ip(i)}:{HTTP_PORT}{path}"


def nsenter(i: int, cmd: list[str]) -> list[str]:
    """argv running ``cmd`` in lab host ``i``'s network namespace only."""
    return ["nsenter", f"--net={lab.NETNS_DIR / lab.netns_name(i)}", "--", *cmd]


class Members:
    """The raftkv processes: start/kill/restart member ``i`` (1..N) on its own data directory,
    cut it off from the other members with nftables and heal it. Keeps every Popen handle;
    :meth:`stop_all` kills what it started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.cut: set[int] = set()
        self.peers = ",".join(f"{i}={lab.host_ip(i)}:{RAFT_PORT}" for i in range(1, N + 1))

    def logfile(self, i: int) -> Path:
        """Member ``i``'s log (appended across restarts)."""
        return self.root / f"raftkv-h{i}.log"

    def start(self, i: int) -> None:
        """Start member ``i`` in host ``i``'s netns (does not wait for it)."""
        assert i not in self.procs or self.procs[i].poll() is not None, f"member {i} is running"
        argv = nsenter(i, [sys.executable, "-m", "tests.e2e.raftkv", "--id", str(i), "--peers", self.peers,
                           "--dir", str(self.root / f"h{i}"), "--http", f"{lab.host_ip(i)}:{HTTP_PORT}",
                           "--snapshot-every", str(SNAPSHOT_EVERY), "--keep", str(KEEP)])
        with open(self.logfile(i), "ab") as out:
            out.write(f"==== start {time.strftime('%H:%M:%S')} ====\n".encode())
            out.flush()
            self.procs[i] = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True)

    def kill9(self, i: int) -> None:
        """SIGKILL member ``i`` (nsenter execs python, so this is the member itself) and reap it."""
        p = self.procs[i]
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGKILL)
        p.wait(10)

    def alive(self, i: int) -> bool:
        """True while member ``i``'s process runs."""
        return i in self.procs and self.procs[i].poll() is None

    def cut_off(self, i: int) -> None:
        """Drop all traffic between member ``i`` and the other members (both directions), inside
        host ``i``'s netns; the bridge gateway (the test's clients) still reaches it."""
        others = ", ".join(lab.host_ip(j) for j in range(1, N + 1) if j != i)
        rules = (f"table inet {CUT_TABLE} {{\n"
                 f"  chain input {{ type filter hook input priority filter; policy accept; "
                 f"ip saddr {{ {others} }} drop; }}\n"
                 f"  chain output {{ type filter hook output priority filter; policy accept; "
                 f"ip daddr {{ {others} }} drop; }}\n}}\n")
        subprocess.run(nsenter(i, ["nft", "-f", "-"]), input=rules, text=True, check=True,
                       capture_output=True, timeout=10)
        self.cut.add(i)

    def heal(self, i: int) -> None:
        """Delete member ``i``'s drop table (no error if it is gone)."""
        subprocess.run(nsenter(i, ["nft", "delete", "table", "inet", CUT_TABLE]), capture_output=True,
                       timeout=10)
        self.cut.discard(i)

    def stop_all(self, heal: bool = True) -> None:
        """Heal every cut (unless ``heal`` is False: the namespaces are no longer ours) and
        SIGKILL every member this object started."""
        if heal:
            for i in list(self.cut):
                self.heal(i)
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)

    def tails(self, lines: int = 25) -> str:
        """The last lines of every member's log, for failure messages."""
        out = []
        for i in range(1, N + 1):
            f = self.logfile(i)
            text = f.read_text(errors="replace").splitlines()[-lines:] if f.exists() else []
            out.append(f"--- {f} ---\n" + "\n".join(text))
        return "\n".join(out)


# Recorded as the lab's "runtime" in state.json: tells this module's lab from one another session
# brought up meanwhile (``lab.up`` starts with ``lab.down``, which would also kill our members).
OWNER = f"raftkv-test:{os.getpid()}:{os.urandom(4).hex()}"


def lab_is_ours() -> bool:
    """True while /run/shoal-lab/state.json is the one this module wrote."""
    st = lab.LabState.load()
    return st is not None and st.runtime == OWNER


def skip_if_lab_taken() -> None:
    """Skip (the run is void) when another session replaced the lab under this test."""
    if not lab_is_ours():
        pytest.skip("another session tore the lab down or replaced it during this test (lab.up begins "
                    "with lab.down, which kills every process in the lab namespaces); the run is void")


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Members]:
    """Three lab netns hosts on the lab bridge (network only) and a :class:`Members` to run raftkv
    in them. Teardown kills the members, deletes the nft tables and runs ``lab.down()``, then
    asserts the lab left nothing behind — also when setup or the test failed. If another session
    took the lab over meanwhile, teardown kills only this module's processes and leaves that lab
    alone."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    if lab.LabState.load() is not None or list(lab.NETNS_DIR.glob("shoal-h*")) or lab._link_exists(lab.BRIDGE):
        pytest.skip("a lab is already up (another test session?); this test builds its own network and "
                    "would tear that one down. If it is stale, run `shoal-lab down` first.")
    m = Members(tmp_path_factory.mktemp("raftkv"))
    try:
        state = lab.LabState(runtime=OWNER, hosts=[
            lab.HostState(name=lab.host_name(i), index=i, ip=lab.host_ip(i), netns=lab.netns_name(i))
            for i in range(1, N + 1)])
        state.save()  # so that `shoal-lab down` and other lab users see a lab is up
        lab.make_network(N)
        yield m
    finally:
        ours = lab_is_ours()
        try:
            m.stop_all(heal=ours)
        finally:
            if ours:
                leftovers = lab.down(quiet=True)
                assert leftovers == [], f"the lab left things behind: {leftovers}"
            else:
                print("raftkv-lab: another session owns the lab now; left it alone", flush=True)


# ----------------------------------------------------------------------------- the clients


@dataclass
class Record:
    """Everything the run observed."""

    history: list[Operation] = field(default_factory=list)
    acked: dict[str, list[Operation]] = field(default_factory=dict)  # key -> acknowledged writes
    unknown: dict[str, list[Operation]] = field(default_factory=dict)  # key -> unknown-outcome writes
    refused: dict[str, str] = field(default_factory=dict)  # value -> why it never entered the log
    failed_reads: int = 0
    figures: dict[str, float] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    no_quorum: tuple[float, float] = (0.0, 0.0)  # when no majority could talk (monotonic)
    final: dict[str, list[str]] = field(default_factory=dict)  # the converged state machine
    refusals: list[tuple[float, str]] = field(default_factory=list)  # (time, 503 message) of writes
    t0: float = 0.0

    def event(self, what: str) -> None:
        """Note a nemesis step with its time since the start (printed on failure and at the end)."""
        line = f"{time.monotonic() - self.t0:6.2f}s {what}"
        self.events.append(line)
        print(f"  [raftkv-lab] {line}", flush=True)


TIMEOUT = aiohttp.ClientTimeout(total=5.0, connect=1.0)
POLL = aiohttp.ClientTimeout(total=0.5)


async def client(cid: int, session: aiohttp.ClientSession, rec: Record, stop: asyncio.Event) -> None:
    """One sequential client: random reads and writes of KEYS, starting at member ``cid % N + 1``.
    Writes carry unique values ``c<cid>-<n>``. A write is recorded acknowledged (200), not at all
    (503 "not-applied" or connection refused: it never entered the log) or with an unknown
    outcome (503 "unknown", timeout, connection lost: ``ret=None``, it may take effect at any time
    after its call, or never). A read is recorded only when it returned (200 → value, 404 → None).
    On a refusal the client moves to the leader the member named, else to the next member."""
    rng = random.Random(cid)
    home = cid % N + 1
    target = home
    n = 0
    while not stop.is_set():
        key = rng.choice(KEYS)
        ok = True
        if rng.random() < 0.5:
            n += 1
            value = f"c{cid}-{n}"
            call = time.monotonic()
            try:
                # POST, not PUT: aiohttp resends an idempotent request by itself when a kept-alive
                # connection drops (a killed member), and the resend's refusal would hide the
                # first attempt's possible effect.
                async with session.post(url(target, f"/kv/{key}"), data=value.encode(), timeout=TIMEOUT) as r:
                    body = await r.json()
                    status = r.status
                ret = time.monotonic()
                if status == 200:
                    op = Operation(cid, call, ret, "w", key, value)
                    rec.history.append(op)
                    rec.acked.setdefault(key, []).append(op)
                else:
                    ok = False
                    rec.refusals.append((ret, str(body.get("message"))))
                    if body.get("outcome") == "not-applied":
                        rec.refused[value] = f"{time.monotonic() - rec.t0:.3f}s member {target}: {body}"
                    else:
                        op = Operation(cid, call, None, "w", key, value)
                        rec.history.append(op)
                        rec.unknown.setdefault(key, []).append(op)
                    leader = int(body.get("leader") or 0)
                    target = leader if leader and leader != target else target % N + 1
            except aiohttp.ClientConnectorError as e:  # nothing was sent: no effect
                ok = False
                rec.refused[value] = f"{time.monotonic() - rec.t0:.3f}s member {target}: {e!r}"
                target = target % N + 1
            except (aiohttp.ClientError, TimeoutError):
                ok = False
                op = Operation(cid, call, None, "w", key, value)
                rec.history.append(op)
                rec.unknown.setdefault(key, []).append(op)
                target = target % N + 1
        else:
            # Reads go to the client's home member (followers serve ReadIndex reads), else onwards.
            member = home if rng.random() < 0.7 else rng.randint(1, N)
            call = time.monotonic()
            try:
                async with session.get(url(member, f"/kv/{key}"), timeout=TIMEOUT) as r:
                    body = await r.json()
                    status = r.status
                ret = time.monotonic()
                if status == 200:
                    rec.history.append(Operation(cid, call, ret, "r", key, result=body["value"]))
                elif status == 404:
                    rec.history.append(Operation(cid, call, ret, "r", key, result=None))
                else:
                    ok = False
                    rec.failed_reads += 1
            except (aiohttp.ClientError, TimeoutError):
                ok = False
                rec.failed_reads += 1
        await asyncio.sleep(rng.uniform(0.0, 0.01) if ok else 0.02)


# ----------------------------------------------------------------------------- the nemesis


async def status(session: aiohttp.ClientSession, i: int) -> dict[str, Any] | None:
    """Member ``i``'s /status, or None if it does not answer within 0.5 s."""
    try:
        async with session.get(url(i, "/status"), timeout=POLL) as r:
            if r.status == 200:
                out: dict[str, Any] = await r.json()
                return out
    except (aiohttp.ClientError, TimeoutError):
        pass
    return None


async def until(cond: Callable[[], Awaitable[Any]], timeout: float, what: str, members: Members,
                interval: float = 0.01) -> Any:
    """Await ``cond()`` every ``interval`` s until truthy (returned); fail naming ``what`` with the
    members' log tails after ``timeout`` seconds."""
    return await wait_until(cond, timeout, what, interval, detail=members.tails)


async def leader_among(session: aiohttp.ClientSession, ids: list[int]) -> int:
    """The member of ``ids`` whose /status says it is the leader (0 if none, or several claim it
    in different terms: the highest term wins)."""
    sts = await asyncio.gather(*(status(session, i) for i in ids))
    leaders = [(s["term"], s["id"]) for s in sts if s and s["role"] == "leader"]
    return max(leaders)[1] if leaders else 0


async def wait_up(session: aiohttp.ClientSession, members: Members, i: int, timeout: float = 15.0) -> None:
    """Wait until member ``i`` answers /status (fails at once, with its log, if it exited)."""

    async def up() -> bool:
        if not members.alive(i):
            pytest.fail(f"member {i} exited (rc {members.procs[i].returncode})\n{members.tails()}")
        return await status(session, i) is not None

    await until(up, timeout, f"member {i} to answer /status", members, interval=0.05)


async def nemesis(session: aiohttp.ClientSession, members: Members, rec: Record) -> None:
    """The fault schedule of the module docstring; fills ``rec.figures``."""
    everyone = list(range(1, N + 1))
    await asyncio.sleep(3.0)  # the schedule: let the clients run on a healthy cluster first

    # 1. kill -9 the leader; a new one must appear; restart the old one on its data directory.
    old = await until(lambda: leader_among(session, everyone), 10, "a leader", members)
    rest = [i for i in everyone if i != old]
    t_kill = time.monotonic()
    await asyncio.to_thread(members.kill9, old)
    rec.figures["kill_leader_at"] = t_kill
    rec.event(f"kill -9 leader {old}")
    new = await until(lambda: leader_among(session, rest), SANITY_FAILOVER, "a new leader after kill -9", members)
    rec.figures["failover_status_s"] = time.monotonic() - t_kill
    rec.event(f"new leader {new} on /status after {rec.figures['failover_status_s']:.3f} s")
    await asyncio.to_thread(members.start, old)
    await wait_up(session, members, old)
    rec.event(f"member {old} restarted")
    await asyncio.sleep(2.0)

    # 2. cut the leader off from the others for 4 s, then heal.
    cut = await until(lambda: leader_among(session, everyone), 10, "a leader before the cut", members)
    rest = [i for i in everyone if i != cut]
    await asyncio.to_thread(members.cut_off, cut)
    t_cut = time.monotonic()  # the drop rules are in force once nft returned
    rec.event(f"cut leader {cut} off (nft table {CUT_TABLE} in its netns)")
    other = await until(lambda: leader_among(session, rest), SANITY_FAILOVER, "a leader on the majority side",
                        members)
    rec.figures["failover_partition_s"] = time.monotonic() - t_cut
    rec.event(f"majority leader {other} after {rec.figures['failover_partition_s']:.3f} s")
    await asyncio.sleep(max(0.0, t_cut + 4.0 - time.monotonic()))
    await asyncio.to_thread(members.heal, cut)
    rec.event(f"healed {cut}")

    async def one_leader() -> int:
        sts = await asyncio.gather(*(status(session, i) for i in everyone))
        ok = [s for s in sts if s]
        if len(ok) == N and len({s["leader"] for s in ok}) == 1 and ok[0]["leader"]:
            return int(ok[0]["leader"])
        return 0

    lead = await until(one_leader, 10, "all members to agree on a leader after healing", members)
    await asyncio.sleep(1.0)

    # 3. kill -9 a follower and keep it down until the leader compacted past its log.
    victim = next(i for i in everyone if i != lead)
    st = await status(session, victim)
    behind = st["applied"] if st else 0
    await asyncio.to_thread(members.kill9, victim)
    rec.event(f"kill -9 follower {victim} (applied {behind})")

    async def compacted_past() -> bool:
        s = await status(session, lead)
        return bool(s and s["first_index"] > behind + 1)

    await until(compacted_past, 10, f"leader {lead} to compact its log past index {behind}", members, 0.05)
    await asyncio.to_thread(members.start, victim)
    await wait_up(session, members, victim)

    async def restored() -> bool:
        s = await status(session, victim)
        return bool(s and s["restores"] >= 1)

    await until(restored, 10, f"member {victim} to install a snapshot from the leader", members, 0.05)
    rec.event(f"member {victim} restarted and installed a snapshot")
    await until(one_leader, 10, "all members to agree on a leader after the restart", members)
    await asyncio.sleep(1.0)

    # 4. no quorum anywhere: cut the leader and one follower off for 3 s. Writes the leader took
    # in meanwhile have unknown outcomes (they may commit after healing); then heal.
    lead = await until(lambda: leader_among(session, everyone), 10, "a leader before losing quorum", members)
    second = next(i for i in everyone if i != lead)
    for i in (lead, second):
        await asyncio.to_thread(members.cut_off, i)
    t_cut = time.monotonic()
    rec.no_quorum = (t_cut, 0.0)
    rec.event(f"cut {lead} (leader) and {second} off: no quorum")
    await asyncio.sleep(3.0)
    for i in (lead, second):
        await asyncio.to_thread(members.heal, i)
    rec.no_quorum = (t_cut, time.monotonic())
    rec.event(f"healed {lead} and {second}")
    await until(one_leader, 10, "all members to agree on a leader after regaining quorum", members)
    rec.event("one leader again")
    await asyncio.sleep(2.0)


# ----------------------------------------------------------------------------- the checks


def check_writes(key: str, final: list[str], rec: Record) -> None:
    """Every acknowledged write of ``key`` is in its final list, nothing was applied twice or
    invented, and acknowledged writes are in real-time order (a write acknowledged before another
    was called comes first): so the final value is the last acknowledged write or a later
    unknown-outcome one."""
    acked = rec.acked.get(key, [])
    unknown = rec.unknown.get(key, [])
    pos = {v: n for n, v in enumerate(final)}
    assert len(pos) == len(final), f"key {key}: a write was applied twice: {sorted(set(final), key=final.count)[-3:]}"
    attempted = {o.value for o in acked} | {o.value for o in unknown}
    invented = [v for v in final if v not in attempted]
    assert not invented, (f"key {key}: applied values nobody wrote or that were refused: "
                          + "; ".join(f"{v} ({rec.refused.get(v, 'never sent')})" for v in invented[:5]))
    lost = [o for o in acked if o.value not in pos]
    assert not lost, f"key {key}: {len(lost)} acknowledged writes are lost, e.g. {[str(o) for o in lost[:3]]}"
    assert len(acked) <= len(final) <= len(acked) + len(unknown)
    by_ret = sorted(acked, key=lambda o: o.ret or 0.0)
    rets = [o.ret or 0.0 for o in by_ret]
    prefix_max: list[int] = []
    for o in by_ret:
        prefix_max.append(max(prefix_max[-1] if prefix_max else -1, pos[o.value]))
    for b in acked:
        k = bisect.bisect_left(rets, b.call)  # acked writes that returned before b was called
        if k:
            assert prefix_max[k - 1] < pos[b.value], (
                f"key {key}: {b} was applied before a write acknowledged before it was called")
    if final:
        last = final[-1]
        ok_last = [o for o in acked if o.value == last] or [o for o in unknown if o.value == last]
        assert ok_last, f"key {key}: final value {last!r} was never written"


def stale_read_variant(history: list[Operation]) -> list[Operation] | None:
    """A copy of ``history`` where one read returns the value of a write acknowledged and called
    only after that read returned — which no linearizable register allows. Proves the checker is
    not vacuous on this very history. None if the history has no such pair."""
    reads = [o for o in history if o.kind == "r" and o.ret is not None]
    writes = sorted((o for o in history if o.kind == "w" and o.ret is not None), key=lambda o: o.call)
    for r in reads[len(reads) // 2:]:
        assert r.ret is not None
        later = next((w for w in writes if w.key == r.key and w.call > r.ret and w.value != r.result), None)
        if later is not None:
            bad = Operation(r.client, r.call, r.ret, "r", r.key, result=later.value)
            return [bad if o is r else o for o in history]
    return None


def test_raft_kv_linearizable_under_kills_and_partitions(members: Members,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Three raftkv members, six clients, the nemesis; the history is linearizable, nothing
    acknowledged is lost, the members end identical, failover figures are printed."""
    t_start = time.monotonic()
    rec = Record()
    try:
        asyncio.run(run(members, rec))
    except BaseException:
        skip_if_lab_taken()
        raise
    skip_if_lab_taken()
    elapsed = time.monotonic() - t_start

    n_ops = len(rec.history)
    t_check = time.monotonic()
    res = check_history(rec.history)
    check_s = time.monotonic() - t_check
    assert res.ok, f"history not linearizable:\n{res.explanation}\nevents:\n" + "\n".join(rec.events)
    stale = stale_read_variant(rec.history)
    assert stale is not None and not check_history(stale).ok, "the checker accepts a read from the future"

    t_nq, t_back = rec.no_quorum
    nq = [m for t, m in rec.refusals if t_nq <= t <= t_back + 0.5]
    assert any("no quorum" in m for m in nq), f"no write was refused with 'no quorum' while no majority " \
        f"could talk; the refusals then: {sorted(set(nq))[:5]}"

    kill_at = rec.figures["kill_leader_at"]
    first_ok = min((o.ret for ops in rec.acked.values() for o in ops
                    if o.call >= kill_at and o.ret is not None), default=None)
    assert first_ok is not None, "no write succeeded after the leader was killed"
    rec.figures["failover_write_s"] = first_ok - kill_at
    acked = sum(len(v) for v in rec.acked.values())
    unknown = sum(len(v) for v in rec.unknown.values())
    reads = sum(1 for o in rec.history if o.kind == "r")
    applied = {v for vs in rec.final.values() for v in vs}
    unknown_applied = sum(1 for ops in rec.unknown.values() for o in ops if o.value in applied)
    with capsys.disabled():  # the figures are the point: show them even without -s
        print(f"\nFIGURE raftkv_failover_new_leader {rec.figures['failover_status_s']:.3f} s "
              "(kill -9 leader -> new leader on /status; default timing, election 1-2 s)")
        print(f"FIGURE raftkv_failover_first_write {rec.figures['failover_write_s']:.3f} s "
              "(kill -9 leader -> first acknowledged write)")
        print(f"FIGURE raftkv_partition_new_leader {rec.figures['failover_partition_s']:.3f} s "
              "(leader cut off by nftables -> leader on the majority side)")
        print(f"FIGURE raftkv_history {n_ops} ops ({acked} acknowledged writes, {unknown} unknown-outcome "
              f"of which {unknown_applied} took effect, "
              f"{len(rec.refused)} refused, {reads} reads, {rec.failed_reads} failed reads); "
              f"checked linearizable in {check_s:.2f} s; test ran {elapsed:.1f} s")
    assert rec.figures["failover_status_s"] < SANITY_FAILOVER
    assert rec.figures["failover_write_s"] < SANITY_FAILOVER
    assert acked > 100 and reads > 100, "too little traffic to prove anything"


async def run(members: Members, rec: Record) -> None:
    """Start the members, run clients and nemesis, heal, converge, final reads, write checks."""
    everyone = list(range(1, N + 1))
    async with aiohttp.ClientSession() as session:
        for i in everyone:
            members.start(i)
        for i in everyone:
            await wait_up(session, members, i)
        await until(lambda: leader_among(session, everyone), 10, "the first leader", members)
        rec.t0 = time.monotonic()
        stop = asyncio.Event()
        clients = [asyncio.create_task(client(c, session, rec, stop)) for c in range(CLIENTS)]
        try:
            await nemesis(session, members, rec)
        finally:
            stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
        rec.event("clients stopped")
        for i in list(members.cut):
            members.heal(i)
        for i in everyone:
            assert members.alive(i), f"member {i} died on its own\n{members.tails()}"

        # Converge: the three state machines identical and caught up.
        dumps: list[dict[str, Any]] = []

        async def converged() -> bool:
            nonlocal dumps
            dumps = []
            for i in everyone:
                try:
                    async with session.get(url(i, "/dump"), timeout=TIMEOUT) as r:
                        dumps.append(await r.json())
                except (aiohttp.ClientError, TimeoutError):
                    return False
            sts = await asyncio.gather(*(status(session, i) for i in everyone))
            return (all(s and s["applied"] == s["commit"] for s in sts)
                    and all(d["data"] == dumps[0]["data"] and d["applied"] == dumps[0]["applied"] for d in dumps))

        await until(converged, 15, "the three state machines to converge", members, 0.1)
        rec.event(f"converged at index {dumps[0]['applied']}")

        # Final linearizable reads of every key through every member (part of the history).
        for i in everyone:
            for key in KEYS:
                call = time.monotonic()
                async with session.get(url(i, f"/kv/{key}"), timeout=TIMEOUT) as r:
                    body = await r.json()
                    assert r.status in (200, 404), f"final read of {key} on {i}: {r.status} {body}"
                rec.history.append(Operation(100 + i, call, time.monotonic(), "r", key,
                                             result=body.get("value") if r.status == 200 else None))
    rec.final = dumps[0]["data"]
    for key in KEYS:
        check_writes(key, rec.final.get(key, []), rec)
