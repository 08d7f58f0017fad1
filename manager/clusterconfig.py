"""Creating a cluster (``swarm init``), its first SwarmSpec, and the Raft settings a manager takes
from the spec.

The Raft timing and compaction (``Spec.Raft``) must be known before the log, which holds the
spec, is open: a copy of that section is saved next to the log (:data:`RAFT_SPEC_FILE`) and
changes apply at the manager's next start, as Swarm's do.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any

from manager.allocator import parse_pools
from manager.allocator.ports import DEFAULT_DATA_PATH_PORT
from manager.ca import RootCA
from manager.controlapi.networks import add_network, ingress_request, validate_create_request
from manager.membership import raft_id
from manager.server import make_node
from manager.specs import default_swarm_spec, validate_swarm_spec
from manager.store import Store, WriteTx
from raft.replicated import DriverConfig, ReplicatedLog
from shoal.base.util import new_id, now_rfc3339, private_dir

__all__ = ["DEFAULT_DATA_PATH_PORT", "DEFAULT_RAFT_TICK", "RAFT_SPEC_FILE", "raft_config", "initial_swarm_spec",
           "read_raft_spec", "write_raft_spec", "split_addr", "init_cluster", "network_config"]

"""The VXLAN UDP port of the data path when ``swarm init --data-path-port`` is not given (IANA's)."""
MIN_SUBNET_SIZE = 8
"""The shortest ``--default-addr-pool-mask-length`` shoal takes (a /8 per overlay network)."""

DEFAULT_RAFT_TICK = 0.1
"""Seconds per Raft tick. Swarm ticks once a second (election after 10 ticks: over 10 s to
replace a dead leader); Shoal ticks every 100 ms with the same tick counts from the SwarmSpec
(``Raft.ElectionTick`` 10, ``Raft.HeartbeatTick`` 1): heartbeat 100 ms, election 1–2 s."""
RAFT_SPEC_FILE = "raft-spec.json"
"""The SwarmSpec's ``Raft`` section, saved next to the log: the Raft timing and compaction must be
known before the log (which holds the spec) is open. Changes apply at the manager's next start."""


def read_raft_spec(data_dir: Path) -> dict[str, Any]:
    """``{"Raft": {...}}`` saved by :func:`write_raft_spec` in ``data_dir``, or {} (none, unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        d = json.loads((data_dir / RAFT_SPEC_FILE).read_text())
        if isinstance(d, dict):
            return d
    return {}


def write_raft_spec(data_dir: Path, spec: dict[str, Any]) -> None:
    """Save the ``Raft`` section of SwarmSpec ``spec`` (if any) in ``data_dir``, atomically; an
    OSError is ignored (the next start uses the defaults or the older copy)."""
    raft = spec.get("Raft")
    if not raft:
        return
    path = data_dir / RAFT_SPEC_FILE
    with contextlib.suppress(OSError):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"Raft": raft}))
        os.replace(tmp, path)


def raft_config(spec: dict[str, Any], tick: float = DEFAULT_RAFT_TICK) -> DriverConfig:
    """Raft timing and compaction from a SwarmSpec's ``Raft`` section (Docker API ``RaftConfig``):
    ``ElectionTick``, ``HeartbeatTick`` (ticks of ``tick`` seconds), ``SnapshotInterval``
    (entries between snapshots), ``LogEntriesForSlowFollowers`` (entries kept after one)."""
    r = (spec or {}).get("Raft") or {}
    return DriverConfig(
        tick=tick,
        heartbeat_tick=int(r.get("HeartbeatTick") or 1),
        election_tick=int(r.get("ElectionTick") or 10),
        snapshot_every=int(r.get("SnapshotInterval") or 10_000),
        keep=int(500 if r.get("LogEntriesForSlowFollowers") is None else r["LogEntriesForSlowFollowers"]),
    )


_ZERO_IS_DEFAULT = {("Raft", "ElectionTick"), ("Raft", "HeartbeatTick"), ("Raft", "SnapshotInterval"),
                    ("Dispatcher", "HeartbeatPeriod"), ("CAConfig", "NodeCertExpiry")}
"""SwarmSpec fields a ``swarm init`` sends as 0 when not given: 0 is not a valid value for
them, so they keep swarmkit's default (a 0 elsewhere, e.g. TaskHistoryRetentionLimit, is kept)."""


def initial_swarm_spec(spec: dict[str, Any], heartbeat_period: float | None = None) -> dict[str, Any]:
    """The SwarmSpec of a new cluster: swarmkit's defaults, ``heartbeat_period`` (seconds) as
    ``Dispatcher.HeartbeatPeriod``, then the sections ``spec`` (from ``swarm init``) sets.
    Raises :class:`manager.specs.SpecError` (a ``ValueError``) for a bad spec."""
    swarm_spec = default_swarm_spec()
    if heartbeat_period is not None:
        swarm_spec["Dispatcher"]["HeartbeatPeriod"] = int(heartbeat_period * 1e9)
    if spec:
        # a null value keeps the default, and so does a zero where zero means "not set" (the
        # engine sanitizes an init request the same way): the docker CLI sends every section,
        # with Raft.ElectionTick and HeartbeatTick 0 when `swarm init` is not told them
        merged = copy.deepcopy(swarm_spec)
        for key, value in spec.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update({k: v for k, v in value.items()
                                    if v is not None and not (v == 0 and (key, k) in _ZERO_IS_DEFAULT)})
            elif value not in (None, {}, ""):
                merged[key] = value
        swarm_spec = validate_swarm_spec(merged)
    return swarm_spec


def network_config(pools: Any = None, subnet_size: Any = None, data_path_port: Any = None) -> dict[str, Any]:
    """The cluster's top-level network fields from ``swarm init`` (``InitRequest.DefaultAddrPool``,
    ``SubnetSize``, ``DataPathPort``; None, empty or 0 = the default)::

        {"DefaultAddrPool": ["10.0.0.0/8"], "SubnetSize": 24, "DataPathPort": 4789}

    Checked as Docker checks them: each pool an IPv4 CIDR, pools not overlapping, the subnet size
    between 8 and 29 (Docker's largest: 8 addresses) and no shorter than any pool's prefix, the
    port in 1024-49151. Raises ``ValueError`` (HTTP 400; the allocator's
    :class:`~manager.allocator.InvalidArgument` is one) naming the bad value."""
    if pools is None:
        pools = []
    if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
        raise ValueError("json: cannot unmarshal into Go struct field InitRequest.DefaultAddrPool of type []string")
    if subnet_size is None:
        subnet_size = 0
    if isinstance(subnet_size, bool) or not isinstance(subnet_size, int) or subnet_size < 0:
        raise ValueError(f"json: cannot unmarshal {subnet_size!r} into Go struct field InitRequest.SubnetSize "
                         "of type uint32")
    if subnet_size and subnet_size < MIN_SUBNET_SIZE:
        raise ValueError(f"subnet size is out of range: {subnet_size} (--default-addr-pool-mask-length: "
                         f"{MIN_SUBNET_SIZE} to 29)")
    got = parse_pools([p.strip() for p in pools], subnet_size or None)
    if data_path_port is None:
        data_path_port = 0
    if isinstance(data_path_port, bool) or not isinstance(data_path_port, int) or data_path_port < 0:
        raise ValueError(f"json: cannot unmarshal {data_path_port!r} into Go struct field InitRequest.DataPathPort "
                         "of type uint32")
    if data_path_port and not 1024 <= data_path_port <= 49151:
        raise ValueError(f"Datapath port number is not in valid range (1024-49151) : {data_path_port}")
    return {"DefaultAddrPool": [str(n) for n in got.networks], "SubnetSize": got.subnet_size,
            "DataPathPort": data_path_port or DEFAULT_DATA_PATH_PORT}


def split_addr(addr: str, default_port: int = 2377) -> tuple[str, int]:
    """``(host, port)`` of ``addr`` (``host:port``, or a bare port: ``(port, default_port)`` as
    the flags have always been read)."""
    host, _, port = addr.rpartition(":")
    if not host:
        return port, default_port
    return host, int(port)


async def init_cluster(data_dir: Path, certs_dir: Path, advertise_addr: str,
                       description: dict[str, Any], spec: dict[str, Any],
                       heartbeat_period: float | None = None, net_config: dict[str, Any] | None = None) -> str:
    """Create a new cluster on this node (``swarm init``): root CA, this node's manager
    certificate, and a Raft log whose only voter is this node, holding the cluster object (with
    ``net_config``, :func:`network_config`'s fields; None = the defaults), this node and the
    ``ingress`` network (swarmkit's: overlay, ``Ingress`` true, the first subnet of the default
    pools), all in the log's first entry. Returns the node ID.

    ``heartbeat_period`` (seconds; shoald's ``--heartbeat-period``) goes into the cluster spec's
    ``Dispatcher.HeartbeatPeriod`` unless ``spec`` sets one, so ``docker info`` shows the period in
    force. Raises ``ValueError`` (from spec validation) for a bad SwarmSpec; nothing is written then.
    """
    swarm_spec = initial_swarm_spec(spec, heartbeat_period)
    net = net_config if net_config is not None else network_config()
    ingress_spec = validate_create_request(ingress_request())
    private_dir(data_dir)
    ca = RootCA.create(certs_dir)
    node_id = new_id()
    cluster_id = new_id()
    ca.issue_node_files(certs_dir, node_id, "manager", cluster_id)
    rid = raft_id(node_id)
    rlog = ReplicatedLog(rid, {rid: advertise_addr}, Path(data_dir) / "raft", bootstrap=True,
                         config=raft_config(swarm_spec))
    store = Store(rlog, snapshot_interval=0)
    ip, _ = split_addr(advertise_addr)
    now = now_rfc3339()

    def fn(tx: WriteTx) -> None:
        tx.create("cluster", {
            "ID": cluster_id, "CreatedAt": now, "Spec": swarm_spec,
            "JoinTokens": ca.new_join_tokens(),
            "TLSInfo": {"TrustRoot": ca.cert_pem, "CertIssuerSubject": "", "CertIssuerPublicKey": ""},
            "RootRotationInProgress": False, **net,
        })
        node = make_node(node_id, "manager", description, ip, advertise_addr)
        node["ManagerStatus"] = {"Leader": True, "Reachability": "reachable", "Addr": advertise_addr}
        tx.create("nodes", node)
        add_network(tx, new_id(), ingress_spec)

    try:
        await rlog.start(listen=False)
        await store.update(fn)
    finally:
        await store.close()
    write_raft_spec(Path(data_dir), swarm_spec)
    return node_id
