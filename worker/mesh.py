"""The ingress routing mesh on this node (issue 9): the push's ``"ingress"`` → the ingress sandbox.

The assignment push carries (/work/notes/contract9.md §4)::

    "ingress": {"NetworkID": nid, "Address": "10.0.0.5/24",        # this node's LB address on it
                "Ports": [{"ServiceID", "Service", "Protocol", "PublishedPort", "TargetPort",
                           "Endpoints": ["10.0.0.7", ...]}]}        # or null / absent: no mesh

and ``networks[nid]`` (the ingress network with its peers, listed for every node). :class:`Mesh`
turns that into :class:`overlaynet.mesh.IngressSandbox` calls: the sandbox namespace, its endpoint
on the ingress overlay (``eth1``, plugged by the executor's overlay attach as any task endpoint, so
the network's peers are programmed the same way), the host↔sandbox link with the overlay's MTU, and
the ports (by delta). A failed update (e.g. the ingress VNI still held by a swarm just left) returns False and is
retried by :class:`worker.netplane.NetPlane` with backoff; a half-built sandbox is torn down and
built again. When ``ingress`` goes away the endpoint is detached and the sandbox removed;
:meth:`Mesh.close` (daemon stop) does the same. The first update removes a crashed daemon's sandbox
and tables before building anew (so a restarted daemon interrupts mesh flows briefly).

Option (beyond Swarm), ``local_addresses`` given: a port whose endpoints include tasks running on
this node goes from this node's published port straight to those tasks, keeping the client's
source address (only on nodes running a task of the service; the other nodes still go through
their sandbox, which hides the client's address as in Swarm). Traffic a node receives then stays on
its own tasks. See :mod:`overlaynet.mesh`.

:func:`mesh_ports` is the pure reading of the ports; the rest runs kernel calls in threads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from overlaynet.driver import Attachment, EndpointConfig, NetworkConfig
from overlaynet.mesh import IngressSandbox, MeshPort
from worker import overlay as ov

__all__ = ["SANDBOX_ENDPOINT_ID", "Mesh", "mesh_ports"]

log = logging.getLogger("shoal.worker.mesh")

SANDBOX_ENDPOINT_ID = "lb-ingress-sbox"
"""The sandbox's endpoint ID on the ingress network (its veth there is ``sove-lb-ingres``)."""
SANDBOX_OVERLAY_IFNAME = "eth1"

AttachFn = Callable[[NetworkConfig, EndpointConfig], Awaitable[Attachment | None]]
DetachFn = Callable[[EndpointConfig], Awaitable[None]]


def mesh_ports(ingress: Mapping[str, Any], local_addresses: Mapping[str, str] | None = None) -> list[MeshPort]:
    """The :class:`MeshPort` list of an ``ingress`` entry; malformed ports (and a second claim of
    one protocol/port) are logged and left out, endpoints that are not IPv4 dropped.
    ``local_addresses`` (``{overlay IP: local-bridge IP}`` of this node's running tasks) fills each
    port's ``local`` with the local-bridge addresses of its endpoints that run here."""
    out: dict[tuple[str, int], MeshPort] = {}
    for raw in ingress.get("Ports") or []:
        try:
            if not isinstance(raw, Mapping):
                raise ValueError("not an object")
            proto = str(raw.get("Protocol") or "tcp").lower()
            pub, target = int(raw["PublishedPort"]), int(raw["TargetPort"])
            if proto not in ("tcp", "udp", "sctp") or not (0 < pub < 65536 and 0 < target < 65536):
                raise ValueError("bad protocol or port")
            eps = []
            for e in raw.get("Endpoints") or []:
                eps.append(str(ipaddress.IPv4Interface(str(e)).ip))
        except (KeyError, ValueError, TypeError) as e:
            log.warning("ingress: ignoring port %r: %s", raw, e)
            continue
        if (proto, pub) in out:
            log.warning("ingress: port %s/%d listed twice; keeping the first", proto, pub)
            continue
        endpoints = tuple(sorted(set(eps)))
        local = tuple(sorted({local_addresses[e] for e in endpoints if e in local_addresses})) \
            if local_addresses else ()
        out[(proto, pub)] = MeshPort(proto, pub, target, endpoints, local)
    return [out[k] for k in sorted(out)]


class Mesh:
    """This node's routing mesh. ``sandbox``: the kernel side; ``attach``/``detach``: the executor's
    overlay attach/detach (ensure the network + peers + plug, under its per-network lock);
    ``local_addresses``: None, or (the option keeping the client's address) a function returning
    ``{overlay IP: local-bridge IP}`` of this node's running tasks."""

    def __init__(self, sandbox: IngressSandbox, attach: AttachFn, detach: DetachFn,
                 local_addresses: Callable[[], Mapping[str, str]] | None = None) -> None:
        self.sandbox = sandbox
        self.local_addresses = local_addresses
        self._attach = attach
        self._detach = detach
        self._lock = asyncio.Lock()
        self._started = False
        self._ep: EndpointConfig | None = None  # the sandbox's endpoint on the ingress network
        self._cfg: NetworkConfig | None = None
        self._built = False  # something of the sandbox may exist
        self._up = False  # the sandbox's endpoint and link were made (a failed build is redone)

    @property
    def endpoint(self) -> EndpointConfig | None:
        """The sandbox's endpoint on the ingress network, None when there is no mesh."""
        return self._ep

    async def update(self, ingress: Mapping[str, Any] | None, networks: Mapping[str, Any],
                     node: Mapping[str, Any], dp_port: int) -> bool:
        """Follow one push (see the module docstring). Returns True when applied; False after a
        failure, which is logged (calling again with the same push retries: a sandbox left
        half-built is torn down and built again; :class:`worker.netplane.NetPlane` retries with
        backoff)."""
        async with self._lock:
            try:
                await self._update(ingress, networks, node, dp_port)
            except Exception as e:
                log.warning("ingress routing mesh: %s", e or type(e).__name__)
                return False
            return True

    async def _update(self, ingress: Mapping[str, Any] | None, networks: Mapping[str, Any],
                      node: Mapping[str, Any], dp_port: int) -> None:
        if not self._started:
            self._started = True
            await asyncio.to_thread(self.sandbox.remove)  # a crashed daemon's leftovers
        if not isinstance(ingress, Mapping) or not ingress.get("NetworkID") or not ingress.get("Address"):
            await self._teardown()
            return
        nid = str(ingress["NetworkID"])
        entry = networks.get(nid)
        network = entry.get("Network") if isinstance(entry, Mapping) else None
        if not isinstance(network, Mapping):
            raise ValueError(f"the ingress network {nid[:12]} is not in the push's networks")
        cfg = ov.network_config(network, ov.data_path_addr(node), dp_port)
        iface = ipaddress.IPv4Interface(str(ingress["Address"]))
        ep = EndpointConfig(nid, SANDBOX_ENDPOINT_ID, str(self.sandbox.netns_path), str(iface),
                            ifname=SANDBOX_OVERLAY_IFNAME)
        if self._ep is not None and (self._ep != ep or self._cfg != cfg or not self._up):
            await self._teardown()
        if self._ep is None:
            self._built = True
            await asyncio.to_thread(self.sandbox.ensure_netns)
            self._ep, self._cfg = ep, cfg
            att = await self._attach(cfg, ep)
            mtu = att.mtu if att is not None else None
            if mtu is None:
                raise RuntimeError("the overlay attach gave no MTU")
            await asyncio.to_thread(self.sandbox.ensure_link, mtu)
            self._up = True
            log.info("ingress routing mesh up: sandbox at %s on network %s, MTU %d", iface, nid[:12], mtu)
        local = self.local_addresses() if self.local_addresses is not None else None
        await asyncio.to_thread(self.sandbox.set_ports, mesh_ports(ingress, local))

    async def _teardown(self, force: bool = False) -> None:
        ep, self._ep, self._cfg, self._up = self._ep, None, None, False
        if ep is not None:
            try:
                await self._detach(ep)
            except Exception as e:
                log.warning("ingress routing mesh: detaching the sandbox failed: %s", e)
            log.info("ingress routing mesh down")
        if self._built or force:
            self._built = False
            await asyncio.to_thread(self.sandbox.remove)

    async def close(self) -> None:
        """Tear the mesh down (daemon stop, swarm leave); never raises. A mesh that never saw a push
        made nothing and touches nothing (its start-time clean-up runs with the first push)."""
        async with self._lock:
            try:
                await self._teardown(force=self._started)
            except Exception as e:
                log.warning("ingress routing mesh: teardown failed: %s", e)
