"""Container start latency: Shoal's OCI runtime (shoal-oci, Python) beside Debian's runc on the same bundles.

Prints figures, never passes or fails on time. Run as root:

    .venv/bin/python tests/bench/bench_container_start.py [N]

Figures (seconds, ``FIGURE <name> <value>`` lines):
- ``oci_run_first_output_{shoal,runc}_{median,p90}``: ``<runtime> run`` on a prepared bundle until the
  container's first stdout byte (the process has exec'd and runs user code).
- ``runtime_create_to_running_{shoal,runc}_{median,p90}``: ``Runtime.create`` (overlay snapshot,
  bundle) + ``Runtime.start`` (shim, runtime, process exists) through agent_runtime.
- ``runtime_50_concurrent_to_running_shoal``: wall time for 50 containers created and started at once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent_runtime.containers import ContainerSpec, Runtime  # noqa: E402
from agent_runtime.images import ImageStore  # noqa: E402
from agent_runtime.oci.cgroups import Cgroup  # noqa: E402
from shoal.base.util import new_container_id  # noqa: E402
from tests.integration.conftest import TEST_REF, make_busybox_oci_archive  # noqa: E402

RUNTIMES = {"shoal": str(Path(sys.executable).parent / "shoal-oci"), "runc": shutil.which("runc") or "/usr/sbin/runc"}


def figure(name: str, value: float) -> None:
    """Print one figure line."""
    print(f"FIGURE {name} {value:.4f}", flush=True)


def p90(xs: list[float]) -> float:
    """90th percentile (nearest rank) of ``xs``."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(0.9 * len(s))) - 1))]


def oci_first_output(runtime: str, bundle: Path, state_root: Path, name: str) -> float:
    """Seconds from spawning ``<runtime> run`` to the container's first stdout byte; waits for exit."""
    t0 = time.perf_counter()
    p = subprocess.Popen([runtime, "--root", str(state_root), "run", "--bundle", str(bundle), name],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert p.stdout is not None
    first = p.stdout.read(1)
    t1 = time.perf_counter()
    _, err = p.communicate(timeout=60)
    if first != b"u" or p.returncode != 0:
        raise RuntimeError(f"{runtime} run failed ({p.returncode}): {err.decode(errors='replace')}")
    return t1 - t0


async def main(n: int) -> None:
    base = Path("/var/tmp") / f"shoal-bench-{os.getpid()}"
    base.mkdir(parents=True)
    parent = f"shoal-bench-{os.getpid()}"
    images = ImageStore(base / "images")
    images.load(make_busybox_oci_archive(base / "busybox.tar"))
    rts = {kind: Runtime(base / f"c-{kind}", base / f"x-{kind}", images, parent, kind) for kind in RUNTIMES}
    try:
        # 1. The bare OCI runtimes on one prepared bundle.
        prep = rts["shoal"]
        cid = new_container_id()
        await prep.create(ContainerSpec(id=cid, image=TEST_REF, command=["echo", "up"]))
        bundle = prep.root / cid
        for kind, binary in RUNTIMES.items():
            xs = [oci_first_output(binary, bundle, base / f"state-{kind}", f"b{i}") for i in range(n)]
            figure(f"oci_run_first_output_{kind}_median", statistics.median(xs))
            figure(f"oci_run_first_output_{kind}_p90", p90(xs))
        await prep.remove(cid)

        # 2. Through agent_runtime: create (snapshot + bundle) and start (shim + runtime) until running.
        for kind, rt in rts.items():
            xs = []
            for _ in range(n):
                cid = new_container_id()
                t0 = time.perf_counter()
                await rt.create(ContainerSpec(id=cid, image=TEST_REF, command=["sleep", "30"]))
                st = await rt.start(cid)
                xs.append(time.perf_counter() - t0)
                assert st.status == "running", st
                await rt.remove(cid)
            figure(f"runtime_create_to_running_{kind}_median", statistics.median(xs))
            figure(f"runtime_create_to_running_{kind}_p90", p90(xs))

        # 3. Fifty at once through agent_runtime with shoal-oci.
        for kind in ("shoal", "runc"):
            rt = rts[kind]
            ids = [new_container_id() for _ in range(50)]

            async def one(c: str, rt: Runtime = rt) -> None:
                await rt.create(ContainerSpec(id=c, image=TEST_REF, command=["sleep", "30"]))
                st = await rt.start(c)
                assert st.status == "running", st

            t0 = time.perf_counter()
            await asyncio.gather(*(one(c) for c in ids))
            figure(f"runtime_50_concurrent_to_running_{kind}", time.perf_counter() - t0)
            await asyncio.gather(*(rt.remove(c) for c in ids))
    finally:
        for rt in rts.values():
            for st in rt.list():
                await rt.remove(st.id)
        Cgroup("/" + parent).destroy()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench_container_start.py needs root (namespaces, cgroups, mounts)")
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
