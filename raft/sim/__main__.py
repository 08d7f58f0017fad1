"""Command line: ``python -m raft.sim --seed 1234 --nodes 5 --steps 20000`` replays one run;
``python -m raft.sim --seeds 1-200 --nodes 3,5`` is a soak over many seeds. Exit status 1 if
any run violates a safety property (each failure is printed with its replay command)."""

from __future__ import annotations

import argparse
import sys
import time

from raft.sim.cluster import SafetyViolation, SimParams, Simulation


def _ints(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print one line per run (or only failures with --quiet)."""
    ap = argparse.ArgumentParser(prog="python -m raft.sim", description=__doc__)
    ap.add_argument("--seed", type=int, help="one seed (replay)")
    ap.add_argument("--seeds", default=None, help="seeds, e.g. 1-200 or 1,5,9")
    ap.add_argument("--nodes", default="3", help="cluster sizes, e.g. 3 or 3,5")
    ap.add_argument("--steps", type=int, default=3000, help="simulated steps per run (default 3000)")
    ap.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    a = ap.parse_args(argv)
    try:
        seeds = [a.seed] if a.seed is not None else _ints(a.seeds or "1-20")
        sizes = _ints(a.nodes)
    except ValueError:
        ap.error("seeds and nodes are integers, lists (1,2,3) or ranges (1-200)")
    if any(n < 1 for n in sizes):
        ap.error("--nodes must be positive")
    failures = 0
    t0 = time.monotonic()
    for n in sizes:
        for s in seeds:
            sim = Simulation(SimParams.from_seed(s, n, a.steps))
            try:
                st = sim.run()
            except SafetyViolation as e:
                failures += 1
                print(f"FAIL {e}", flush=True)
                continue
            if not a.quiet:
                print(f"ok   seed {s} nodes {n}: " + " ".join(f"{k}={v}" for k, v in st.items()), flush=True)
    runs = len(seeds) * len(sizes)
    print(f"{runs - failures}/{runs} runs passed in {time.monotonic() - t0:.1f}s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
