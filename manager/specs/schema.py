"""Key canonicalisation of the specs clients send (Go's case-insensitive JSON field matching)."""

from __future__ import annotations

import copy
from typing import Any

# ---------------------------------------------------------------------------- key canonicalisation
# Docker decodes specs with Go's encoding/json, which matches object keys to struct fields
# case-insensitively (an exact match first; https://pkg.go.dev/encoding/json#Unmarshal). Clients
# rely on it: docker-py sends ``Mode: {"replicated": {"Replicas": 2}}``. The schema below lists the
# struct fields of the specs (MOBY: api/types/swarm/*.go); keys of a struct are rewritten to the
# field's canonical spelling, keys inside maps (Labels, Options, Sysctls …) and string values are
# left alone, and unknown keys are kept as they are (Go ignores them).

class _Map:
    """A JSON object whose keys are data (``map[string]…``): never canonicalised."""


class _List:
    """A JSON array whose items follow ``item``."""

    def __init__(self, item: Any) -> None:
        self.item = item


_Schema = Any  # dict[str, _Schema] (a struct: field -> schema) | _Map | _List | None (a leaf)
MAP = _Map()
_DRIVER = {"Name": None, "Options": MAP}
_RESOURCES = {"NanoCPUs": None, "MemoryBytes": None, "Pids": None, "GenericResources": None}
_UPDATE = {"Parallelism": None, "Delay": None, "FailureAction": None, "Monitor": None,
           "MaxFailureRatio": None, "Order": None}
_NET_ATTACH = _List({"Target": None, "Aliases": None, "DriverOpts": MAP})
_MOUNT = {
    "Type": None, "Source": None, "Target": None, "ReadOnly": None, "Consistency": None,
    "BindOptions": {"Propagation": None, "NonRecursive": None, "CreateMountpoint": None,
                    "ReadOnlyNonRecursive": None, "ReadOnlyForceRecursive": None},
    "VolumeOptions": {"NoCopy": None, "Labels": MAP, "DriverConfig": _DRIVER, "Subpath": None},
    "TmpfsOptions": {"SizeBytes": None, "Mode": None, "Options": None},
    "ImageOptions": {"Subpath": None},
}
_CONTAINER_SPEC = {
    "Image": None, "Labels": MAP, "Command": None, "Args": None, "Hostname": None, "Env": None,
    "Dir": None, "User": None, "Groups": None, "Privileges": None, "TTY": None, "OpenStdin": None,
    "ReadOnly": None, "Mounts": _List(_MOUNT), "StopSignal": None, "StopGracePeriod": None,
    "Healthcheck": {"Test": None, "Interval": None, "Timeout": None, "Retries": None,
                    "StartPeriod": None, "StartInterval": None},
    "Hosts": None, "DNSConfig": {"Nameservers": None, "Search": None, "Options": None},
    "Secrets": None, "Configs": None, "OomScoreAdj": None, "Isolation": None, "Init": None,
    "Sysctls": MAP, "CapabilityAdd": None, "CapabilityDrop": None,
    "Ulimits": _List({"Name": None, "Soft": None, "Hard": None}),
}
_TASK_SPEC = {
    "PluginSpec": None, "ContainerSpec": _CONTAINER_SPEC, "NetworkAttachmentSpec": None,
    "Resources": {"Limits": _RESOURCES, "Reservations": _RESOURCES, "SwapBytes": None,
                  "MemorySwappiness": None},
    "RestartPolicy": {"Condition": None, "Delay": None, "MaxAttempts": None, "Window": None},
    "Placement": {"Constraints": None, "Preferences": _List({"Spread": {"SpreadDescriptor": None}}),
                  "MaxReplicas": None,
                  "Platforms": _List({"Architecture": None, "OS": None})},
    "ForceUpdate": None, "Runtime": None, "Networks": _NET_ATTACH, "LogDriver": _DRIVER,
}
SERVICE_SPEC_SCHEMA: dict[str, _Schema] = {
    "Name": None, "Labels": MAP, "TaskTemplate": _TASK_SPEC,
    "Mode": {"Replicated": {"Replicas": None}, "Global": {},
             "ReplicatedJob": {"MaxConcurrent": None, "TotalCompletions": None}, "GlobalJob": {}},
    "UpdateConfig": _UPDATE, "RollbackConfig": _UPDATE, "Networks": _NET_ATTACH,
    "EndpointSpec": {"Mode": None, "Ports": _List({"Name": None, "Protocol": None, "TargetPort": None,
                                                   "PublishedPort": None, "PublishMode": None})},
}
NODE_SPEC_SCHEMA: dict[str, _Schema] = {"Name": None, "Labels": MAP, "Role": None, "Availability": None}
SWARM_SPEC_SCHEMA: dict[str, _Schema] = {
    "Name": None, "Labels": MAP,
    "Orchestration": {"TaskHistoryRetentionLimit": None},
    "Raft": {"SnapshotInterval": None, "KeepOldSnapshots": None, "LogEntriesForSlowFollowers": None,
             "ElectionTick": None, "HeartbeatTick": None},
    "Dispatcher": {"HeartbeatPeriod": None},
    "CAConfig": {"NodeCertExpiry": None, "ExternalCAs": None, "SigningCACert": None,
                 "SigningCAKey": None, "ForceRotate": None},
    "EncryptionConfig": {"AutoLockManagers": None},
    "TaskDefaults": {"LogDriver": _DRIVER},
}
NETWORK_CREATE_SCHEMA: dict[str, _Schema] = {
    "Name": None, "CheckDuplicate": None, "Driver": None, "Scope": None, "EnableIPv4": None,
    "EnableIPv6": None, "Internal": None, "Attachable": None, "Ingress": None, "ConfigOnly": None,
    "ConfigFrom": {"Network": None}, "Options": MAP, "Labels": MAP,
    "IPAM": {"Driver": None, "Options": MAP,
             "Config": _List({"Subnet": None, "IPRange": None, "Gateway": None, "AuxiliaryAddresses": MAP})},
}
"""The struct fields of Docker's ``NetworkCreateRequest`` (MOBY: api/types/network ``CreateRequest``)."""


def canonicalize_keys(value: Any, schema: _Schema) -> Any:
    """Return a copy of ``value`` with the keys of known struct fields spelled as in ``schema``
    (matched case-insensitively, as Go's encoding/json does; when two keys fold to the same field
    the later one wins, as in Go). Maps, unknown keys and non-object values are kept as they are."""
    if isinstance(schema, dict) and isinstance(value, dict):
        fields = {k.lower(): k for k in schema}
        out: dict[str, Any] = {}
        for k, v in value.items():
            canon = k if k in schema else fields.get(k.lower(), k) if isinstance(k, str) else k
            out[canon] = canonicalize_keys(v, schema.get(canon)) if canon in schema else copy.deepcopy(v)
        return out
    if isinstance(schema, _List) and isinstance(value, list):
        return [canonicalize_keys(x, schema.item) for x in value]
    return copy.deepcopy(value)

