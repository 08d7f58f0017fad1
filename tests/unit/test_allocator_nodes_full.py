"""More nodes than the ingress network has addresses (1,000 nodes on Swarm's default /24): the
nodes left without a load-balancer address are told once and are no reason for the allocator to
rebuild itself from every task on each pass; a removed node frees its address for one of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from manager.allocator import loop as alloc_loop
from manager.allocator.loop import NetworkAllocatorLoop
from manager.controlapi import networks
from manager.specs import default_swarm_spec
from manager.store import Event, WriteTx
from tests.stores import open_store
from tests.unit.test_controlapi import Ctx


async def test_nodes_without_an_address_do_not_make_every_pass_a_rebuild(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = await open_store(tmp_path / "raft")
    rebuilds: list[int] = []
    real = alloc_loop.rebuild_allocator

    def counting(*a: Any, **kw: Any) -> Any:
        rebuilds.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(alloc_loop, "rebuild_allocator", counting)
    try:
        # a /29 ingress: 5 addresses beside the gateway, for 8 nodes
        await store.update(lambda tx: tx.create("cluster", {"ID": "c", "Spec": default_swarm_spec(),
                                                            "DefaultAddrPool": ["192.168.0.0/16"], "SubnetSize": 29}))
        await networks.create_ingress(Ctx(store))

        def nodes(tx: WriteTx) -> None:
            for i in range(8):
                tx.create("nodes", {"ID": f"n{i}", "Spec": {"Role": "worker", "Availability": "active"},
                                    "Status": {"State": "ready"}})
        await store.update(nodes)
        loop = NetworkAllocatorLoop(store)
        await loop.tick()
        attached = [n for n in store.view().list("nodes") if n.get("Attachments")]
        assert len(attached) == 5 and len(rebuilds) == 1
        for _ in range(3):  # nothing changed: no rebuild, however many passes
            await loop.tick()
        assert len(rebuilds) == 1

        # a node removed frees its address: the next pass gives it to one that had none
        gone = attached[0]["ID"]
        await store.update(lambda tx: tx.delete("nodes", gone))
        loop.observe(Event("delete", "nodes", attached[0], attached[0]))
        await loop.tick()
        assert len(rebuilds) == 2
        assert sum(1 for n in store.view().list("nodes") if n.get("Attachments")) == 5
    finally:
        await store.close()
