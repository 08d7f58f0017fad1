"""The worker's reading of overlay networks (issue 9): what the manager sends → the driver's types.

Pure functions, no kernel: the executor (:mod:`worker.executor`) calls the driver
(:class:`overlaynet.driver.NetworkDriver`, the VXLAN driver in shoald) with what these return.

- A task's overlay attachment is a ``NetworksAttachments[]`` entry ``{"Network": <stored network>,
  "Addresses": ["10.0.1.5/24"]}`` whose network's ``DriverState.Name`` is ``"overlay"``
  (:func:`overlay_attachments`); any other entry (the node-local bridge) is not an overlay's.
- The stored network (docs/contracts.md, "The stored Network") gives the :class:`NetworkConfig`:
  ``IPAMOptions.Configs[0]`` (subnet, gateway), the VNI from ``DriverState.Options``
  ``com.docker.network.driver.overlay.vxlanid_list`` (the first of the list), the driver options
  ``DriverState.Options`` (MTU; ``encrypted`` is refused by the driver); the data path address is
  the node's own ``Status.Addr`` (:func:`data_path_addr`), the port 4789 for now.
- The assignment's ``networks`` ``{network_id: {"Network", "Peers": [{"IP", "MAC", "VTEP"}]}}``
  gives each network's peers (:func:`peers_of`); peers on this node (VTEP = our data path
  address) are dropped, as local endpoints need no VXLAN entries.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

from overlaynet.dns.records import NetworkRecords, ServiceRecord, TaskRecord
from overlaynet.driver import DEFAULT_DATA_PATH_PORT, DriverError, NetworkConfig, Peer, mac_from_ip

__all__ = ["OVERLAY_DRIVER", "VNI_OPTION", "Overlay", "data_path_addr", "dns_records", "is_overlay", "network_config",
           "network_label", "overlay_attachments", "peers_of"]

log = logging.getLogger("shoal.worker.overlay")

OVERLAY_DRIVER = "overlay"
VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"


class Overlay:
    """One overlay attachment of a task: the stored ``network`` and the task's ``address`` on it."""

    __slots__ = ("address", "network")

    def __init__(self, network: Mapping[str, Any], address: str) -> None:
        self.network = network
        self.address = address

    @property
    def network_id(self) -> str:
        return str(self.network.get("ID") or "")

    @property
    def label(self) -> str:
        return network_label(self.network)


def is_overlay(network: Mapping[str, Any] | None) -> bool:
    """Whether the stored ``network``'s ``DriverState.Name`` is ``"overlay"``."""
    if not isinstance(network, Mapping):
        return False
    state = network.get("DriverState")
    return isinstance(state, Mapping) and state.get("Name") == OVERLAY_DRIVER


def network_label(network: Mapping[str, Any]) -> str:
    """``"NAME (ID[:12])"`` for messages (``"(ID[:12])"`` without a name)."""
    name = (network.get("Spec") or {}).get("Name") or ""
    nid = str(network.get("ID") or "?")[:12]
    return f"{name} ({nid})" if name else f"({nid})"


def overlay_attachments(task: Mapping[str, Any]) -> list[Overlay]:
    """The task's overlay attachments, in order. Raises ValueError (naming the network) for an
    overlay attachment without an ID or an address."""
    out: list[Overlay] = []
    for att in task.get("NetworksAttachments") or []:
        if not isinstance(att, Mapping):
            continue
        net = att.get("Network")
        if not is_overlay(net):
            continue
        assert isinstance(net, Mapping)
        if not net.get("ID"):
            raise ValueError(f"overlay network {network_label(net)} has no ID")
        addrs = att.get("Addresses") or []
        if not addrs:
            raise ValueError(f"network {network_label(net)}: the task has no address on it")
        out.append(Overlay(net, str(addrs[0])))
    return out


def data_path_addr(node: Mapping[str, Any]) -> str | None:
    """This node's data path address: its own ``Status.Addr`` (an ``ip[:port]``; the IP), or None."""
    addr = str((node.get("Status") or {}).get("Addr") or "").strip()
    if not addr:
        return None
    if addr.count(":") == 1:  # "ip:port"
        addr = addr.split(":", 1)[0]
    return addr or None


def network_config(network: Mapping[str, Any], dp_addr: str | None,
                   dp_port: int = DEFAULT_DATA_PATH_PORT) -> NetworkConfig:
    """The driver's :class:`NetworkConfig` of a stored overlay ``network`` on the node whose data
    path address is ``dp_addr``. Raises ValueError naming the network when a field is missing or
    bad (the driver validates the rest)."""
    label = network_label(network)
    if not dp_addr:
        raise ValueError(f"network {label}: this node has no data path address (the node's Status.Addr "
                         "is empty; check --advertise-addr)")
    cfgs = (network.get("IPAMOptions") or {}).get("Configs") or []
    if not cfgs or not cfgs[0].get("Subnet"):
        raise ValueError(f"network {label}: no subnet allocated (IPAMOptions.Configs is empty)")
    subnet = str(cfgs[0]["Subnet"])
    gateway = cfgs[0].get("Gateway")
    if not gateway:  # the first host address, as Docker's IPAM picks it
        try:
            gateway = str(next(ipaddress.ip_network(subnet, strict=False).hosts()))
        except (ValueError, StopIteration) as e:
            raise ValueError(f"network {label}: bad subnet {subnet!r}") from e
    opts = dict((network.get("DriverState") or {}).get("Options") or {})
    raw_vni = str(opts.get(VNI_OPTION) or "").split(",")[0].strip()
    if not raw_vni.isdigit():
        raise ValueError(f"network {label}: no VXLAN ID allocated (DriverState.Options {VNI_OPTION} "
                         f"is {opts.get(VNI_OPTION)!r})")
    return NetworkConfig(network_id=str(network.get("ID") or ""), subnet=subnet, gateway=str(gateway),
                         vni=int(raw_vni), data_path_addr=dp_addr, data_path_port=dp_port,
                         options={str(k): str(v) for k, v in opts.items()})


def peers_of(entry: Mapping[str, Any] | None, own_vtep: str | None) -> list[Peer]:
    """The :class:`Peer` list of one ``networks`` entry (``{"Network", "Peers": [{"IP", "MAC",
    "VTEP"}]}``): IPs may carry a prefix, a missing MAC is :func:`mac_from_ip` of the IP; peers whose
    VTEP is ``own_vtep`` (this node) and malformed ones (logged) are left out."""
    out: list[Peer] = []
    raw_peers = entry.get("Peers") if isinstance(entry, Mapping) else None
    if not isinstance(raw_peers, list):
        if raw_peers is not None or not isinstance(entry, Mapping):
            log.warning("ignoring a malformed overlay networks entry %r", entry)
        return out
    for raw in raw_peers:
        if not isinstance(raw, Mapping):
            log.warning("ignoring a malformed overlay peer %r", raw)
            continue
        vtep = str(raw.get("VTEP") or "")
        if own_vtep and vtep == own_vtep:
            continue
        try:
            ip = str(ipaddress.ip_interface(str(raw.get("IP") or "")).ip)
            mac = str(raw.get("MAC") or "") or mac_from_ip(ip)
            out.append(Peer(ip, mac, vtep))
        except (ValueError, DriverError) as e:
            log.warning("ignoring overlay peer %r: %s", dict(raw), e)
    return out


def dns_records(network_id: str, entry: Mapping[str, Any] | None) -> NetworkRecords:
    """The embedded DNS records of one ``networks`` entry (its ``"DNS"`` key, see the module
    docstring): every service (``VIP`` null → answered with its tasks' IPs, as dnsrr) and every
    running task with an IPv4 address (a prefix is dropped), under the network's name
    (``Network.Spec.Name``, for PTR answers). No ``"DNS"`` → no records; malformed
    services or tasks are logged and left out."""
    dns = entry.get("DNS") if isinstance(entry, Mapping) else None
    if not isinstance(dns, Mapping):
        if dns is not None:
            log.warning("network %s: ignoring a malformed DNS entry %r", network_id[:12], dns)
        return NetworkRecords(network_id)
    services: list[ServiceRecord] = []
    for raw in dns.get("Services") or []:
        try:
            if not isinstance(raw, Mapping) or not raw.get("Name"):
                raise ValueError("no Name")
            vip = raw.get("VIP")
            if vip:
                vip = str(ipaddress.IPv4Interface(str(vip)).ip)
            aliases = tuple(str(a) for a in raw.get("Aliases") or [] if a)
            services.append(ServiceRecord(str(raw["Name"]), vip or None, aliases))
        except (ValueError, TypeError) as e:
            log.warning("network %s: ignoring DNS service %r: %s", network_id[:12], raw, e)
    tasks: list[TaskRecord] = []
    for raw in dns.get("Tasks") or []:
        try:
            if not isinstance(raw, Mapping) or not raw.get("Service") or not raw.get("ID"):
                raise ValueError("no Service or ID")
            ip = str(ipaddress.IPv4Interface(str(raw.get("IP") or "")).ip)
            slot = raw.get("Slot")
            hostname = raw.get("Hostname")
            tasks.append(TaskRecord(str(raw["Service"]), slot if isinstance(slot, int) else str(slot or ""),
                                    str(raw["ID"]), ip, str(hostname) if hostname else None))
        except (ValueError, TypeError) as e:
            log.warning("network %s: ignoring DNS task %r: %s", network_id[:12], raw, e)
    return NetworkRecords(network_id, tuple(services), tuple(tasks), name=_network_name(entry))


def _network_name(entry: Mapping[str, Any] | None) -> str:
    """The network's name in a ``networks`` entry (``Network.Spec.Name``), ``""`` when absent."""
    net = entry.get("Network") if isinstance(entry, Mapping) else None
    spec = net.get("Spec") if isinstance(net, Mapping) else None
    name = spec.get("Name") if isinstance(spec, Mapping) else None
    return name if isinstance(name, str) else ""
