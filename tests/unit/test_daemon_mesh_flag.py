"""``shoald --ingress-keep-client-addr`` (issue 9, beyond Swarm): off by default; on, the routing
mesh of the node's executor is given the node's own task addresses, so it sends a published port
to a local task without SNAT (worker.mesh)."""

from __future__ import annotations

from pathlib import Path

from shoal.daemon.daemon import Daemon
from shoal.daemon.main import parse_args


def _daemon(tmp_path: Path, *flags: str) -> Daemon:
    return Daemon(parse_args(["--data-root", str(tmp_path / "data"), "--exec-root", str(tmp_path / "exec"),
                              "--socket", str(tmp_path / "s.sock"), "--cgroup-parent", "shoal-unit-test", *flags]))


def test_keep_client_addr_is_off_by_default(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    assert daemon.executor.net.mesh is not None
    assert daemon.executor.net.mesh.local_addresses is None


def test_keep_client_addr_flag_gives_the_mesh_the_local_task_addresses(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, "--ingress-keep-client-addr")
    assert daemon.executor.net.mesh is not None
    assert callable(daemon.executor.net.mesh.local_addresses)
