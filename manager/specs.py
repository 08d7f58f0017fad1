"""Validation and defaults for the specs users write: ServiceSpec, NodeSpec, SwarmSpec.

Shapes are the Docker Engine API's (MOBY: api/swagger.yaml `ServiceSpec`, `NodeSpec`,
`SwarmSpec`); defaults are swarmkit's (SK: api/defaults/service.go; SWARM-FACTS 1.5, 1.6).
Errors are :class:`SpecError` with the message swarmkit/moby would give; the API turns them
into HTTP 400 (``rpc error: code = InvalidArgument desc = <message>`` where swarmkit adds it).

The stored service spec is what the user sent (validated, with ``Mode`` and ``Name`` filled);
:func:`service_spec_with_defaults` adds the defaults for ``?insertDefaults=true`` and for the
task specs the orchestrator writes.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import secrets
from typing import Any, cast

from shoal.base.containerrules import ULIMIT_NAMES, normalize_capability, parse_extra_host, sysctl_allowed
from shoal.base.logopts import LogOptError, check_driver, check_options

__all__ = [
    "SpecError",
    "validate_service_spec",
    "service_spec_with_defaults",
    "task_spec_with_defaults",
    "validate_node_spec",
    "validate_swarm_spec",
    "default_swarm_spec",
    "parse_constraint",
    "canonicalize_keys",
    "SERVICE_SPEC_SCHEMA",
    "SECOND",
    "MAX_REPLICAS",
]

SECOND = 1_000_000_000  # nanoseconds, the API's duration unit
MAX_REPLICAS = 100_000
"""Most tasks a replicated service may ask for (``Mode.Replicated.Replicas``). Swarm takes any
uint64 and then tries to create that many tasks; Shoal keeps every task of a service in the
store, so it refuses more than this (split a larger workload over several services). The
orchestrator creates tasks in bounded batches (:data:`manager.orchestrator.MAX_TASK_WRITES_PER_PASS`),
so even the largest allowed scale-up never stalls the leader for long."""
INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1

DEFAULT_RESTART_POLICY: dict[str, Any] = {"Condition": "any", "Delay": 5 * SECOND, "MaxAttempts": 0, "Window": 0}
DEFAULT_STOP_GRACE_PERIOD = 10 * SECOND
DEFAULT_UPDATE_CONFIG: dict[str, Any] = {
    "Parallelism": 1,
    "Delay": 0,
    "FailureAction": "pause",
    "Monitor": 5 * SECOND,
    "MaxFailureRatio": 0,
    "Order": "stop-first",
}
DEFAULT_ROLLBACK_CONFIG: dict[str, Any] = dict(DEFAULT_UPDATE_CONFIG)

# swarmkit's controlapi validateAnnotations: a DNS label-like name, at most 63 characters:
# letters, digits, '-' and '_', starting and ending with a letter or digit. (Written without
# nested quantifiers: Python's backtracking engine took seconds — and 2^n steps — on a name like
# "aaaa…a!" with the form swarmkit uses, which Go's linear-time regexp runs safely.)
_NAME_RE = re.compile(r"[a-zA-Z0-9](?:[-_a-zA-Z0-9]*[a-zA-Z0-9])?")
# distribution/reference grammar (github.com/distribution/reference regexp.go), simplified:
# [domain[:port]/]path-component(/path-component)*[:tag][@algorithm:hex]
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_REFERENCE_RE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}})?$"
)
_CONSTRAINT_KEY_RE = re.compile(r"[\w.\-]+")
_CONSTRAINT_OP_RE = re.compile(r"==|!=")

_ADJ = ["admiring", "brave", "clever", "eager", "festive", "gallant", "happy", "jolly", "keen", "lucid",
        "nifty", "quirky", "serene", "sharp", "tender", "vibrant", "wizardly", "zealous"]
_NOUN = ["albattani", "bell", "curie", "darwin", "euclid", "fermi", "galileo", "hopper", "kepler",
         "lovelace", "meitner", "noether", "pasteur", "ritchie", "shannon", "turing", "wozniak", "yalow"]


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
    "HealthCheck": {"Test": None, "Interval": None, "Timeout": None, "Retries": None,
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
    "Placement": {"Constraints": None, "Preferences": None, "MaxReplicas": None,
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


NETWORKS_UNSUPPORTED = ("networks (TaskTemplate.Networks) are not supported by shoal yet: overlay networks "
                        "are not built; remove --network (tasks get an address on their node's bridge)")


class SpecError(ValueError):
    """A spec is invalid; ``str(e)`` says what is wrong (Docker's wording where it has one)."""


def _random_name() -> str:
    return f"{secrets.choice(_ADJ)}_{secrets.choice(_NOUN)}"


def _obj(v: Any, what: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise SpecError(f"{what} must be a JSON object, got {type(v).__name__}")
    return v


def _uint(v: Any, field: str, go_type: str = "uint64") -> int:
    """Check an unsigned integer field, with the error Go's JSON decoder gives Docker."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"json: cannot unmarshal {type(v).__name__} into Go struct field {field} of type {go_type}")
    limit = {"uint64": 2**64 - 1, "uint32": 2**32 - 1}.get(go_type, 2**64 - 1)
    if v < 0 or v > limit:
        raise SpecError(f"json: cannot unmarshal number {v} into Go struct field {field} of type {go_type}")
    return v


def _int(v: Any, field: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"json: cannot unmarshal {type(v).__name__} into Go struct field {field} of type int64")
    if not INT64_MIN <= v <= INT64_MAX:
        raise SpecError(f"json: cannot unmarshal number {v} into Go struct field {field} of type int64")
    return v


def _check_int_ranges(v: Any, path: str) -> None:
    """Reject any integer in ``v`` that no 64-bit Go field can hold (below int64's minimum or
    above uint64's maximum), with Go's JSON decoder message. Such numbers would be accepted by
    Python's json but cannot be stored (msgpack is 64-bit)."""
    if isinstance(v, bool):
        return
    if isinstance(v, int):
        if not INT64_MIN <= v <= UINT64_MAX:
            go_type = "int64" if v < 0 else "uint64"
            raise SpecError(f"json: cannot unmarshal number {v} into Go struct field {path} of type {go_type}")
    elif isinstance(v, dict):
        for k, x in v.items():
            _check_int_ranges(x, f"{path}.{k}")
    elif isinstance(v, list):
        for x in v:
            _check_int_ranges(x, path)


def _str_list(v: Any, field: str) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise SpecError(f"json: cannot unmarshal {type(v).__name__} into Go struct field {field} of type []string")
    return v


def _labels(v: Any, field: str) -> None:
    if v is None:
        return
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise SpecError(f"json: cannot unmarshal into Go struct field {field} of type map[string]string")


def validate_name(name: Any) -> None:
    """Raise :class:`SpecError` unless ``name`` is a valid object name (swarmkit rules)."""
    if not isinstance(name, str) or not name:
        raise SpecError("meta: name must be provided")
    if len(name) > 63 or not _NAME_RE.fullmatch(name):
        raise SpecError("name must be valid as a DNS name component")


def parse_constraint(expr: str) -> tuple[str, str, str]:
    """Parse a placement constraint ``key==value`` / ``key!=value`` into (key, op, value).

    Keys (SK: manager/constraint/constraint.go): ``node.id``, ``node.hostname``, ``node.role``,
    ``node.platform.os``, ``node.platform.arch``, ``node.labels.<k>``, ``engine.labels.<k>``.
    Raises :class:`SpecError` with swarmkit's messages.
    """
    if not isinstance(expr, str):
        raise SpecError("constraint must be a string")
    # split at the first operator (as swarmkit does), not with one backtracking regex: the form
    # ``^\s*(key)\s*(op)\s*(.*?)\s*$`` took cubic time on long runs of spaces
    m = _CONSTRAINT_OP_RE.search(expr)
    key = expr[:m.start()].strip() if m else ""
    value = expr[m.end():].strip() if m else ""
    if m is None or not _CONSTRAINT_KEY_RE.fullmatch(key) or "\n" in value:
        raise SpecError("constraint expected one operator from ==, !=")
    op = m.group()
    if not value:
        raise SpecError(f"constraint {expr!r}: value must not be empty")
    lk = key.lower()
    if not (
        lk in ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
        or lk.startswith("node.labels.")
        or lk.startswith("engine.labels.")
    ):
        raise SpecError(f"constraint key {key!r} is not supported: use node.id, node.hostname, node.role, "
                        "node.platform.os, node.platform.arch, node.labels.<label> or engine.labels.<label>")
    return key, op, value


def _validate_restart_policy(rp: Any) -> None:
    rp = _obj(rp, "RestartPolicy")
    cond = rp.get("Condition")
    if cond not in (None, "", "none", "on-failure", "any"):
        raise SpecError(f"invalid RestartCondition: {cond!r} (use none, on-failure or any)")
    for f in ("Delay", "Window"):
        if rp.get(f) is not None and _int(rp[f], f"TaskSpec.RestartPolicy.{f}") < 0:
            raise SpecError(f"TaskSpec: restart-{f.lower()} cannot be negative")
    if rp.get("MaxAttempts") is not None:
        _uint(rp["MaxAttempts"], "TaskSpec.RestartPolicy.MaxAttempts")


def _validate_update_config(uc: Any, name: str, actions: tuple[str, ...]) -> None:
    uc = _obj(uc, name)
    if uc.get("Parallelism") is not None:
        _uint(uc["Parallelism"], f"ServiceSpec.{name}.Parallelism")
    for f in ("Delay", "Monitor"):
        if uc.get(f) is not None and _int(uc[f], f"ServiceSpec.{name}.{f}") < 0:
            raise SpecError(f"{name}: {f.lower()} cannot be negative")
    fa = uc.get("FailureAction")
    if fa not in (None, "", *actions):
        raise SpecError(f"unrecognized {name}.FailureAction {fa!r} (use {', '.join(actions)})")
    order = uc.get("Order")
    if order not in (None, "", "stop-first", "start-first"):
        raise SpecError(f"unrecognized {name}.Order {order!r} (use stop-first or start-first)")
    ratio = uc.get("MaxFailureRatio")
    if ratio is not None and (not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1):
        raise SpecError(f"{name}: max failure ratio must be between 0 and 1")


_PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")


def _validate_mounts(mounts: Any) -> None:
    """Check ``ContainerSpec.Mounts``: ``bind`` (absolute Source and Target; BindOptions.Propagation
    one of private|rprivate|shared|rshared|slave|rslave) and ``tmpfs`` (no Source; TmpfsOptions
    SizeBytes ≥ 0, Mode a permission mode) are supported; other types are refused. Messages follow
    moby's (MOBY: daemon/cluster/executor/container/validate.go) and swarmkit's duplicate check."""
    if mounts is None:
        return
    if not isinstance(mounts, list):
        raise SpecError("json: cannot unmarshal into Go struct field ContainerSpec.Mounts of type []mount.Mount")
    targets: set[str] = set()
    for m in mounts:
        m = _obj(m, "ContainerSpec.Mounts[]")
        mtype = m.get("Type")
        target = m.get("Target")
        if not isinstance(target, str) or not target.startswith("/"):
            raise SpecError(f"invalid mount target, must be an absolute path: {target or ''}")
        if target in targets:
            raise SpecError(f"invalid duplicate mount point: {target}")
        targets.add(target)
        if m.get("ReadOnly") is not None and not isinstance(m["ReadOnly"], bool):
            raise SpecError("json: cannot unmarshal into Go struct field Mount.ReadOnly of type bool")
        if mtype == "bind":
            source = m.get("Source")
            if not source:
                raise SpecError("invalid bind mount source, source is required")
            if not isinstance(source, str) or not source.startswith("/"):
                raise SpecError(f"invalid bind mount source, must be an absolute path: {source}")
            bo = _obj(m.get("BindOptions"), "Mount.BindOptions")
            prop = bo.get("Propagation")
            if prop not in (None, "", *_PROPAGATIONS):
                raise SpecError(f"invalid propagation mode {prop!r} for bind mount {target}: "
                                f"use one of {', '.join(_PROPAGATIONS)}")
            if bo.get("ReadOnlyForceRecursive"):
                raise SpecError("BindOptions.ReadOnlyForceRecursive is not supported by shoal yet: "
                                "leave it unset (read-only bind mounts are read-only at their top level)")
            for other in ("VolumeOptions", "TmpfsOptions"):
                if m.get(other):
                    raise SpecError(f"{other} must not be specified on mount type \"bind\"")
        elif mtype == "tmpfs":
            if m.get("Source"):
                raise SpecError("invalid tmpfs source, source must be empty")
            to = _obj(m.get("TmpfsOptions"), "Mount.TmpfsOptions")
            if to.get("SizeBytes") is not None and _int(to["SizeBytes"], "TmpfsOptions.SizeBytes") < 0:
                raise SpecError(f"invalid tmpfs size {to['SizeBytes']} for {target}: must not be negative")
            if to.get("Mode") is not None and _uint(to["Mode"], "TmpfsOptions.Mode", "uint32") > 0o7777:
                raise SpecError(f"invalid tmpfs mode {to['Mode']:o} for {target}: use permission bits (e.g. 1777 octal)")
            if to.get("Options"):
                raise SpecError("TmpfsOptions.Options is not supported by shoal yet: use SizeBytes and Mode")
            for other in ("VolumeOptions", "BindOptions"):
                if m.get(other):
                    raise SpecError(f"{other} must not be specified on mount type \"tmpfs\"")
        elif mtype in ("volume", "npipe", "cluster", "image"):
            raise SpecError(f"mount type {mtype!r} (for {target}) is not supported by shoal yet: "
                            "use a bind mount of a host directory (Type: bind) or a tmpfs mount")
        else:
            raise SpecError(f"invalid mount type: {mtype!r} (for {target}); use bind or tmpfs")


def _refuse_unsupported_container_fields(cs: dict[str, Any]) -> None:
    """Refuse ContainerSpec fields shoal would otherwise silently ignore."""
    hc = cs.get("HealthCheck")
    if hc:
        hc = _obj(hc, "ContainerSpec.HealthCheck")
        if hc.get("Test") != ["NONE"] and any(v not in (None, 0, [], "") for v in hc.values()):
            raise SpecError("ContainerSpec.HealthCheck is not supported by shoal yet: remove the --health-* "
                            "options (or disable it with --no-healthcheck, Test [\"NONE\"])")
    for f, what in (("Secrets", "secrets"), ("Configs", "configs")):
        if cs.get(f):
            raise SpecError(f"ContainerSpec.{f} ({what}) are not supported by shoal yet: remove --{what[:-1]} "
                            "and pass the data another way (e.g. a bind mount or environment variables)")


def _falsy_tree(v: Any) -> bool:
    """True when ``v`` holds only zero values (Go's zero-value structs that clients send as-is)."""
    if isinstance(v, dict):
        return all(_falsy_tree(x) for x in v.values())
    if isinstance(v, list):
        return all(_falsy_tree(x) for x in v)
    return not v


def _validate_security_and_limits(cs: dict[str, Any]) -> None:
    """Validate the ContainerSpec fields the runtime applies (capabilities, ulimits, sysctls, groups,
    DNSConfig, Hosts, OomScoreAdj) and refuse those Shoal cannot honour (Init, TTY, OpenStdin,
    Privileges other than zero values, Isolation other than default), so nothing is silently ignored.
    Sources: MOBY api/types/swarm/container.go, opts/opts.go ValidateSysctl, go-units ulimit.go."""
    for f in ("CapabilityAdd", "CapabilityDrop"):
        for c in _str_list(cs.get(f), f"ContainerSpec.{f}"):
            try:
                normalize_capability(c)
            except ValueError as e:
                raise SpecError(f"ContainerSpec.{f}: {e}") from None
    ulimits = cs.get("Ulimits")
    if ulimits is not None and not isinstance(ulimits, list):
        raise SpecError("json: cannot unmarshal into Go struct field ContainerSpec.Ulimits of type []*units.Ulimit")
    seen: set[str] = set()
    for u in ulimits or []:
        u = _obj(u, "ContainerSpec.Ulimits item")
        name = u.get("Name")
        if not isinstance(name, str) or name.lower() not in ULIMIT_NAMES:
            raise SpecError(f"invalid ulimit type: {name!r} (use one of {', '.join(ULIMIT_NAMES)})")
        if name.lower() in seen:
            raise SpecError(f"duplicate ulimit {name!r}: give each ulimit once")
        seen.add(name.lower())
        soft, hard = (_int(u.get(k, 0), f"Ulimit.{k}") for k in ("Soft", "Hard"))
        if soft < -1 or hard < -1:
            raise SpecError(f"invalid ulimit {name}: limits must not be negative (-1 means unlimited)")
        if (hard != -1 and (soft == -1 or soft > hard)):
            raise SpecError(f"ulimit {name}: soft limit {soft} must be less than or equal to hard limit {hard}")
    sysctls = cs.get("Sysctls")
    _labels(sysctls, "ContainerSpec.Sysctls")
    for key in sysctls or {}:
        if not sysctl_allowed(key):
            raise SpecError(f"sysctl {key!r} is not allowed in a container: only namespaced sysctls can be set "
                            "(net.*, kernel.msgmax, kernel.msgmnb, kernel.msgmni, kernel.sem, kernel.shmall, "
                            "kernel.shmmax, kernel.shmmni, kernel.shm_rmid_forced, fs.mqueue.*)")
    _str_list(cs.get("Groups"), "ContainerSpec.Groups")
    dns = _obj(cs.get("DNSConfig"), "ContainerSpec.DNSConfig")
    for ns in _str_list(dns.get("Nameservers"), "DNSConfig.Nameservers"):
        try:
            ipaddress.ip_address(ns)
        except ValueError:
            raise SpecError(f"invalid DNSConfig.Nameservers entry {ns!r}: must be an IP address") from None
    _str_list(dns.get("Search"), "DNSConfig.Search")
    _str_list(dns.get("Options"), "DNSConfig.Options")
    for h in _str_list(cs.get("Hosts"), "ContainerSpec.Hosts"):
        try:
            parse_extra_host(h)
        except ValueError as e:
            raise SpecError(f"ContainerSpec.Hosts: {e}") from None
    if cs.get("OomScoreAdj") is not None:
        adj = _int(cs["OomScoreAdj"], "ContainerSpec.OomScoreAdj")
        if not -1000 <= adj <= 1000:
            raise SpecError(f"invalid OomScoreAdj {adj}: must be between -1000 and 1000")
    if cs.get("Init"):
        raise SpecError("ContainerSpec.Init (--init) is not supported by shoal yet: remove it, or run a "
                        "reaping init such as tini as the image's entrypoint")
    for f in ("TTY", "OpenStdin"):
        if cs.get(f):
            raise SpecError(f"ContainerSpec.{f} is not supported by shoal yet (no terminals or stdin): "
                            "remove --tty/--interactive")
    priv = _obj(cs.get("Privileges"), "ContainerSpec.Privileges")
    for f in ("CredentialSpec", "SELinuxContext"):
        if not _falsy_tree(priv.get(f)):
            raise SpecError(f"ContainerSpec.Privileges.{f} is not supported by shoal: remove it")
    for f in ("Seccomp", "AppArmor"):
        v = priv.get(f)
        if not _falsy_tree(v) and not (isinstance(v, dict) and v.get("Mode") == "default"
                                       and _falsy_tree({k: x for k, x in v.items() if k != "Mode"})):
            raise SpecError(f"ContainerSpec.Privileges.{f} profiles are not supported by shoal (no "
                            f"{f.lower()} support): remove it (Mode \"default\" is accepted)")
    iso = cs.get("Isolation")
    if iso not in (None, "", "default"):
        raise SpecError(f"invalid Isolation {iso!r}: shoal runs Linux containers only, use \"default\"")


def _validate_log_driver(ld: Any) -> None:
    """``TaskTemplate.LogDriver`` ``{"Name": "json-file" | "", "Options": {"max-size", "max-file"}}``
    (what ``docker service create --log-driver json-file --log-opt max-size=1m`` sends): any other
    driver, an unknown option or a bad value is refused (shoal.base.logopts)."""
    ld = _obj(ld, "TaskTemplate.LogDriver")
    try:
        check_driver(ld.get("Name"))
        check_options(ld.get("Options"))
    except LogOptError as e:
        raise SpecError(f"TaskTemplate.LogDriver: {e}") from None


def validate_task_spec(ts: Any) -> dict[str, Any]:
    """Validate a TaskSpec (``TaskTemplate``); return it. Raises :class:`SpecError`."""
    ts = _obj(ts, "TaskTemplate")
    if ts.get("PluginSpec") is not None or ts.get("NetworkAttachmentSpec") is not None:
        raise SpecError("TaskSpec: only ContainerSpec tasks are supported by shoal")
    cs = ts.get("ContainerSpec")
    if cs is None:
        raise SpecError("TaskSpec: missing runtime")
    cs = _obj(cs, "ContainerSpec")
    image = cs.get("Image")
    if not isinstance(image, str) or not image.strip():
        raise SpecError("ContainerSpec: image reference must be provided")
    if not _REFERENCE_RE.match(image):
        raise SpecError(f"ContainerSpec: {image!r} is not a valid repository/tag")
    for f in ("Command", "Args", "Env"):
        _str_list(cs.get(f), f"ContainerSpec.{f}")
    for f in ("Dir", "User", "Hostname", "StopSignal"):
        if cs.get(f) is not None and not isinstance(cs[f], str):
            raise SpecError(f"json: cannot unmarshal into Go struct field ContainerSpec.{f} of type string")
    if cs.get("StopGracePeriod") is not None and _int(cs["StopGracePeriod"], "ContainerSpec.StopGracePeriod") < 0:
        raise SpecError("ContainerSpec: stop grace period cannot be negative")
    _labels(cs.get("Labels"), "ContainerSpec.Labels")
    if cs.get("ReadOnly") is not None and not isinstance(cs["ReadOnly"], bool):
        raise SpecError("json: cannot unmarshal into Go struct field ContainerSpec.ReadOnly of type bool")
    _validate_mounts(cs.get("Mounts"))
    _refuse_unsupported_container_fields(cs)
    _validate_security_and_limits(cs)
    _validate_log_driver(ts.get("LogDriver"))
    if ts.get("Networks"):
        raise SpecError(NETWORKS_UNSUPPORTED)
    res = _obj(ts.get("Resources"), "Resources")
    for part in ("Limits", "Reservations"):
        r = _obj(res.get(part), f"Resources.{part}")
        for f in ("NanoCPUs", "MemoryBytes", "Pids"):
            if r.get(f) is not None and _int(r[f], f"Resources.{part}.{f}") < 0:
                raise SpecError(f"TaskSpec: {part.lower()[:-1]} {f} cannot be negative")
    _validate_restart_policy(ts.get("RestartPolicy"))
    placement = _obj(ts.get("Placement"), "Placement")
    for c in _str_list(placement.get("Constraints"), "Placement.Constraints"):
        parse_constraint(c)
    if placement.get("MaxReplicas") is not None:
        _uint(placement["MaxReplicas"], "Placement.MaxReplicas")
    if ts.get("ForceUpdate") is not None:
        _uint(ts["ForceUpdate"], "TaskSpec.ForceUpdate")
    return cast(dict[str, Any], ts)


def validate_service_spec(spec: Any) -> dict[str, Any]:
    """Validate a ServiceSpec and return a normalised deep copy: ``Name`` filled (a random
    ``adjective_name`` like Docker's when empty), ``Mode`` defaulted to ``Replicated`` with
    ``Replicas`` 1. Other defaults are not written into the stored spec (Docker keeps them
    out too; see :func:`service_spec_with_defaults`). Raises :class:`SpecError`.
    """
    if not isinstance(spec, dict):
        raise SpecError("service spec must be a JSON object")
    spec = canonicalize_keys(spec, SERVICE_SPEC_SCHEMA)
    _check_int_ranges(spec, "ServiceSpec")
    if not spec.get("Name"):
        spec["Name"] = _random_name()
    validate_name(spec["Name"])
    _labels(spec.get("Labels"), "ServiceSpec.Labels")
    spec["TaskTemplate"] = validate_task_spec(spec.get("TaskTemplate"))
    mode = spec.get("Mode")
    if not mode:
        spec["Mode"] = {"Replicated": {"Replicas": 1}}
    else:
        mode = _obj(mode, "Mode")
        kinds = [k for k in ("Replicated", "Global", "ReplicatedJob", "GlobalJob") if k in mode]
        if len(kinds) > 1:
            raise SpecError("service mode must be exactly one of Replicated, Global, ReplicatedJob, GlobalJob")
        if not kinds:
            raise SpecError(f"unrecognized service mode {sorted(mode)!r}: use Replicated")
        if kinds[0] != "Replicated":
            raise SpecError(f"service mode {kinds[0]} is not supported by shoal yet: use Replicated")
        rep = _obj(mode["Replicated"], "Mode.Replicated")
        if rep.get("Replicas") is None:
            rep["Replicas"] = 1
        replicas = _uint(rep["Replicas"], "ServiceSpec.Mode.Replicated.Replicas")
        if replicas > MAX_REPLICAS:
            raise SpecError(f"Replicas {replicas} is over the limit of {MAX_REPLICAS} tasks per service: ask for "
                            f"at most {MAX_REPLICAS}, or split the workload over several services")
        mode["Replicated"] = rep
    _validate_update_config(spec.get("UpdateConfig"), "UpdateConfig", ("continue", "pause", "rollback"))
    _validate_update_config(spec.get("RollbackConfig"), "RollbackConfig", ("continue", "pause"))
    ep = _obj(spec.get("EndpointSpec"), "EndpointSpec")
    if ep.get("Mode") not in (None, "", "vip", "dnsrr"):
        raise SpecError(f"invalid endpoint mode {ep.get('Mode')!r} (use vip or dnsrr)")
    ports = ep.get("Ports")
    if ports is not None and not isinstance(ports, list):
        raise SpecError("json: cannot unmarshal into Go struct field EndpointSpec.Ports of type []swarm.PortConfig")
    for p in ports or []:
        p = _obj(p, "EndpointSpec.Ports[]")
        if p.get("TargetPort") is not None:
            t = _uint(p["TargetPort"], "PortConfig.TargetPort", "uint32")
            if t > 65535:
                raise SpecError(f"invalid target port {t}")
    if ep.get("Ports"):
        raise SpecError("EndpointSpec.Ports (published ports) are not supported by shoal yet: they need the "
                        "routing mesh, which is not built; remove --publish and reach the service's tasks "
                        "on their container addresses")
    if spec.get("Networks"):
        raise SpecError(NETWORKS_UNSUPPORTED)
    return cast(dict[str, Any], spec)


def task_spec_with_defaults(ts: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of TaskSpec ``ts`` with swarmkit's defaults filled in (RestartPolicy,
    ContainerSpec.StopGracePeriod, Resources, Placement)."""
    ts = copy.deepcopy(ts)
    rp = dict(DEFAULT_RESTART_POLICY)
    rp.update({k: v for k, v in (ts.get("RestartPolicy") or {}).items() if v is not None and v != ""})
    ts["RestartPolicy"] = rp
    cs = ts.setdefault("ContainerSpec", {})
    if cs.get("StopGracePeriod") is None:
        cs["StopGracePeriod"] = DEFAULT_STOP_GRACE_PERIOD
    ts.setdefault("Resources", {"Limits": {}, "Reservations": {}})
    ts.setdefault("Placement", {})
    ts.setdefault("ForceUpdate", 0)
    return ts


def service_spec_with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a validated ServiceSpec with swarmkit's defaults (for
    ``GET /services/{id}?insertDefaults=true``)."""
    spec = copy.deepcopy(spec)
    spec["TaskTemplate"] = task_spec_with_defaults(spec.get("TaskTemplate") or {})
    for key, default in (("UpdateConfig", DEFAULT_UPDATE_CONFIG), ("RollbackConfig", DEFAULT_ROLLBACK_CONFIG)):
        merged = dict(default)
        merged.update({k: v for k, v in (spec.get(key) or {}).items() if v is not None and v != ""})
        spec[key] = merged
    if not isinstance(spec.get("EndpointSpec"), dict):  # missing or null
        spec["EndpointSpec"] = {"Mode": "vip"}
    if not spec["EndpointSpec"].get("Mode"):
        spec["EndpointSpec"]["Mode"] = "vip"
    return spec


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
        raise SpecError(f"json: cannot unmarshal {type(out.get('Name')).__name__} into Go struct field "
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
