"""Tests of manager.allocator.ipam.AddressSpace and manager.allocator.vni."""

from __future__ import annotations

import ipaddress

import pytest

from manager.allocator import AddressesExhausted, InvalidArgument, VNIExhausted
from manager.allocator.ipam import AddressSpace
from manager.allocator.vni import VNI_MAX, VNI_MIN, VNIAllocator, parse_vni


def _space(subnet: str, gateway: str | None = None, rng: str | None = None) -> AddressSpace:
    net = ipaddress.IPv4Network(subnet)
    gw = ipaddress.IPv4Address(gateway) if gateway else net.network_address + 1
    return AddressSpace("nid", "mynet", net, gw, ipaddress.IPv4Network(rng) if rng else None)


def test_skips_network_gateway_broadcast_and_is_serial() -> None:
    s = _space("10.0.0.0/29")  # .0 network, .1 gateway, .7 broadcast: .2-.6 usable
    assert s.capacity == 5
    got = [s.allocate() for _ in range(5)]
    assert got == [f"10.0.0.{i}/29" for i in range(2, 7)]
    with pytest.raises(AddressesExhausted, match="network mynet is out of addresses") as e:
        s.allocate()
    assert e.value.subnet == "10.0.0.0/29"
    s.release("10.0.0.3/29")
    assert s.allocate() == "10.0.0.3/29"


def test_released_address_not_reused_at_once() -> None:
    s = _space("10.0.0.0/24")
    a1 = s.allocate()
    s.release(a1)
    assert s.allocate() != a1


def test_gateway_elsewhere_and_ip_range() -> None:
    s = _space("10.0.0.0/24", "10.0.0.254", "10.0.0.128/25")
    assert s.capacity == 126  # .128-.254 minus .254 (gateway); .255 is the broadcast
    got = {s.allocate() for _ in range(126)}
    assert all(128 <= int(a.split("/")[0].split(".")[3]) <= 253 for a in got)
    with pytest.raises(AddressesExhausted):
        s.allocate()


def test_slash_30_has_one_address() -> None:
    s = _space("10.0.0.0/30")
    assert s.allocate() == "10.0.0.2/30"
    with pytest.raises(AddressesExhausted):
        s.allocate()


def test_reserve_and_errors() -> None:
    s = _space("10.0.0.0/24")
    s.reserve("10.0.0.2/24")
    s.reserve("10.0.0.3")
    assert s.is_used("10.0.0.2") and s.in_use == 2
    assert s.allocate() == "10.0.0.4/24"
    for bad in ("10.0.1.5/24", "10.0.0.0", "10.0.0.1", "10.0.0.255", "x"):
        with pytest.raises(InvalidArgument):
            s.reserve(bad)
    s.release("nonsense")
    s.release("10.9.9.9")
    assert not s.is_used("x")


def test_big_subnet_allocates_fast() -> None:
    s = _space("10.0.0.0/8")
    for _ in range(1000):
        s.allocate()
    assert s.in_use == 1000


def test_vni_range_serial_and_reserve() -> None:
    v = VNIAllocator()
    assert (v.allocate("a"), v.allocate("b")) == (VNI_MIN, VNI_MIN + 1)
    v.reserve(5000, "c")
    with pytest.raises(InvalidArgument, match="already in use by network c"):
        v.reserve(5000, "d")
    v.reserve(5000, "c")  # idempotent
    with pytest.raises(InvalidArgument, match="out of range"):
        v.reserve(4095, "e")
    v.release(4096, "not-owner")
    assert v.owner(4096) == "a"
    v.release(4096, "a")
    assert v.owner(4096) is None
    assert v.allocate("f") == 4098  # serial: not at once back to 4096


def test_vni_exhausted_and_wrap() -> None:
    v = VNIAllocator(low=VNI_MAX - 2, high=VNI_MAX)
    assert [v.allocate(str(i)) for i in range(3)] == [VNI_MAX - 2, VNI_MAX - 1, VNI_MAX]
    with pytest.raises(VNIExhausted):
        v.allocate("x")
    v.release(VNI_MAX - 1, "1")
    assert v.allocate("y") == VNI_MAX - 1


@pytest.mark.parametrize("raw,ok", [("4097", 4097), ("4100,4101", 4100), (16777215, 16777215),
                                    ("4095", None), ("16777216", None), ("abc", None)])
def test_parse_vni(raw: object, ok: int | None) -> None:
    if ok is None:
        with pytest.raises(InvalidArgument):
            parse_vni(raw)
    else:
        assert parse_vni(raw) == ok
