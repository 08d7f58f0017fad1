"""Tests of manager.ipam.BridgeIPAM."""

from __future__ import annotations

import pytest

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
    ipam.release(a1)
    assert ipam.allocate("a") == "10.200.1.4/24"  # not reused at once
    got = {ipam.allocate("a") for _ in range(251)}
    assert "10.200.1.2/24" in got
    assert not any(a.startswith(("10.200.1.0/", "10.200.1.1/", "10.200.1.255/")) for a in got)
    with pytest.raises(IPAMError, match="no free address"):
        ipam.allocate("a")


def test_rebuild_from_store_state() -> None:
    ipam = BridgeIPAM()
    ipam.reserve_node("n2", "10.200.2.0/24")
    ipam.reserve("10.200.2.2/24")
    assert ipam.assign_node("n1").subnet == "10.200.1.0/24"
    assert ipam.allocate("n2") == "10.200.2.3/24"
    with pytest.raises(IPAMError, match="already assigned"):
        ipam.reserve_node("n3", "10.200.2.0/24")
    with pytest.raises(IPAMError, match="not in any node"):
        ipam.reserve("10.9.9.9/24")
    with pytest.raises(IPAMError, match="no bridge subnet"):
        ipam.allocate("nobody")
