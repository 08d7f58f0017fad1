"""Tests of manager.store.Store on a real single-voter ReplicatedLog in a temp directory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from manager.store import Conflict, NotFound, Store, Unavailable, WriteTx
from tests.stores import open_log, open_store


def creating(table: str, *objs: dict[str, Any]) -> Callable[[WriteTx], None]:
    """A store transaction that creates ``objs`` in ``table``."""
    def fn(tx: WriteTx) -> None:
        for o in objs:
            tx.create(table, o)
    return fn


def _svc(id: str, name: str, replicas: int = 1) -> dict[str, Any]:
    return {"ID": id, "Spec": {"Name": name, "Mode": {"Replicated": {"Replicas": replicas}}}}


async def test_create_get_version_and_timestamps(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.update(lambda tx: tx.create("services", _svc("s1", "web")))
    obj = store.view().get("services", "s1")
    assert obj is not None
    # the index of the log entry that wrote it (Raft's configuration and no-op entries come first)
    assert obj["Version"]["Index"] == store.applied_index > 0
    assert obj["CreatedAt"] == obj["UpdatedAt"] and obj["CreatedAt"].endswith("Z")
    # copies: mutating what we got does not change the store
    obj["Spec"]["Name"] = "changed"
    assert store.view().get("services", "s1")["Spec"]["Name"] == "web"  # type: ignore[index]

    def scale(tx: WriteTx) -> None:
        s = tx.get("services", "s1")
        assert s is not None
        s["Spec"]["Mode"]["Replicated"]["Replicas"] = 3
        tx.update("services", s)

    await store.update(scale)
    obj2 = store.view().get("services", "s1")
    assert obj2 is not None and obj2["Version"]["Index"] == store.applied_index > obj["Version"]["Index"]
    assert obj2["CreatedAt"] == obj["CreatedAt"]
    await store.close()


async def test_conflicts_and_not_found(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.update(lambda tx: tx.create("services", _svc("s1", "web")))
    first = store.applied_index
    with pytest.raises(Conflict, match="name conflicts"):
        await store.update(lambda tx: tx.create("services", _svc("s2", "web")))
    assert store.view().get("services", "s2") is None
    with pytest.raises(Conflict):
        await store.update(lambda tx: tx.create("services", _svc("s1", "other")))
    with pytest.raises(NotFound):
        await store.update(lambda tx: tx.delete("services", "nope"))
    stale = _svc("s1", "web", 5)
    stale["Version"] = {"Index": 999}
    with pytest.raises(Conflict, match="out of sequence"):
        await store.update(lambda tx: tx.update("services", stale))

    # an exception in fn writes nothing, even the writes made before it
    def boom(tx: WriteTx) -> None:
        tx.create("tasks", {"ID": "t1"})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store.update(boom)
    assert store.view().get("tasks", "t1") is None
    assert store.applied_index == first
    await store.close()


async def test_service_names_conflict_case_insensitively(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.update(lambda tx: tx.create("services", _svc("s1", "web")))
    with pytest.raises(Conflict, match="rpc error: code = AlreadyExists desc = name conflicts with an existing object"):
        await store.update(lambda tx: tx.create("services", _svc("s2", "WEB")))
    await store.update(lambda tx: tx.create("services", _svc("s3", "other")))

    def rename(tx: WriteTx) -> None:
        s = tx.get("services", "s3")
        assert s is not None
        s["Spec"]["Name"] = "Web"
        tx.update("services", s)

    with pytest.raises(Conflict, match="name conflicts"):
        await store.update(rename)
    assert store.view().find_by_name("services", "WEB")["ID"] == "s1"  # type: ignore[index]
    await store.close()


async def test_restart_gives_identical_state(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.update(lambda tx: tx.create("cluster", {"ID": "c1", "Spec": {"Name": "default"}}))
    await store.update(lambda tx: tx.create("services", _svc("s1", "web")))
    await asyncio.gather(*(store.update(creating("tasks", {"ID": f"t{i}", "ServiceID": "s1"})) for i in range(20)))
    await store.update(lambda tx: tx.delete("tasks", "t3"))
    before = {t: sorted(store.view().list(t), key=lambda o: o["ID"]) for t in ("nodes", "services", "tasks", "cluster")}
    await store.close()
    store2 = await open_store(tmp_path)
    after = {t: sorted(store2.view().list(t), key=lambda o: o["ID"]) for t in ("nodes", "services", "tasks", "cluster")}
    assert after == before
    assert store2.applied_index == store.applied_index
    await store2.close()


async def test_snapshot_then_restart(tmp_path: Path) -> None:
    store = await open_store(tmp_path, snapshot_every=10)
    for i in range(25):
        await store.update(creating("tasks", {"ID": f"t{i}"}))
    before = sorted(store.view().list("tasks"), key=lambda o: o["ID"])
    await store.close()
    log = open_log(tmp_path)
    snap = log.snapshot()
    assert snap is not None and snap.index >= 10
    store2 = Store(log, snapshot_interval=0)
    assert sorted(store2.view().list("tasks"), key=lambda o: o["ID"]) == before
    await store2.close()


async def test_watch_and_concurrent_updates_see_each_other(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    w = store.watch(["services"])

    def make(name: str):  # type: ignore[no-untyped-def]
        def fn(tx: WriteTx) -> None:
            tx.create("services", _svc("id-" + name, "same-name"))
        return fn

    results = await asyncio.gather(store.update(make("a")), store.update(make("b")), return_exceptions=True)
    # the second transaction saw the first one's pending write and conflicted
    assert results[0] is None and isinstance(results[1], Conflict)
    await store.update(lambda tx: tx.delete("services", "id-a"))
    await store.update(lambda tx: tx.create("tasks", {"ID": "t"}))  # filtered out
    evs = []
    async with asyncio.timeout(5):
        async for ev in w:
            evs.append(ev)
            if len(evs) == 2:
                break
    assert [(e.action, e.table, e.obj["ID"]) for e in evs] == [("create", "services", "id-a"), ("delete", "services", "id-a")]
    assert evs[1].old is not None
    w.close()
    await store.close()


async def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.close()
    with pytest.raises(Unavailable):
        await store.update(lambda tx: tx.create("tasks", {"ID": "x"}))


def _ids(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(str(o["ID"]) for o in objs)


async def test_list_by_follows_creates_moves_deletes_pending_writes_and_snapshots(tmp_path: Path) -> None:
    """tasks by ServiceID / NodeID: committed state, the transaction's own writes and the pending
    overlay of proposals not yet committed, and a state loaded from a snapshot."""
    store = await open_store(tmp_path, snapshot_every=5)
    await store.update(creating("tasks", *({"ID": f"t{i}", "ServiceID": f"s{i % 2}", "NodeID": "n1"} for i in range(6))))
    view = store.view()
    assert _ids(view.list_by("tasks", "ServiceID", "s0")) == ["t0", "t2", "t4"]
    assert _ids(view.list_by("tasks", "NodeID", "n1")) == [f"t{i}" for i in range(6)]
    assert view.list_by("tasks", "ServiceID", "nope") == []
    with pytest.raises(KeyError):
        view.list_by("tasks", "Slot", "1")

    def move_and_delete(tx: WriteTx) -> list[str]:
        t = tx.get_shallow("tasks", "t0")
        assert t is not None
        tx.update("tasks", {**t, "ServiceID": "s1", "NodeID": "n2"})
        tx.delete("tasks", "t2")
        tx.create("tasks", {"ID": "t9", "ServiceID": "s0"})
        return _ids(tx.list_by("tasks", "ServiceID", "s0"))

    assert await store.update(move_and_delete) == ["t4", "t9"]
    assert _ids(store.view().list_by("tasks", "ServiceID", "s0")) == ["t4", "t9"]
    assert _ids(store.view().list_by("tasks", "ServiceID", "s1")) == ["t0", "t1", "t3", "t5"]
    assert _ids(store.view().list_by("tasks", "NodeID", "n2")) == ["t0"]

    # a proposal not yet committed is seen by the next transaction (pending overlay), not the view
    first = asyncio.ensure_future(store.update(creating("tasks", {"ID": "t10", "ServiceID": "s0"})))
    await asyncio.sleep(0)
    seen = await store.update(lambda tx: _ids(tx.list_by("tasks", "ServiceID", "s0")))
    await first
    assert seen == ["t10", "t4", "t9"]

    # a list_by of the shallow copies never changes the store
    got = store.view().list_by("tasks", "ServiceID", "s0")[0]
    got["ServiceID"] = "changed"
    assert _ids(store.view().list_by("tasks", "ServiceID", "s0")) == ["t10", "t4", "t9"]

    for i in range(8):  # past the snapshot interval: a restart loads the snapshot and rebuilds the index
        await store.update(creating("tasks", {"ID": f"u{i}", "ServiceID": "s2"}))
    await store.close()
    store2 = Store(open_log(tmp_path), snapshot_interval=0)
    assert _ids(store2.view().list_by("tasks", "ServiceID", "s2")) == [f"u{i}" for i in range(8)]
    assert _ids(store2.view().list_by("tasks", "ServiceID", "s0")) == ["t10", "t4", "t9"]
    await store2.close()


async def test_tasks_of_a_service_share_equal_specs_in_memory_only(tmp_path: Path) -> None:
    """Equal Spec/Endpoint of a service's tasks are held once; the copies handed out, the
    snapshot and a restart still see each task's own value, and a different spec is its own."""
    spec = {"ContainerSpec": {"Image": "busybox", "Env": ["A=1"]}}
    store = await open_store(tmp_path, snapshot_every=4)
    await store.update(creating("tasks", *({"ID": f"t{i}", "ServiceID": "s1", "Spec": dict(spec)} for i in range(3))))
    await store.update(creating("tasks", {"ID": "t9", "ServiceID": "s1", "Spec": {"ContainerSpec": {"Image": "other"}}}))
    raw = store._tables["tasks"]
    assert raw["t0"]["Spec"] is raw["t1"]["Spec"] is raw["t2"]["Spec"]
    assert raw["t9"]["Spec"] is not raw["t0"]["Spec"]
    got = store.view().get("tasks", "t0")
    assert got is not None
    got["Spec"]["ContainerSpec"]["Image"] = "changed"  # a copy: the others keep theirs
    assert store.view().get("tasks", "t1")["Spec"] == spec  # type: ignore[index]
    for i in range(5):
        await store.update(creating("tasks", {"ID": f"u{i}", "ServiceID": "s2"}))
    await store.close()
    store2 = Store(open_log(tmp_path), snapshot_interval=0)
    assert store2.view().get("tasks", "t2")["Spec"] == spec  # type: ignore[index]
    assert store2.view().get("tasks", "t9")["Spec"] == {"ContainerSpec": {"Image": "other"}}  # type: ignore[index]
    await store2.close()
