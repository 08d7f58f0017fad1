"""The Manager as shoald wires it: a new cluster, a restart on the same data, live spec changes."""

from __future__ import annotations

from pathlib import Path

from manager.manager import Manager
from manager.store import WriteTx
from tests.waiting import wait_until

DESC = {"Hostname": "m1", "Platform": {"Architecture": "x86_64", "OS": "linux"}}


async def test_init_start_restart_and_live_heartbeat_period(tmp_path: Path) -> None:
    data, certs = tmp_path / "manager", tmp_path / "certs"
    node_id = await Manager.init_cluster(data, certs, "127.0.0.1:2377", DESC, {}, heartbeat_period=1.0)
    m = Manager(data, certs, node_id, "127.0.0.1:2377", "127.0.0.1:0", heartbeat_period=5.0)
    await m.start()
    try:
        info = m.swarm_info()
        assert info["Nodes"] == 1 and info["Managers"] == 1
        # the flag seeded the spec at init, and the spec (not the flag) rules afterwards
        assert info["Cluster"]["Spec"]["Dispatcher"]["HeartbeatPeriod"] == 1_000_000_000
        assert m.dispatcher.heartbeat_period == 1.0
        tokens = m.join_tokens()
        assert tokens["Worker"].startswith("SWMTKN-1-") and tokens["Worker"] != tokens["Manager"]
        node = m.store.view().get("nodes", node_id)
        assert node is not None and node["ManagerStatus"]["Leader"] is True

        def two_seconds(tx: WriteTx) -> None:
            c = tx.get("cluster", m.cluster_id)
            assert c is not None
            c["Spec"]["Dispatcher"]["HeartbeatPeriod"] = 2_000_000_000
            tx.update("cluster", c)

        await m.store.update(two_seconds)  # what `docker swarm update --dispatcher-heartbeat 2s` writes
        await wait_until(lambda: m.dispatcher.heartbeat_period == 2.0, 5, "the new period to apply")
    finally:
        await m.stop()
    # a restart on the same data (kill -9 loses nothing: every change was fsynced before it applied)
    m2 = Manager(data, certs, node_id, "127.0.0.1:2377", "127.0.0.1:0")
    await m2.start()
    try:
        assert m2.join_tokens() == tokens
        assert m2.dispatcher.heartbeat_period == 2.0
    finally:
        await m2.stop()
