"""Tests of manager.allocator.ports: ingress published ports, cluster-wide."""

from __future__ import annotations

import pytest

from manager.allocator import InvalidArgument, PortConflict, PortsExhausted
from manager.allocator.ports import DYNAMIC_MAX, DYNAMIC_MIN, PortAllocator


def _p(target: int, published: int = 0, proto: str = "tcp", mode: str = "ingress", name: str = "") -> dict[str, object]:
    out: dict[str, object] = {"Protocol": proto, "TargetPort": target, "PublishedPort": published, "PublishMode": mode}
    if name:
        out["Name"] = name
    return out


def test_explicit_port_conflict_names_the_service() -> None:
    pa = PortAllocator()
    pa.allocate("s1", "web", [_p(80, 8080)])
    with pytest.raises(PortConflict, match=r"port '8080/tcp' is already in use by service 'web' \(s1\)") as e:
        pa.allocate("s2", "api", [_p(80, 8080)])
    assert (e.value.service_name, e.value.service_id, e.value.port, e.value.protocol) == ("web", "s1", 8080, "tcp")
    assert pa.ports_of("s2") == set()


def test_protocols_are_separate_spaces() -> None:
    pa = PortAllocator()
    pa.allocate("s1", "web", [_p(53, 53, "tcp")])
    got = pa.allocate("s2", "dns", [_p(53, 53, "udp"), _p(53, 53, "sctp")])
    assert [(p["Protocol"], p["PublishedPort"]) for p in got] == [("udp", 53), ("sctp", 53)]


def test_dynamic_ports_from_30000() -> None:
    pa = PortAllocator()
    got = pa.allocate("s1", "web", [{"TargetPort": 80}, _p(81), _p(82, proto="udp")])
    assert [p["PublishedPort"] for p in got] == [30000, 30001, 30000]
    assert got[0] == {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 30000, "PublishMode": "ingress"}
    # an explicit port in the dynamic range is taken too, and skipped by later dynamic ones
    pa.allocate("s2", "b", [_p(80, 30002)])
    assert pa.allocate("s3", "c", [_p(80)])[0]["PublishedPort"] == 30003
    with pytest.raises(PortConflict, match="'c'"):
        pa.allocate("s4", "d", [_p(80, 30003)])


def test_dynamic_range_exhausted() -> None:
    pa = PortAllocator()
    n = DYNAMIC_MAX - DYNAMIC_MIN + 1
    pa.allocate("s1", "big", [_p(1 + i) for i in range(n)])
    with pytest.raises(PortsExhausted, match="30000-32767"):
        pa.allocate("s2", "more", [_p(80)])
    assert pa.allocate("s2", "more", [_p(80, proto="udp")])[0]["PublishedPort"] == DYNAMIC_MIN


def test_host_mode_ports_not_allocated_cluster_wide() -> None:
    pa = PortAllocator()
    a = pa.allocate("s1", "a", [_p(80, 8080, mode="host")])
    b = pa.allocate("s2", "b", [_p(80, 8080, mode="host"), _p(81, 0, mode="host")])
    assert a[0]["PublishedPort"] == 8080 and b[1]["PublishedPort"] == 0  # host mode 0: the node picks
    assert pa.ports_of("s1") == set() and pa.holder("tcp", 8080) is None
    pa.allocate("s3", "c", [_p(80, 8080)])  # ingress 8080 still free


def test_duplicates_and_bad_ports_are_invalid() -> None:
    pa = PortAllocator()
    with pytest.raises(InvalidArgument, match="duplicate published ports"):
        pa.allocate("s1", "a", [_p(80, 8080), _p(81, 8080)])
    for bad in (_p(80, 70000), _p(0, 80), _p(80, 80, proto="icmp"), _p(80, 80, mode="bridge"),
                {"TargetPort": "80"}, {"TargetPort": True}):
        with pytest.raises(InvalidArgument):
            pa.allocate("s1", "a", [bad])
    assert pa.ports_of("s1") == set()


def test_update_keeps_dynamic_ports_and_frees_dropped_ones() -> None:
    pa = PortAllocator()
    first = pa.allocate("s1", "web", [_p(80, name="http"), _p(443, 443)])
    assert first[0]["PublishedPort"] == 30000
    pa.allocate("s2", "other", [_p(80)])  # 30001
    again = pa.allocate("s1", "web", [_p(80, name="http"), _p(8443, 8443)], current=first)
    assert [p["PublishedPort"] for p in again] == [30000, 8443]
    assert pa.holder("tcp", 443) is None and pa.holder("tcp", 8443) == ("s1", "web")
    # a failed update changes nothing
    with pytest.raises(PortConflict):
        pa.allocate("s1", "web", [_p(80, 30001)], current=again)
    assert pa.ports_of("s1") == {("tcp", 30000), ("tcp", 8443)}
    pa.release("s1")
    assert pa.ports_of("s1") == set()


def test_reserve_rebuilds_holders() -> None:
    pa = PortAllocator()
    pa.reserve("s1", "web", [_p(80, 8080), _p(81, 30000), _p(82, 9000, mode="host"), {"bad": 1}])
    assert pa.holder("tcp", 8080) == ("s1", "web") and pa.holder("tcp", 9000) is None
    assert pa.allocate("s2", "x", [_p(1)])[0]["PublishedPort"] == 30001
    pa.reserve("s9", "dup", [_p(80, 8080)])  # a corrupt store: the first holder keeps it
    assert pa.holder("tcp", 8080) == ("s1", "web")
