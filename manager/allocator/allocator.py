"""The network allocator's facade (pure: no store I/O, no asyncio).

State is rebuilt from the stored objects with :meth:`Allocator.from_objects` (networks with their
IPAM config and VNI, services' ``Endpoint.VirtualIPs``/``Endpoint.Ports``, tasks'
``NetworksAttachments[].Addresses``, nodes' ``Attachments``); then each ``allocate_*`` method
returns the allocation for the caller to write back in the same store transaction. Nothing is
remembered that the store does not hold (each address's holder — ``"service:<ID>"``,
``"task:<ID>"``, ``"node:<ID>"`` — is the object it is stored in), so a new leader (or a
restarted manager) that rebuilds from its store can never hand out an address, VNI or port that
a committed object holds: "never duplicated after failover" holds by construction. If the transaction that was to write an
allocation fails, throw the allocator away and rebuild it (its memory is then ahead of the store).

Every ``allocate_*`` is all or nothing: when it raises, nothing was taken.

Object shapes read (Docker/swarmkit, as stored by shoal):

- network: ``{"ID", "Spec": {"Name", "Ingress"}, "DriverState": {"Name": "overlay", "Options":
  {VNI_OPTION: "4097"}}, "IPAMOptions": {"Driver": {"Name": "default"}, "Configs": [{"Subnet",
  "Gateway", "Range"}]}}`` (swarm ``Network``); the engine shape (``"Name"``, ``"Ingress"``,
  ``"Options"``, ``"IPAM": {"Config": [{"Subnet", "Gateway", "IPRange"}]}``) is read too.
- service: ``{"ID", "Spec": {"Name", "TaskTemplate": {"Networks": [{"Target"}]}, "Networks",
  "EndpointSpec": {"Mode", "Ports"}}, "Endpoint": {"Spec", "Ports", "VirtualIPs": [{"NetworkID",
  "Addr"}]}}``; a network ``Target`` is a network ID or name.
- task: ``{"ID", "ServiceID", "Spec": {"Networks"}, "NetworksAttachments": [{"Network": {"ID"},
  "Addresses": ["10.0.0.3/24"]}]}``; attachments to networks the allocator does not know (the
  node-local bridge) are ignored.
- node: ``{"ID", "Attachments": [{"Network": {"ID"}, "Addresses": [...]}]}`` (load-balancer IPs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from manager.allocator.errors import AllocatorError, InvalidArgument, NetworkNotFound
from manager.allocator.ipam import AddressSpace
from manager.allocator.pools import (
    AddressPools,
    SubnetRegistry,
    UserSubnet,
    parse_pools,
    validate_ipam_config,
)
from manager.allocator.ports import PortAllocator, normalize_port
from manager.allocator.vni import VNI_OPTION, VNIAllocator, parse_vni

__all__ = ["Allocator", "NetworkAllocation", "network_attachment"]

Obj = Mapping[str, Any]


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else []


@dataclass(frozen=True)
class NetworkAllocation:
    """What a network was given: ``subnet`` and ``gateway`` (strings, e.g. ``"10.0.0.0/24"``,
    ``"10.0.0.1"``), ``ip_range`` (CIDR or None) and ``vni`` (4096..2^24-1)."""

    network_id: str
    subnet: str
    gateway: str
    ip_range: str | None
    vni: int

    def ipam_options(self) -> dict[str, Any]:
        """The swarm ``Network.IPAMOptions``: ``{"Driver": {"Name": "default"}, "Configs": [{"Subnet",
        "Gateway"[, "Range"]}]}``."""
        cfg = {"Subnet": self.subnet, "Gateway": self.gateway}
        if self.ip_range:
            cfg["Range"] = self.ip_range
        return {"Driver": {"Name": "default"}, "Configs": [cfg]}

    def engine_ipam(self) -> dict[str, Any]:
        """The engine API's ``Network.IPAM``: ``{"Driver": "default", "Options": null, "Config":
        [{"Subnet", "Gateway"[, "IPRange"]}]}``."""
        cfg = {"Subnet": self.subnet, "Gateway": self.gateway}
        if self.ip_range:
            cfg["IPRange"] = self.ip_range
        return {"Driver": "default", "Options": None, "Config": [cfg]}

    def driver_state(self) -> dict[str, Any]:
        """The swarm ``Network.DriverState``: ``{"Name": "overlay", "Options": {VNI_OPTION: "4097"}}``."""
        return {"Name": "overlay", "Options": {VNI_OPTION: str(self.vni)}}


def network_attachment(network: Obj, address: str) -> dict[str, Any]:
    """A ``NetworksAttachments[]`` entry: ``{"Network": <the stored network>, "Addresses": [address]}``."""
    return {"Network": dict(network), "Addresses": [address]}


@dataclass
class _Net:
    id: str
    name: str
    ingress: bool
    vni: int
    space: AddressSpace
    ip_range: str | None = None


def _net_name(obj: Obj) -> str:
    return str(_map(obj.get("Spec")).get("Name") or obj.get("Name") or "")


def _net_ingress(obj: Obj) -> bool:
    return bool(_map(obj.get("Spec")).get("Ingress") or obj.get("Ingress"))


def _ipam_configs(obj: Obj) -> list[dict[str, str]]:
    """``[{"Subnet", "Gateway", "Range"}]`` from a network object or spec, swarm or engine shaped."""
    out: list[dict[str, str]] = []
    for holder in (obj, _map(obj.get("Spec"))):
        for c in _list(_map(holder.get("IPAMOptions")).get("Configs")):
            c = _map(c)
            out.append({"Subnet": str(c.get("Subnet") or ""), "Gateway": str(c.get("Gateway") or ""),
                        "Range": str(c.get("Range") or "")})
        if out:
            return out
        for c in _list(_map(holder.get("IPAM")).get("Config")):
            c = _map(c)
            out.append({"Subnet": str(c.get("Subnet") or ""), "Gateway": str(c.get("Gateway") or ""),
                        "Range": str(c.get("IPRange") or c.get("Range") or "")})
        if out:
            return out
    return out


def _vni_option(obj: Obj) -> Any:
    """The ``vxlanid_list`` option of a network object or spec, or None."""
    spec = _map(obj.get("Spec"))
    for opts in (_map(obj.get("DriverState")).get("Options"), obj.get("Options"),
                 _map(obj.get("DriverConfiguration")).get("Options"), _map(obj.get("DriverConfig")).get("Options"),
                 _map(spec.get("DriverConfiguration")).get("Options"), _map(spec.get("DriverConfig")).get("Options")):
        v = _map(opts).get(VNI_OPTION)
        if v not in (None, ""):
            return v
    return None


def _service_name(service: Obj) -> str:
    return str(_map(service.get("Spec")).get("Name") or service.get("ID") or "")


def _network_refs(spec: Obj) -> list[str]:
    """Targets of a service or task spec: ``TaskTemplate.Networks`` (or the deprecated
    ``Networks``) for a service, ``Networks`` for a task spec."""
    tt = _map(spec.get("TaskTemplate"))
    nets = tt.get("Networks") if "Networks" in tt else spec.get("Networks")
    refs: list[str] = []
    for n in _list(nets):
        target = str(_map(n).get("Target") or "") if isinstance(n, Mapping) else str(n)
        if target and target not in refs:
            refs.append(target)
    return refs


def _attachments(obj: Obj, key: str) -> Iterable[tuple[str, str]]:
    """``(network ID, address)`` of every address in ``obj[key]`` (NetworksAttachments/Attachments)."""
    for att in _list(obj.get(key)):
        att = _map(att)
        nid = str(_map(att.get("Network")).get("ID") or att.get("NetworkID") or "")
        for addr in _list(att.get("Addresses")):
            yield nid, str(addr)


def _has_ingress_ports(ep_spec: Obj) -> bool:
    return any(str(_map(p).get("PublishMode") or "ingress").lower() == "ingress" for p in _list(ep_spec.get("Ports")))


@dataclass
class _Undo:
    """Addresses taken during one call, to give back if the call fails."""

    holder: str
    taken: list[tuple[AddressSpace, str]] = field(default_factory=list)

    def take(self, space: AddressSpace) -> str:
        addr = space.allocate(self.holder)
        self.taken.append((space, addr))
        return addr

    def rollback(self) -> None:
        for space, addr in self.taken:
            space.release(addr, self.holder)


class Allocator:
    """Subnets, VNIs, addresses and ingress ports of the cluster's overlay networks.

    ``pools``: the default address pools (None = 10.0.0.0/8 in /24s); ``host_routes``: CIDRs
    (e.g. the nodes' own routes) that no overlay subnet may overlap; ``reserved_ports``:
    ``{(protocol, port): what uses it}`` that no service may publish."""

    def __init__(self, pools: AddressPools | None = None, host_routes: Iterable[str] = (),
                 reserved_ports: Mapping[tuple[str, int], str] | None = None) -> None:
        self.pools = pools or parse_pools(None, None)
        self._subnets = SubnetRegistry(self.pools, host_routes)
        self._vnis = VNIAllocator()
        self._ports = PortAllocator(reserved_ports)
        self._nets: dict[str, _Net] = {}
        self.problems: list[str] = []
        """What :meth:`from_objects` skipped (malformed or conflicting stored data), for the log."""

    # -- rebuild --------------------------------------------------------------------------

    @classmethod
    def from_objects(cls, networks: Iterable[Obj], services: Iterable[Obj], tasks: Iterable[Obj],
                     pools: AddressPools | None = None, host_routes: Iterable[str] = (),
                     nodes: Iterable[Obj] = (),
                     reserved_ports: Mapping[tuple[str, int], str] | None = None) -> Allocator:
        """An allocator holding exactly what the stored objects hold. Networks without an
        allocation (no subnet or VNI yet) are skipped: allocate them with :meth:`allocate_network`.
        Never raises for stored data: what cannot be taken (a malformed subnet, an address outside
        its subnet, a VNI held twice) is listed in ``problems`` for the caller to log."""
        a = cls(pools, host_routes, reserved_ports)
        for n in networks:
            a._restore_network(n)
        for s in services:
            sid = str(s.get("ID") or "")
            ep = _map(s.get("Endpoint"))
            for v in _list(ep.get("VirtualIPs")):
                v = _map(v)
                a._restore_address(str(v.get("NetworkID") or ""), str(v.get("Addr") or ""), f"service:{sid}")
            a._ports.reserve(sid, _service_name(s), [_map(p) for p in _list(ep.get("Ports"))])
        for t in tasks:
            for nid, addr in _attachments(t, "NetworksAttachments"):
                a._restore_address(nid, addr, f"task:{t.get('ID')}")
        for node in nodes:
            for nid, addr in _attachments(node, "Attachments"):
                a._restore_address(nid, addr, f"node:{node.get('ID')}")
        return a

    def _restore_network(self, obj: Obj) -> None:
        nid = str(obj.get("ID") or "")
        cfgs = _ipam_configs(obj)
        vni_raw = _vni_option(obj)
        if not nid or not cfgs or not cfgs[0]["Subnet"] or vni_raw is None:
            return
        try:
            user = validate_ipam_config(cfgs[0]["Subnet"], cfgs[0]["Gateway"], cfgs[0]["Range"])
        except AllocatorError as e:
            self.problems.append(f"network {nid}: {e}")
            return
        vni = 0
        try:
            vni = parse_vni(vni_raw)
            self._vnis.reserve(vni, nid)
        except AllocatorError as e:  # its subnet and addresses are still held
            self.problems.append(f"network {nid}: {e}")
        self._commit_network(nid, _net_name(obj), _net_ingress(obj), user, vni)

    def _restore_address(self, nid: str, addr: str, holder: str) -> None:
        net = self._nets.get(nid)
        if net is None:
            return  # the local bridge, or a network removed since
        try:
            net.space.reserve(addr, holder)
        except AllocatorError as e:
            self.problems.append(f"{holder}: {e}")

    def _commit_network(self, nid: str, name: str, ingress: bool, user: UserSubnet, vni: int) -> _Net:
        self._subnets.reserve(nid, user.subnet, name)
        rng = str(user.ip_range) if user.ip_range else None
        net = _Net(nid, name, ingress, vni, AddressSpace(nid, name, user.subnet, user.gateway, user.ip_range), rng)
        self._nets[nid] = net
        return net

    # -- networks -------------------------------------------------------------------------

    def _allocation(self, net: _Net) -> NetworkAllocation:
        return NetworkAllocation(net.id, str(net.space.subnet), str(net.space.gateway), net.ip_range, net.vni)

    def network(self, network_id: str) -> NetworkAllocation | None:
        """The allocation of ``network_id``, or None if it has none."""
        net = self._nets.get(network_id)
        return self._allocation(net) if net else None

    def allocate_network(self, network_id: str, spec: Obj) -> NetworkAllocation:
        """Give network ``network_id`` a subnet, gateway and VNI; idempotent for an allocated ID.

        ``spec``: the network's spec (engine ``NetworkCreateRequest`` shape ``{"Name", "Ingress",
        "Options", "IPAM": {"Config": [{"Subnet", "Gateway", "IPRange"}]}}`` or swarm ``NetworkSpec``
        with ``IPAMOptions.Configs[{"Subnet", "Gateway", "Range"}]``). No subnet: the first free
        default-pool subnet (gateway = its first address). A ``vxlanid_list`` option picks the VNI.

        Raises :class:`InvalidArgument` (malformed subnet/gateway/range, gateway or range outside the
        subnet, several subnets, a gateway/range without a subnet, a VNI taken or out of range),
        :class:`SubnetOverlap` (names the network or host route overlapped), :class:`PoolExhausted`,
        :class:`VNIExhausted`."""
        got = self._nets.get(network_id)
        if got is not None:
            return self._allocation(got)
        cfgs = [c for c in _ipam_configs(spec) if any(c.values())]
        if len(cfgs) > 1:
            raise InvalidArgument("ipam configuration: shoal supports one subnet per overlay network")
        user: UserSubnet | None = None
        if cfgs:
            c = cfgs[0]
            if not c["Subnet"]:
                raise InvalidArgument("ipam configuration: a gateway or ip-range needs a subnet (--subnet)")
            user = validate_ipam_config(c["Subnet"], c["Gateway"], c["Range"])
            self._subnets.check_free(user.subnet)
        else:
            net = self._subnets.next_free()
            user = UserSubnet(net, net.network_address + 1, None)
        vni_raw = _vni_option(spec)
        if vni_raw is not None:
            vni = parse_vni(vni_raw)
            self._vnis.reserve(vni, network_id)
        else:
            vni = self._vnis.allocate(network_id)
        return self._allocation(self._commit_network(network_id, _net_name(spec), _net_ingress(spec), user, vni))

    def deallocate_network(self, network_id: str) -> None:
        """Free the network's subnet, VNI and all its addresses. The control API must refuse to remove
        a network still used by a service or task (Docker: "network is in use"); see
        :meth:`addresses_in_use`. Unknown IDs do nothing."""
        net = self._nets.pop(network_id, None)
        if net is not None:
            self._subnets.release(network_id)
            self._vnis.release(net.vni, network_id)

    def addresses_in_use(self, network_id: str) -> int:
        """How many addresses (VIPs, task and node IPs) ``network_id`` has allocated (0 if unknown)."""
        net = self._nets.get(network_id)
        return net.space.in_use if net else 0

    def resolve(self, ref: str) -> str:
        """The ID of the allocated network whose ID or name is ``ref``. Raises :class:`NetworkNotFound`."""
        if ref in self._nets:
            return ref
        for net in self._nets.values():
            if net.name and net.name == ref:
                return net.id
        raise NetworkNotFound(ref)

    def ingress_network(self) -> str | None:
        """The ID of the allocated ingress network (``Spec.Ingress``), or None."""
        return next((n.id for n in self._nets.values() if n.ingress), None)

    # -- generic addresses (node load-balancer IPs) ----------------------------------------

    def allocate_address(self, network_id: str, holder: str = "") -> str:
        """One address on ``network_id`` for ``holder`` (e.g. ``"node:<ID>"`` for a node's
        load-balancer endpoint, which :meth:`from_objects` reads from ``Node.Attachments``), as
        ``"a.b.c.d/len"``. Raises :class:`NetworkNotFound`, :class:`AddressesExhausted`."""
        return self._space(network_id).allocate(holder)

    def release_address(self, network_id: str, address: str, holder: str | None = None) -> None:
        """Free ``address`` on ``network_id`` (only if ``holder`` holds it, when given); unknown
        networks or addresses do nothing."""
        net = self._nets.get(network_id)
        if net is not None:
            net.space.release(address, holder)

    def _space(self, network_id: str) -> AddressSpace:
        net = self._nets.get(network_id)
        if net is None:
            raise NetworkNotFound(network_id)
        return net.space

    # -- services -------------------------------------------------------------------------

    def service_networks(self, service: Obj) -> list[str]:
        """The network IDs a service's tasks attach to: its spec's networks (resolved), then the
        ingress network if it publishes a port in ingress mode and an ingress network exists.
        Raises :class:`NetworkNotFound`."""
        spec = _map(service.get("Spec"))
        ids = [self.resolve(r) for r in _network_refs(spec)]
        ingress = self.ingress_network()
        if ingress and ingress not in ids and _has_ingress_ports(_map(spec.get("EndpointSpec"))):
            ids.append(ingress)
        return ids

    def allocate_service(self, service: Obj) -> dict[str, Any]:
        """The service's ``Endpoint``: ``{"Spec": EndpointSpec, "Ports": [PortConfig...], "VirtualIPs":
        [{"NetworkID", "Addr": "a.b.c.d/len"}...]}``. Mode ``vip`` (the default) gets one VIP per
        attached network (the ingress network included when ingress ports are published); ``dnsrr``
        gets none. VIPs held by this service (holder ``"service:<ID>"``) and its dynamic ports, as in
        ``service["Endpoint"]``, are kept; VIPs on networks no longer attached are freed. Ports: see :meth:`PortAllocator.allocate`.

        Raises :class:`InvalidArgument` (bad endpoint mode or port, ingress ports with dnsrr — swarmkit:
        "port published with ingress mode can't be used with dnsrr mode"), :class:`NetworkNotFound`,
        :class:`PortConflict` (409, names the service holding the port), :class:`PortsExhausted`,
        :class:`AddressesExhausted`."""
        sid = str(service.get("ID") or "")
        name = _service_name(service)
        spec = _map(service.get("Spec"))
        ep_spec = dict(_map(spec.get("EndpointSpec")))
        mode = str(ep_spec.get("Mode") or "vip")
        if mode not in ("vip", "dnsrr"):
            raise InvalidArgument(f"invalid endpoint mode {mode!r} (use vip or dnsrr)")
        ep_spec["Mode"] = mode
        spec_ports = [_map(p) for p in _list(ep_spec.get("Ports"))]
        if mode == "dnsrr" and any(normalize_port(p)["PublishMode"] == "ingress" for p in spec_ports):
            raise InvalidArgument("EndpointSpec: port published with ingress mode can't be used with dnsrr mode")
        nets = self.service_networks(service) if mode == "vip" else []
        current = _map(service.get("Endpoint"))
        old_vips = {str(_map(v).get("NetworkID")): str(_map(v).get("Addr"))
                    for v in _list(current.get("VirtualIPs"))}
        me = f"service:{sid}"
        undo = _Undo(me)
        vips: list[dict[str, str]] = []
        try:
            for nid in nets:
                space = self._space(nid)
                addr = old_vips.get(nid)
                if not (addr and space.holder(addr) == me):
                    addr = undo.take(space)
                vips.append({"NetworkID": nid, "Addr": addr})
            ports = self._ports.allocate(sid, name, spec_ports, [_map(p) for p in _list(current.get("Ports"))])
        except BaseException:
            undo.rollback()
            raise
        kept = {v["NetworkID"]: v["Addr"] for v in vips}
        for nid, addr in old_vips.items():
            if kept.get(nid) != addr:
                self.release_address(nid, addr, me)
        return {"Spec": ep_spec, "Ports": ports, "VirtualIPs": vips}

    def deallocate_service(self, service: Obj) -> None:
        """Free the service's VIPs (from ``Endpoint.VirtualIPs``) and its ingress ports."""
        me = f"service:{service.get('ID') or ''}"
        for v in _list(_map(service.get("Endpoint")).get("VirtualIPs")):
            v = _map(v)
            self.release_address(str(v.get("NetworkID") or ""), str(v.get("Addr") or ""), me)
        self._ports.release(str(service.get("ID") or ""))

    # -- tasks ----------------------------------------------------------------------------

    def task_networks(self, task: Obj, service: Obj | None) -> list[str]:
        """Network IDs for ``task``: its ``Spec.Networks`` if the task spec has that key, else its
        service's; plus the ingress network when the task publishes ingress ports: its own
        ``Endpoint`` (the service's, copied when the task was made) when it has one, else the
        service's ``Spec.EndpointSpec``/``Endpoint``. Raises :class:`NetworkNotFound`."""
        tspec = _map(task.get("Spec"))
        if "Networks" in tspec:
            ids = [self.resolve(r) for r in _network_refs(tspec)]
        elif service is not None:
            ids = [self.resolve(r) for r in _network_refs(_map(service.get("Spec")))]
        else:
            ids = []
        ingress = self.ingress_network()
        if ingress and ingress not in ids:
            if isinstance(task.get("Endpoint"), Mapping):
                publishes = _has_ingress_ports(_map(task.get("Endpoint")))
            elif service is not None:
                publishes = (_has_ingress_ports(_map(_map(service.get("Spec")).get("EndpointSpec")))
                             or _has_ingress_ports(_map(service.get("Endpoint"))))
            else:
                publishes = False
            if publishes:
                ids.append(ingress)
        return ids

    def allocate_task(self, task: Obj, service: Obj | None = None) -> dict[str, str]:
        """One address per attached network: ``{network ID: "a.b.c.d/len"}``, in attachment order.
        Addresses in the task's ``NetworksAttachments`` that the allocator records as this task's
        (holder ``"task:<ID>"``) are kept; any other address there is ignored. The caller writes
        ``NetworksAttachments`` (see :func:`network_attachment`) and moves the task to pending.

        Raises :class:`AddressesExhausted` (the allocator loop leaves the task ``new`` with that
        message: "network NAME is out of addresses ..."), :class:`NetworkNotFound`."""
        nets = self.task_networks(task, service)
        have: dict[str, str] = {}
        for nid, addr in _attachments(task, "NetworksAttachments"):
            have.setdefault(nid, addr)
        me = f"task:{task.get('ID') or ''}"
        undo = _Undo(me)
        out: dict[str, str] = {}
        try:
            for nid in nets:
                space = self._space(nid)
                held = have.get(nid)
                out[nid] = held if held and space.holder(held) == me else undo.take(space)
        except BaseException:
            undo.rollback()
            raise
        return out

    def deallocate_task(self, task: Obj) -> None:
        """Free the addresses in the task's ``NetworksAttachments`` (the task is gone or will not
        run again); addresses on unknown networks are ignored."""
        me = f"task:{task.get('ID') or ''}"
        for nid, addr in _attachments(task, "NetworksAttachments"):
            self.release_address(nid, addr, me)
