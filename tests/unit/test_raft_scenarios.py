"""Scripted Raft interactions with their expected output, in the style of etcd-io/raft's
datadriven tests: each file in ``tests/unit/raft_scenarios/`` is a list of blocks

    command arg arg key=value
    ----
    expected output (one or more non-blank lines)

separated by blank lines; lines starting with ``#`` between blocks are comments. The runner
drives a :class:`raft.sim.harness.Harness` and compares each command's output. After a
deliberate behaviour change, regenerate the expected output with

    .venv/bin/python tests/unit/test_raft_scenarios.py --rewrite

and review the diff (``git diff tests/unit/raft_scenarios``).

Commands: ``add-nodes N [config=value…]``, ``add-node ID`` (empty, joining), ``campaign ID``,
``propose ID DATA``, ``conf-change ID add-voter|remove-voter|add-learner|remove-learner NODE``,
``transfer ID TO``, ``read-index ID CTX``, ``compact ID [KEEP]``, ``tick ID|all [N]``,
``deliver [ID]`` (one round, optionally only messages to ID), ``stabilize``, ``isolate ID``,
``heal``, ``crash ID``, ``restart ID``, ``status``, ``log ID``, ``applied ID``,
``read-states ID``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from raft.core import ConfChangeType, Entry, EntryType, Message, ProposalDropped, message_to_dict
from raft.sim.harness import Harness

DIR = Path(__file__).parent / "raft_scenarios"


def fmt_entry(e: Entry) -> str:
    if e.type is EntryType.CONF_CHANGE:
        return f"{e.index}/{e.term}:conf"
    return f"{e.index}/{e.term}:{e.data.decode(errors='replace') or '-'}"


def fmt_msg(m: Message) -> str:
    d = message_to_dict(m)
    parts = [f"{m.frm}->{m.to} {d.pop('type')}"]
    for k in ("from", "to"):
        d.pop(k)
    for k, v in d.items():
        if k == "entries":
            if v:
                parts.append("entries=[" + " ".join(fmt_entry(Entry.from_wire(e)) for e in v) + "]")
        elif k == "meta":
            parts.append(f"snap={v['index']}/{v['term']}")
        elif k == "data":
            parts.append(f"bytes={len(v)}")
        elif isinstance(v, bytes):
            parts.append(f"{k}={v.decode(errors='replace')}")
        elif v not in (0, False, b"", None) or k == "term":
            parts.append(f"{k}={'true' if v is True else v}")
    return " ".join(parts)


def fmt_status(h: Harness, nid: int) -> str:
    n = h.nodes[nid]
    if n.raw is None:
        return f"{nid}: down"
    s = n.raw.status()
    learners = ",".join(map(str, s["learners"])) or "-"
    return (f"{nid}: {s['role']} term={s['term']} vote={s['vote']} lead={s['leader']} "
            f"commit={s['commit']} applied={s['applied']} last={s['last_index']} "
            f"voters={','.join(map(str, s['voters']))} learners={learners}")


def _parse_value(v: str) -> Any:
    if v in ("true", "false"):
        return v == "true"
    return int(v)


class Runner:
    """Executes one scenario file's commands against a harness."""

    def __init__(self) -> None:
        self.h: Harness | None = None

    def run(self, line: str) -> str:
        cmd, *args = line.split()
        try:
            out = self._run(cmd, args)
        except (ProposalDropped, ValueError) as e:
            out = [f"error: {e}"]
        return "\n".join(out) if out else "ok"

    def _deliver_lines(self, pred: Any = None) -> list[str]:
        h = self.h
        assert h is not None
        h.process()
        msgs = [m for m in h.queue if pred is None or pred(m)]
        h.deliver(pred)
        return [fmt_msg(m) for m in msgs]

    def _run(self, cmd: str, a: list[str]) -> list[str]:
        if cmd == "add-nodes":
            cfg = {k: _parse_value(v) for k, v in (x.split("=", 1) for x in a[1:])}
            self.h = Harness(int(a[0]), **cfg)
            return [fmt_status(self.h, i) for i in sorted(self.h.nodes)]
        h = self.h
        if h is None:
            raise AssertionError("the first command must be add-nodes")
        if cmd == "add-node":
            h.add_node(int(a[0]))
            return [fmt_status(h, int(a[0]))]
        if cmd == "campaign":
            h.raw(int(a[0])).campaign()
            h.process()
            return [fmt_status(h, int(a[0]))]
        if cmd == "propose":
            idx = h.propose(int(a[0]), a[1].encode())
            return [f"index {idx}" if idx is not None else "forwarded"]
        if cmd == "conf-change":
            kind = ConfChangeType(a[1].replace("-", "_"))
            idx = h.conf_change(int(a[0]), kind, int(a[2]))
            return [f"index {idx}" if idx is not None else "forwarded"]
        if cmd == "transfer":
            h.raw(int(a[0])).transfer_leadership(int(a[1]))
            h.process()
            return []
        if cmd == "read-index":
            h.raw(int(a[0])).read_index(a[1].encode())
            h.process()
            return []
        if cmd == "compact":
            snap = h.compact(int(a[0]), int(a[1]) if len(a) > 1 else 0)
            return [f"snapshot {snap.index}/{snap.term} first_index={h.raw(int(a[0])).log.first_index()}"]
        if cmd == "tick":
            n = int(a[1]) if len(a) > 1 else 1
            h.tick(None if a[0] == "all" else int(a[0]), n)
            return [fmt_status(h, i) for i in sorted(h.nodes)]
        if cmd == "deliver":
            to = int(a[0]) if a else None
            return self._deliver_lines(None if to is None else (lambda m: m.to == to))
        if cmd == "stabilize":
            out: list[str] = []
            for _ in range(200):
                h.process()
                if not h.queue:
                    break
                out.extend(self._deliver_lines())
            return out + [fmt_status(h, i) for i in sorted(h.nodes)]
        if cmd == "isolate":
            h.isolate(int(a[0]))
            return []
        if cmd == "heal":
            h.heal()
            return []
        if cmd == "crash":
            h.crash(int(a[0]))
            return []
        if cmd == "restart":
            h.restart(int(a[0]))
            return [fmt_status(h, int(a[0]))]
        if cmd == "status":
            return [fmt_status(h, i) for i in sorted(h.nodes)]
        if cmd == "log":
            lg = h.raw(int(a[0])).log
            return [fmt_entry(lg.entry(i)) for i in range(lg.first_index(), lg.last_index() + 1)] or ["(empty)"]
        if cmd == "applied":
            return [x.decode() for x in h.nodes[int(a[0])].applied] or ["(nothing)"]
        if cmd == "read-states":
            rs = h.nodes[int(a[0])].read_states
            out = [f"index={r.index} context={r.context.decode()}" for r in rs]
            rs.clear()
            return out or ["(none)"]
        raise AssertionError(f"unknown command {cmd!r}")


def parse(path: Path) -> list[tuple[str, str]]:
    """Blocks of (command, expected output)."""
    blocks: list[tuple[str, str]] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1].strip() != "----":
            raise AssertionError(f"{path.name}:{i + 1}: command {line!r} must be followed by ----")
        i += 2
        out = []
        while i < len(lines) and lines[i].strip():
            out.append(lines[i].rstrip())
            i += 1
        blocks.append((line, "\n".join(out)))
    return blocks


def rewrite(path: Path) -> None:
    """Re-run ``path`` and write the actual outputs into it, keeping comments."""
    r = Runner()
    src = path.read_text().splitlines()
    out: list[str] = []
    i = 0
    while i < len(src):
        line = src[i]
        if not line.strip() or line.strip().startswith("#"):
            out.append(line)
            i += 1
            continue
        out.append(line)
        out.append("----")
        out.extend(r.run(line.strip()).splitlines())
        out.append("")
        i += 1
        if i < len(src) and src[i].strip() == "----":
            i += 1
            while i < len(src) and src[i].strip():
                i += 1
            if i < len(src):
                i += 1  # the blank line after the block
    path.write_text("\n".join(out).rstrip("\n") + "\n")


FILES = sorted(DIR.glob("*.txt"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario(path: Path) -> None:
    r = Runner()
    for cmd, want in parse(path):
        got = r.run(cmd)
        assert got == want, (f"{path.name}: {cmd!r} printed\n{got}\n--- expected ---\n{want}\n"
                             f"(after a deliberate change: python {__file__} --rewrite)")


if __name__ == "__main__":
    if "--rewrite" not in sys.argv:
        sys.exit(f"usage: python {sys.argv[0]} --rewrite   (regenerates the expected outputs)")
    for p in FILES:
        rewrite(p)
        print(f"rewrote {p}")
