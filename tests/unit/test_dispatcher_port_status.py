"""A running task's host-mode ports are shown as ``Status.PortStatus.Ports`` (what ``docker
service ps`` prints under PORTS), set when its node reports it running and kept afterwards;
ingress-mode ports are not a task's (issue 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from manager.dispatcher.taskstatus import apply_status_updates, host_port_status
from manager.store import WriteTx
from tests.stores import open_store

HOST = {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8081, "PublishMode": "host"}
INGRESS = {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"}


def test_host_port_status_lists_only_host_mode_ports() -> None:
    assert host_port_status({"Endpoint": {"Ports": [INGRESS, HOST]}}) == [HOST]
    assert host_port_status({"Endpoint": {"Ports": [INGRESS]}}) == []
    assert host_port_status({}) == [] and host_port_status({"Endpoint": "junk"}) == []


async def test_running_sets_port_status_and_later_states_keep_it(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "raft")
    try:
        def create(tx: WriteTx) -> None:
            for tid, ports in (("t1", [INGRESS, HOST]), ("t2", [INGRESS])):
                tx.create("tasks", {"ID": tid, "NodeID": "n1", "DesiredState": "running",
                                    "Endpoint": {"Ports": ports}, "Status": {"State": "assigned"}})
        await store.update(create)

        async def report(state: str) -> None:
            await store.update(lambda tx: apply_status_updates(tx, [
                ("n1", {"TaskID": t, "Status": {"State": state}}) for t in ("t1", "t2")]))

        def status(tid: str) -> dict[str, Any]:
            t = store.view().get("tasks", tid)
            assert t is not None
            return dict(t["Status"])

        await report("starting")
        assert "PortStatus" not in status("t1")
        await report("running")
        assert status("t1")["PortStatus"] == {"Ports": [HOST]}
        assert "PortStatus" not in status("t2")
        await report("complete")
        assert status("t1")["State"] == "complete" and status("t1")["PortStatus"] == {"Ports": [HOST]}
    finally:
        await store.close()
