"""Where a blip becomes a loss, on the lab (root): figures, never pass/fail.

Brings up a 2-host lab (h1 manager, h2 worker) with ``--heartbeat`` (2 s), one service of
2 replicas, then freezes h2's ``shoald`` (SIGSTOP) for each of ``--freezes`` seconds,
``--trials`` times each, and records whether the manager marked h2 down and whether h2's task
was replaced. Between trials it waits for h2 to be ready and the service to be one task per slot
again. Run under the lab lock:

    flock /tmp/shoal-lab.lock python tests/bench/bench_blips.py
    flock /tmp/shoal-lab.lock python tests/bench/bench_blips.py --heartbeat 5 --freezes 8,12,14,16,18

Prints ``FIGURE blip_<freeze>s_down <n>/<trials>`` lines (and the time to be marked down after
SIGSTOP when it was) and the rule they follow: always survived below (misses-1) × period × 0.9,
always lost above misses × period × 1.1 (docs/architecture.md, "Nodes that blip").
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploy.lab import lab  # noqa: E402
from tests.e2e.conftest import client, shoal, wait_until  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heartbeat", type=float, default=2.0, help="seconds (the lab's dispatcher period)")
    p.add_argument("--freezes", default="3,4,4.5,5,5.5,6,7", help="freeze lengths in seconds, comma-separated")
    p.add_argument("--trials", type=int, default=3)
    a = p.parse_args()
    if os.geteuid() != 0:
        print("the lab needs root", file=sys.stderr)
        return 2
    freezes = [float(x) for x in a.freezes.split(",")]
    st = lab.up(2, heartbeat_period=a.heartbeat)
    try:
        h1, h2 = st.host("h1"), st.host("h2")
        assert shoal("h1", "swarm", "init", "--advertise-addr", h1.ip).returncode == 0
        token = shoal("h1", "swarm", "join-token", "-q", "worker").stdout.strip()
        assert shoal("h2", "swarm", "join", "--token", token, f"{h1.ip}:2377").returncode == 0
        wait_until(lambda: sum(n["Status"]["State"] == "ready" for n in client("h1").nodes()) == 2, 60, "2 nodes")
        r = shoal("h1", "service", "create", "--name", "b", "--replicas", "2", "--timeout", "180",
                  lab.IMAGE, "httpd", "-f", "-p", "80", "-h", "/www", timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        h2_id = next(n["ID"] for n in client("h1").nodes() if n["Description"]["Hostname"] == "h2")
        sid = client("h1").service("b")["ID"]

        def current() -> list[dict[str, object]]:
            return [t for t in client("h1").tasks({"service": [sid]}) if t["DesiredState"] == "running"]

        def steady() -> bool:
            ts = current()
            return (client("h1").node(h2_id)["Status"]["State"] == "ready" and len(ts) == 2
                    and all(t["Status"]["State"] == "running" for t in ts))  # type: ignore[index]

        for f in freezes:
            downs, after = 0, []
            for _ in range(a.trials):
                wait_until(steady, 120, "h2 ready and one running task per slot")
                before = {t["ID"] for t in current()}
                assert h2.pid
                t0 = time.monotonic()
                os.kill(h2.pid, signal.SIGSTOP)
                went_down = None
                try:
                    while time.monotonic() - t0 < f:
                        if went_down is None and client("h1").node(h2_id)["Status"]["State"] == "down":
                            went_down = time.monotonic() - t0
                        time.sleep(0.05)
                finally:
                    os.kill(h2.pid, signal.SIGCONT)
                # the last beat may still be missed just after the thaw: watch one grace more
                end = time.monotonic() + 3.5 * a.heartbeat
                while went_down is None and time.monotonic() < end:
                    if client("h1").node(h2_id)["Status"]["State"] == "down":
                        went_down = time.monotonic() - t0
                    time.sleep(0.05)
                if went_down is not None:
                    downs += 1
                    after.append(went_down)
                else:
                    wait_until(steady, 30, "steady")
                    assert {t["ID"] for t in current()} == before, "a survived blip replaced a task"
            extra = f" (marked down {min(after):.2f}-{max(after):.2f} s after SIGSTOP)" if after else ""
            print(f"FIGURE blip_{f:g}s_down {downs}/{a.trials}{extra}", flush=True)
        print(f"rule: heartbeat {a.heartbeat:g} s, 3 misses: always survived below {2 * a.heartbeat * 0.9:.2f} s, "
              f"always lost above {3 * a.heartbeat * 1.1:.2f} s", flush=True)
    finally:
        lab.down(quiet=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
