"""Validation of a NodeSpec and of a SwarmSpec, and the SwarmSpec of a new cluster."""

from __future__ import annotations

import copy
from typing import Any, cast

from manager.specs.common import SECOND, SpecError, _check_int_ranges, _int, _labels, _obj, json_type
from manager.specs.schema import NODE_SPEC_SCHEMA, SWARM_SPEC_SCHEMA, canonicalize_keys


def validate_node_spec(spec: Any) -> dict[str, Any]:
    """Validate a NodeSpec {Name, Labels, Role worker|manager, Availability active|pause|drain};
    return a copy. Errors use moby's wording (MOBY: daemon/cluster/convert/node.go)."""
    if not isinstance(spec, dict):
        raise SpecError("node spec must be a JSON object")
    spec = canonicalize_keys(spec, NODE_SPEC_SCHEMA)
    _check_int_ranges(spec, "NodeSpec")
    _labels(spec.get("Labels"), "NodeSpec.Labels")
    role = spec.get("Role")
    if role not in ("worker", "manager"):
        raise SpecError(f"invalid Role: {role!r}")
    avail = spec.get("Availability")
    if avail not in ("active", "pause", "drain"):
        raise SpecError(f"invalid Availability: {avail!r}")
    if spec.get("Name") is not None and not isinstance(spec["Name"], str):
        raise SpecError("json: cannot unmarshal into Go struct field NodeSpec.Name of type string")
    return cast(dict[str, Any], spec)


def default_swarm_spec(name: str = "default") -> dict[str, Any]:
    """The SwarmSpec of a new cluster (swarmkit's defaults, SWARM-FACTS 1.3, 1.4, 1.6)."""
    return {
        "Name": name,
        "Labels": {},
        "Orchestration": {"TaskHistoryRetentionLimit": 5},
        "Raft": {"SnapshotInterval": 10000, "KeepOldSnapshots": 0, "LogEntriesForSlowFollowers": 500,
                 "ElectionTick": 10, "HeartbeatTick": 1},
        "Dispatcher": {"HeartbeatPeriod": 5 * SECOND},
        "CAConfig": {"NodeCertExpiry": 90 * 24 * 3600 * SECOND},
        "TaskDefaults": {},
        "EncryptionConfig": {"AutoLockManagers": False},
    }


def validate_swarm_spec(spec: Any) -> dict[str, Any]:
    """Validate a SwarmSpec for ``POST /swarm/update``; return a copy with missing sections
    taken from :func:`default_swarm_spec`. Raises :class:`SpecError`."""
    if not isinstance(spec, dict):
        raise SpecError("swarm spec must be a JSON object")
    spec = canonicalize_keys(spec, SWARM_SPEC_SCHEMA)
    _check_int_ranges(spec, "SwarmSpec")
    out = default_swarm_spec()
    for k, v in spec.items():
        if v is not None:
            out[k] = copy.deepcopy(v)
    if not isinstance(out.get("Name"), str):
        raise SpecError(f"json: cannot unmarshal {json_type(out.get('Name'))} into Go struct field "
                        "SwarmSpec.Name of type string")
    for section in ("TaskDefaults", "EncryptionConfig"):
        _obj(out.get(section), section)
    orch = _obj(out.get("Orchestration"), "Orchestration")
    if orch.get("TaskHistoryRetentionLimit") is not None:
        _int(orch["TaskHistoryRetentionLimit"], "OrchestrationConfig.TaskHistoryRetentionLimit")
    disp = _obj(out.get("Dispatcher"), "Dispatcher")
    hb = disp.get("HeartbeatPeriod")
    if hb is not None and _int(hb, "DispatcherConfig.HeartbeatPeriod") <= 0:
        raise SpecError("heartbeat period must be positive")
    ca = _obj(out.get("CAConfig"), "CAConfig")
    exp = ca.get("NodeCertExpiry")
    if exp is not None and _int(exp, "CAConfig.NodeCertExpiry") < 0:
        raise SpecError("node certificate expiry cannot be negative")
    raft = _obj(out.get("Raft"), "Raft")
    for field, low in (("SnapshotInterval", 1), ("KeepOldSnapshots", 0), ("LogEntriesForSlowFollowers", 0),
                       ("ElectionTick", 1), ("HeartbeatTick", 1)):
        v = raft.get(field)
        if v is not None and _int(v, f"RaftConfig.{field}") < low:
            raise SpecError(f"RaftConfig.{field} must be at least {low}, got {v}")
    et, ht = raft.get("ElectionTick"), raft.get("HeartbeatTick")
    if et is not None and ht is not None and et <= ht:
        raise SpecError(f"RaftConfig.ElectionTick ({et}) must be greater than RaftConfig.HeartbeatTick ({ht}): "
                        "a follower must hear several heartbeats within one election timeout")
    _labels(out.get("Labels"), "SwarmSpec.Labels")
    return out
