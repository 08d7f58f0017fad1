"""Tests of manager.ipam.BridgeIPAM."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manager.ipam import BridgeIPAM, IPAMError


def test_node_subnets_in_order_and_reuse() -> None:
    ipam = BridgeIPAM()
    assert ipam.assign_node("a").as_dict() == {"Subnet": "10.200.1.0/24", "Gateway": "10.200.1.1"}
    assert ipam.assign_node("b").subnet == "10.200.2.0/24"
    assert ipam.assign_node("a").subnet == "10.200.1.0/24"  # idempotent
    ipam.release_node("a")
    assert ipam.assign_node("c").subnet == "10.200.1.0/24"  # lowest free K


def test_addresses_skip_reserved_and_are_serial() -> None:
    ipam = BridgeIPAM()
    ipam.assign_node("a")
    a1 = ipam.allocate("a")
    a2 = ipam.allocate("a")
    assert (a1, a2) == ("10.200.1.2/24", "10.200.1.3/24")
    ipam.release("a", a1)
    assert ipam.allocate("a") == "10.200.1.4/24"  # not reused at once
    got = {ipam.allocate("a") for _ in range(251)}
    assert "10.200.1.2/24" in got
    assert not any(a.startswith(("10.200.1.0/", "10.200.1.1/", "10.200.1.255/")) for a in got)
    with pytest.raises(IPAMError, match="no free address"):
        ipam.allocate("a")


def test_rebuild_from_store_state() -> None:
    ipam = BridgeIPAM()
    ipam.reserve_node("n2", "10.200.2.0/24")
    ipam.reserve("n2", "10.200.2.2/24")
    assert ipam.assign_node("n1").subnet == "10.200.1.0/24"
    assert ipam.allocate("n2") == "10.200.2.3/24"
    ipam.reserve_node("n3", "10.200.2.0/24")  # shared subnets are allowed (node-local addresses)
    assert ipam.users("10.200.2.0/24") == 2
    with pytest.raises(IPAMError, match="already has subnet"):
        ipam.reserve_node("n3", "10.200.4.0/24")
    with pytest.raises(IPAMError, match="not in the node's bridge subnet"):
        ipam.reserve("n2", "10.9.9.9/24")
    with pytest.raises(IPAMError, match="not in the node's bridge subnet"):
        ipam.reserve("n2", "10.200.1.5/24")  # n1's subnet, not n2's
    with pytest.raises(IPAMError, match="no bridge subnet"):
        ipam.allocate("nobody")


# -- shared subnets (the addresses are node-local, so the node count is not capped) ----------

@pytest.mark.parametrize("n", [300, 1000])
def test_every_node_gets_a_subnet_distinct_first_then_least_shared(n: int) -> None:
    ipam = BridgeIPAM()
    subs = [ipam.assign_node(f"n{i}").subnet for i in range(n)]
    assert subs[:255] == [f"10.200.{k}.0/24" for k in range(1, 256)]  # distinct while the pool lasts
    assert all(ipaddress.IPv4Network(s).subnet_of(ipaddress.IPv4Network("10.200.0.0/16")) for s in subs)
    assert "10.200.0.0/24" not in subs
    counts = Counter(subs)
    assert len(counts) == 255 and max(counts.values()) - min(counts.values()) <= 1  # evenly shared
    assert subs[255] == "10.200.1.0/24"  # reuse starts with the lowest K
    assert all(ipam.node_subnet(f"n{i}") is not None for i in range(n))


def test_nodes_sharing_a_subnet_allocate_independently() -> None:
    ipam = BridgeIPAM("10.200.0.0/23", 24)  # one usable subnet: 10.200.1.0/24
    assert ipam.assign_node("a").subnet == ipam.assign_node("b").subnet == "10.200.1.0/24"
    got_a = {ipam.allocate("a") for _ in range(253)}
    got_b = {ipam.allocate("b") for _ in range(253)}
    assert got_a == got_b and len(got_a) == 253  # each node has the whole subnet
    assert ipam.in_use("a") == ipam.in_use("b") == 253
    for node in ("a", "b"):
        with pytest.raises(IPAMError, match=f"no free address left in 10.200.1.0/24 on node {node}"):
            ipam.allocate(node)


def test_release_on_one_node_does_not_free_the_others() -> None:
    ipam = BridgeIPAM("10.200.0.0/23", 24)
    ipam.assign_node("a")
    ipam.assign_node("b")
    a1, b1 = ipam.allocate("a"), ipam.allocate("b")
    assert a1 == b1 == "10.200.1.2/24"
    ipam.release("a", a1)
    assert ipam.in_use("a") == 0 and ipam.in_use("b") == 1
    ipam.release("nobody", b1)  # unknown node: nothing happens
    ipam.release("b", "not an address")
    assert ipam.in_use("b") == 1
    for _ in range(252):
        ipam.allocate("b")
    with pytest.raises(IPAMError, match="no free address"):
        ipam.allocate("b")  # a's release did not give b room


def test_rebuild_from_store_with_shared_subnets() -> None:
    ipam = BridgeIPAM("10.200.0.0/22", 24)  # 3 usable subnets
    stored = {"n1": "10.200.1.0/24", "n2": "10.200.2.0/24", "n3": "10.200.3.0/24",
              "n4": "10.200.1.0/24", "n5": "10.200.1.0/24"}
    for nid, sub in stored.items():
        ipam.reserve_node(nid, sub)
    ipam.reserve_node("n4", "10.200.1.0/24")  # again: nothing changes
    ipam.reserve("n1", "10.200.1.2/24")
    ipam.reserve("n4", "10.200.1.2/24")  # the same address on another node sharing the subnet
    ipam.reserve("n4", "10.200.1.3")
    assert (ipam.in_use("n1"), ipam.in_use("n4"), ipam.in_use("n5")) == (1, 2, 0)
    assert ipam.allocate("n1") == "10.200.1.3/24"  # cursors start after .1; .2 is taken on n1
    assert ipam.allocate("n4") == "10.200.1.4/24"
    assert ipam.allocate("n5") == "10.200.1.2/24"
    assert ipam.users("10.200.1.0/24") == 3
    # the next nodes go to the least-shared subnets (K=2, K=3), not to K=1
    assert ipam.assign_node("n6").subnet == "10.200.2.0/24"
    assert ipam.assign_node("n7").subnet == "10.200.3.0/24"
    with pytest.raises(IPAMError, match="is the network, gateway or broadcast"):
        ipam.reserve("n5", "10.200.1.1/24")
    with pytest.raises(IPAMError, match="not a /24 of"):
        ipam.reserve_node("n8", "10.201.1.0/24")
    with pytest.raises(IPAMError, match="first /24"):
        ipam.reserve_node("n8", "10.200.0.0/24")


def test_a_removed_node_frees_its_pool_and_its_share() -> None:
    ipam = BridgeIPAM("10.200.0.0/22", 24)
    for i in range(6):
        ipam.assign_node(f"n{i}")  # K = 1, 2, 3, 1, 2, 3
    ipam.allocate("n0")
    ipam.release_node("n0")
    ipam.release_node("n0")  # twice: nothing more happens
    assert ipam.node_subnet("n0") is None and ipam.users("10.200.1.0/24") == 1
    with pytest.raises(IPAMError, match="no bridge subnet"):
        ipam.in_use("n0")
    ipam.release_node("n3")
    assert ipam.users("10.200.1.0/24") == 0
    assert ipam.assign_node("new").subnet == "10.200.1.0/24"  # the unused subnet first
    ipam.assign_node("n0")  # the same ID again: a fresh pool
    assert ipam.in_use("n0") == 0


def test_heap_stays_bounded_under_churn() -> None:
    ipam = BridgeIPAM("10.200.0.0/22", 24)
    for i in range(10_000):
        ipam.assign_node(f"n{i}")
        if i >= 5:
            ipam.release_node(f"n{i - 5}")
    assert len(ipam._heap) <= 2 * 4 + 64
    assert sorted(ipam.users(f"10.200.{k}.0/24") for k in (1, 2, 3)) == [1, 2, 2]


ops = st.lists(st.tuples(st.sampled_from(["assign", "remove", "alloc", "release"]),
                         st.integers(0, 7), st.integers(0, 40)), max_size=120)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_property_nodes_never_collide_and_shares_stay_even(steps: list[tuple[str, int, int]]) -> None:
    """Against a model: every assigned node has a subnet; the number of nodes per subnet matches
    ``users``; a node's addresses are unique within the node and inside its subnet; when nodes are
    only added, shares differ by at most one."""
    ipam = BridgeIPAM("10.200.0.0/22", 24)
    model: dict[str, set[str]] = {}
    only_added = True
    for op, n, _ in steps:
        nid = f"n{n}"
        if op == "assign":
            ipam.assign_node(nid)
            model.setdefault(nid, set())
        elif op == "remove":
            only_added = only_added and nid not in model
            ipam.release_node(nid)
            model.pop(nid, None)
        elif op == "alloc" and nid in model:
            a = ipam.allocate(nid)
            assert a not in model[nid]
            model[nid].add(a)
        elif op == "release" and model.get(nid):
            a = sorted(model[nid])[0]
            ipam.release(nid, a)
            model[nid].discard(a)
        for m, addrs in model.items():
            sub = ipam.node_subnet(m)
            assert sub is not None and ipam.in_use(m) == len(addrs)
            assert all(ipaddress.IPv4Interface(a).ip in ipaddress.IPv4Network(sub.subnet) for a in addrs)
        shares = Counter(s.subnet for s in (ipam.node_subnet(m) for m in model) if s is not None)
        assert all(ipam.users(sub) == c for sub, c in shares.items())
        if only_added and shares:
            per = [shares.get(f"10.200.{k}.0/24", 0) for k in (1, 2, 3)]
            assert max(per) - min(per) <= 1
