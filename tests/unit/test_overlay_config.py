"""Unit tests for overlaynet.driver's pure parts: the MTU rule, MACs from IPs, driver options
(``encrypted`` refused), config validation and peers. No root, no kernel."""

from __future__ import annotations

import pytest

from overlaynet.driver import (
    MTU_OPTION,
    DriverError,
    EncryptionUnsupported,
    NetworkConfig,
    NetworkDriver,
    Peer,
    mac_from_ip,
    overlay_mtu,
    parse_options,
    peer_for,
)
from overlaynet.vxlan import VxlanDriver

NID = "0123456789abcdef0123"


def net(**kw: object) -> NetworkConfig:
    args: dict[str, object] = {"network_id": NID, "subnet": "10.55.0.0/24", "gateway": "10.55.0.1",
                               "vni": 4097, "data_path_addr": "192.0.2.1"}
    args.update(kw)
    return NetworkConfig(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("underlay", "option", "want"), [
    (1500, None, 1450), (1400, None, 1350), (9000, None, 8950), (1400, 1200, 1200), (1400, 1500, 1500),
    (118, None, 68),
])
def test_overlay_mtu(underlay: int, option: int | None, want: int) -> None:
    assert overlay_mtu(underlay, option) == want


def test_overlay_mtu_underlay_too_small() -> None:
    with pytest.raises(DriverError, match="too small"):
        overlay_mtu(117)


@pytest.mark.parametrize(("ip", "mac"), [
    ("10.55.0.2", "02:42:0a:37:00:02"), ("10.55.0.3/24", "02:42:0a:37:00:03"),
    ("172.17.0.2", "02:42:ac:11:00:02"), ("255.255.255.254", "02:42:ff:ff:ff:fe"),
])
def test_mac_from_ip(ip: str, mac: str) -> None:
    assert mac_from_ip(ip) == mac


@pytest.mark.parametrize("bad", ["fd00::1", "10.55.0", "nope", ""])
def test_mac_from_ip_refuses(bad: str) -> None:
    with pytest.raises(DriverError):
        mac_from_ip(bad)


def test_parse_options() -> None:
    assert parse_options(None).mtu is None
    assert parse_options({}).mtu is None
    assert parse_options({MTU_OPTION: "1400"}).mtu == 1400
    assert parse_options({MTU_OPTION: " 9000 "}).mtu == 9000
    # options it does not act on are ignored (the VNI list is the allocator's)
    assert parse_options({"com.docker.network.driver.overlay.vxlanid_list": "4097"}).mtu is None


@pytest.mark.parametrize("bad", ["", "abc", "-1", "1.5", "67", "65486", "0x500"])
def test_parse_options_bad_mtu(bad: str) -> None:
    with pytest.raises(DriverError, match=MTU_OPTION.replace(".", r"\.")):
        parse_options({MTU_OPTION: bad})


@pytest.mark.parametrize("value", ["", "true", "false"])
def test_encrypted_refused(value: str) -> None:
    # Docker turns encryption on by the option's presence, whatever its value
    with pytest.raises(EncryptionUnsupported, match="no ESP .*no WireGuard"):
        parse_options({"encrypted": value, MTU_OPTION: "1400"})
    with pytest.raises(EncryptionUnsupported):
        net(options={"encrypted": value}).validate()
    assert issubclass(EncryptionUnsupported, DriverError)


def test_network_config_validate() -> None:
    subnet, gw, opts = net(options={MTU_OPTION: "1300"}).validate()
    assert (str(subnet), str(gw), opts.mtu) == ("10.55.0.0/24", "10.55.0.1", 1300)
    assert net().data_path_port == 4789


@pytest.mark.parametrize(("field", "value", "match"), [
    ("network_id", "short", "network ID"),
    ("network_id", "bad/id/with/slashes", "network ID"),
    ("subnet", "10.55.0.1/24", "bad subnet"),  # host bits set
    ("subnet", "fd00::/64", "IPv4"),
    ("gateway", "10.56.0.1", "not a host address"),
    ("gateway", "10.55.0.0", "not a host address"),
    ("gateway", "10.55.0.255", "not a host address"),
    ("data_path_addr", "fd00::1", "data path address"),
    ("vni", 0, "VNI"),
    ("vni", 1 << 24, "VNI"),
    ("data_path_port", 0, "port"),
    ("data_path_port", 65536, "port"),
])
def test_network_config_refused(field: str, value: object, match: str) -> None:
    with pytest.raises(DriverError, match=match):
        net(**{field: value}).validate()


def test_peer() -> None:
    p = Peer("10.55.0.3", "02:42:0A:37:00:03", "192.0.2.2")
    assert p.mac == "02:42:0a:37:00:03"
    assert peer_for("10.55.0.3/24", "192.0.2.2") == p
    assert len({p, peer_for("10.55.0.3", "192.0.2.2")}) == 1
    for bad in [("10.55.0.300", "02:42:0a:37:00:03", "192.0.2.2"), ("10.55.0.3", "02:42:0a:37:00", "192.0.2.2"),
                ("10.55.0.3", "02:42:0a:37:00:03", "fd00::2"), ("10.55.0.3", "zz:42:0a:37:00:03", "192.0.2.2")]:
        with pytest.raises(DriverError):
            Peer(*bad)


def test_vxlan_driver_names(tmp_path: object) -> None:
    d = VxlanDriver(tmp_path)  # type: ignore[arg-type]
    assert isinstance(d, NetworkDriver)
    assert d.netns_path(NID).name == "sov-0123456789ab"
    assert d.vxlan_name(4097) == "sovx-001001" and d.bridge_name((1 << 24) - 1) == "sovb-ffffff"
    assert d.veth_name("taskaaaaaaaaaaaa1") == "sove-taskaaaaaa"
    assert all(len(n) <= 15 for n in (d.vxlan_name(1 << 23), d.veth_name("x" * 64)))
    with pytest.raises(DriverError):
        d.netns_path("../../etc")
