"""Nodes sharing a local-bridge subnet on the lab (root): the bridge's addresses are node-local
(like Docker's ``docker_gwbridge``), so with the pool forced down to one /24 all three swarm nodes
get ``10.200.1.0/24``, their tasks may hold the very same address, and each task still answers on
its own node and through the routing mesh from every node.

The tiny pool is forced without any production knob: the lab's shoald processes inherit this
process's environment, and ``PYTHONPATH`` points at a ``sitecustomize`` that changes
:class:`manager.ipam.BridgeIPAM`'s default pool to ``10.200.0.0/23`` (one usable /24)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.lab import lab
from deploy.lab.demo import whoami_all
from tests.e2e.conftest import client, lab_session, shoal, wait_until

pytestmark = [pytest.mark.root, pytest.mark.e2e]

TINY_POOL = "10.200.0.0/23"
_SITE = f"import manager.ipam as _m\n_m.BridgeIPAM.__init__.__defaults__ = ({TINY_POOL!r}, 24)\n"
_GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"


@pytest.fixture(scope="module")
def tiny_pool_lab() -> Iterator[lab.LabState]:
    """The four-host lab whose managers' bridge IPAM has a single /24 (see module docstring)."""
    old = os.environ.get("PYTHONPATH")
    with tempfile.TemporaryDirectory(prefix="shoal-tiny-pool-") as d:
        (Path(d) / "sitecustomize.py").write_text(_SITE, encoding="utf-8")
        os.environ["PYTHONPATH"] = d if not old else f"{d}{os.pathsep}{old}"
        try:
            yield from lab_session(1.0)
        finally:
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old


def _from_host(host: str, url: str) -> str:
    res = subprocess.run(["nsenter", f"--net={lab.NETNS_DIR / ('shoal-' + host)}", "--", sys.executable, "-I",
                          "-c", _GET, url], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise AssertionError(f"GET {url} from {host}: {res.stderr.strip()}")
    return res.stdout.strip()


def test_three_nodes_share_one_bridge_subnet_and_tasks_and_mesh_work(tiny_pool_lab: lab.LabState) -> None:
    st = tiny_pool_lab
    ip = {h: st.host(h).ip for h in ("h1", "h2", "h3", "h4")}
    assert shoal("h1", "swarm", "init", "--advertise-addr", ip["h1"]).returncode == 0
    token = shoal("h1", "swarm", "join-token", "-q", "worker").stdout.strip()
    for h in ("h2", "h3"):
        r = shoal(h, "swarm", "join", "--token", token, f"{ip['h1']}:2377")
        assert r.returncode == 0, f"{h}: {r.stderr}"
    c = client("h1")

    def with_subnets() -> list[dict[str, Any]] | None:
        ns = c.nodes()
        return ns if len(ns) == 3 and all((n.get("ShoalBridge") or {}).get("Subnet") for n in ns) else None

    nodes = wait_until(with_subnets, 60, "3 nodes with a bridge subnet")
    assert {n["ShoalBridge"]["Subnet"] for n in nodes} == {"10.200.1.0/24"}, [n["ShoalBridge"] for n in nodes]
    assert len(nodes) == 3
    r = shoal("h1", "service", "create", "--name", "web", "--replicas", "3", "--publish", "8080:80",
              "--timeout", "180", lab.IMAGE, "httpd", "-f", "-p", "80", "-h", "/www", timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr

    def three() -> list[tuple[str, str, str]] | None:
        got = whoami_all(st, "web")
        return got if len(got) == 3 else None

    answers = wait_until(three, 60, "3 running web tasks answering on their nodes")
    assert sorted(h for h, _, _ in answers) == ["h1", "h2", "h3"]  # one per node, all on 10.200.1.0/24
    assert {a_ip for _, a_ip, _ in answers} == {"10.200.1.2"}  # the same address on each node
    assert len({who for _, _, who in answers}) == 3  # three different containers answered
    # the routing mesh (its delivery to a local task uses the bridge address): every node answers
    mesh = {h: wait_until(lambda h=h: _from_host("h4", f"http://{ip[h]}:8080/cgi-bin/whoami"), 30,
                          f"{h}:8080 through the mesh") for h in ("h1", "h2", "h3")}
    assert set(mesh.values()) <= {who for _, _, who in answers}
    shoal("h1", "service", "rm", "web")
