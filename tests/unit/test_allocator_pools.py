"""Tests of manager.allocator.pools: default address pools, user subnets, overlap checks."""

from __future__ import annotations

import ipaddress

import pytest

from manager.allocator import Allocator, InvalidArgument, PoolExhausted, SubnetOverlap
from manager.allocator.pools import SubnetRegistry, parse_pools, validate_ipam_config


def _net(s: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(s)


def test_default_pool_is_10_0_0_0_8_in_24s_first_is_10_0_0_0() -> None:
    p = parse_pools(None, None)
    assert [str(n) for n in p.networks] == ["10.0.0.0/8"] and p.subnet_size == 24
    a = Allocator()
    assert a.allocate_network("n1", {"Name": "one"}).subnet == "10.0.0.0/24"
    got = a.allocate_network("n2", {"Name": "two"})
    assert (got.subnet, got.gateway) == ("10.0.1.0/24", "10.0.1.1")


def test_default_pool_skips_subnets_in_use_and_host_routes() -> None:
    a = Allocator(host_routes=["0.0.0.0/0", "10.0.1.0/24", "10.0.2.128/25"])
    a.allocate_network("u", {"Name": "u", "IPAM": {"Config": [{"Subnet": "10.0.0.0/24"}]}})
    # 10.0.0 in use, 10.0.1 a route, 10.0.2 overlaps a route; the default route is ignored
    assert a.allocate_network("n", {"Name": "n"}).subnet == "10.0.3.0/24"


def test_default_pool_jumps_over_a_big_overlap() -> None:
    reg = SubnetRegistry(parse_pools(None, None), host_routes=["10.0.0.0/9"])
    assert reg.next_free() == _net("10.128.0.0/24")


def test_custom_pools_and_mask_length() -> None:
    pools = parse_pools(["192.168.0.0/23", "172.30.0.0/16"], 25)
    a = Allocator(pools)
    subnets = [a.allocate_network(f"n{i}", {"Name": f"n{i}"}).subnet for i in range(5)]
    assert subnets == ["192.168.0.0/25", "192.168.0.128/25", "192.168.1.0/25", "192.168.1.128/25",
                       "172.30.0.0/25"]


def test_from_cluster_object() -> None:
    p = Allocator().pools.from_cluster({"DefaultAddrPool": ["10.20.0.0/16"], "SubnetSize": 26})
    assert [str(n) for n in p.networks] == ["10.20.0.0/16"] and p.subnet_size == 26
    assert Allocator(p).allocate_network("n", {}).subnet == "10.20.0.0/26"


def test_pool_exhausted() -> None:
    a = Allocator(parse_pools(["10.9.0.0/24"], 25))
    a.allocate_network("a", {})
    a.allocate_network("b", {})
    with pytest.raises(PoolExhausted, match="non-overlapping IPv4 address pool"):
        a.allocate_network("c", {})
    a.deallocate_network("a")
    assert a.allocate_network("c", {}).subnet == "10.9.0.0/25"


@pytest.mark.parametrize("pools,size,msg", [
    (["10.0.0.0/8"], 30, "subnet size is out of range: 30"),
    (["10.0.0.0/33"], 24, "invalid base pool 10.0.0.0/33"),
    (["nonsense"], 24, "invalid base pool nonsense"),
    (["10.0.0.0/16"], 12, "Subnet size is too small for pool: 12"),
    (["10.0.0.0/16", "10.0.128.0/17"], 24, "overlaps with pool 10.0.0.0/16"),
    (["fd00::/8"], 24, "IPv6"),
])
def test_bad_pools(pools: list[str], size: int, msg: str) -> None:
    with pytest.raises(InvalidArgument, match=msg.replace(".", r"\.").replace("(", r"\(")):
        parse_pools(pools, size)


def test_user_subnet_gateway_and_range() -> None:
    u = validate_ipam_config("10.5.0.0/16", "10.5.255.254", "10.5.1.0/24")
    assert (u.subnet, str(u.gateway), u.ip_range) == (_net("10.5.0.0/16"), "10.5.255.254", _net("10.5.1.0/24"))
    assert str(validate_ipam_config("10.5.0.0/16").gateway) == "10.5.0.1"
    assert validate_ipam_config("10.5.3.7/16").subnet == _net("10.5.0.0/16")  # host bits masked


@pytest.mark.parametrize("subnet,gateway,rng,msg", [
    ("10.0.0.0/33", "", "", "invalid subnet 10.0.0.0/33"),
    ("banana", "", "", "invalid subnet banana"),
    ("10.0.0.1", "", "", "invalid subnet 10.0.0.1"),
    ("10.0.0.0/31", "", "", "too small"),
    ("fd00::/64", "", "", "IPv6"),
    ("10.1.0.0/24", "10.2.0.1", "", "subnet 10.1.0.0/24 does not contain gateway 10.2.0.1"),
    ("10.1.0.0/24", "10.1.0.300", "", "invalid gateway 10.1.0.300"),
    ("10.1.0.0/24", "10.1.0.255", "", "broadcast"),
    ("10.1.0.0/24", "", "10.2.0.0/25", "subnet 10.1.0.0/24 does not contain range 10.2.0.0/25"),
    ("10.1.0.0/24", "", "10.1.0.0/23", "does not contain range"),
    ("10.1.0.0/24", "", "garbage", "invalid range garbage"),
])
def test_malformed_user_ipam_is_invalid_argument(subnet: str, gateway: str, rng: str, msg: str) -> None:
    with pytest.raises(InvalidArgument, match=msg):
        validate_ipam_config(subnet, gateway, rng)
    a = Allocator()
    with pytest.raises(InvalidArgument, match=msg):
        a.allocate_network("n", {"IPAM": {"Config": [{"Subnet": subnet, "Gateway": gateway, "IPRange": rng}]}})
    assert a.network("n") is None


def test_overlapping_user_subnets_are_refused_naming_the_other() -> None:
    a = Allocator(host_routes=["192.168.1.0/24"])
    a.allocate_network("n1", {"Name": "front", "IPAM": {"Config": [{"Subnet": "10.10.0.0/16"}]}})
    with pytest.raises(SubnetOverlap, match=r'network "front" \(10\.10\.0\.0/16\)') as e:
        a.allocate_network("n2", {"Name": "back", "IPAM": {"Config": [{"Subnet": "10.10.4.0/24"}]}})
    assert isinstance(e.value, InvalidArgument) and e.value.other.startswith('network "front"')
    with pytest.raises(SubnetOverlap, match=r"host route 192\.168\.1\.0/24"):
        a.allocate_network("n3", {"IPAM": {"Config": [{"Subnet": "192.168.0.0/16"}]}})
    # a default-pool network never lands on a user subnet either
    b = Allocator(host_routes=[])
    b.allocate_network("u", {"IPAMOptions": {"Configs": [{"Subnet": "10.0.0.0/23"}]}})
    assert b.allocate_network("d", {}).subnet == "10.0.2.0/24"


def test_gateway_or_range_without_subnet_and_several_subnets() -> None:
    a = Allocator()
    with pytest.raises(InvalidArgument, match="needs a subnet"):
        a.allocate_network("n", {"IPAM": {"Config": [{"Gateway": "10.0.0.1"}]}})
    with pytest.raises(InvalidArgument, match="one subnet"):
        a.allocate_network("n", {"IPAM": {"Config": [{"Subnet": "10.1.0.0/24"}, {"Subnet": "10.2.0.0/24"}]}})
    assert a.allocate_network("n", {"IPAM": {"Config": []}}).subnet == "10.0.0.0/24"


def test_bad_host_route() -> None:
    with pytest.raises(InvalidArgument, match="invalid host route"):
        Allocator(host_routes=["nope"])
