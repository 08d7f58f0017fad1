"""Validation of a TaskSpec (``TaskTemplate``) and its ContainerSpec: image reference, mounts,
security options and limits, log driver, resources, restart policy and placement constraints."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, cast

from manager.specs.common import (
    SpecError,
    _int,
    _labels,
    _obj,
    _str_list,
    _uint,
    json_type,
    validate_network_attachments,
)
from manager.specs.health import validate_healthcheck
from shoal.base.containerrules import ULIMIT_NAMES, normalize_capability, parse_extra_host, sysctl_allowed
from shoal.base.logopts import LogOptError, check_driver, check_options

# distribution/reference grammar (github.com/distribution/reference regexp.go), simplified:
# [domain[:port]/]path-component(/path-component)*[:tag][@algorithm:hex]
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_REFERENCE_RE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}})?$"
)
_CONSTRAINT_KEY_RE = re.compile(r"[\w.\-]+")
_CONSTRAINT_OP_RE = re.compile(r"==|!=")


def _quoted(expr: str) -> str:
    """``expr`` quoted for an error message, cut at 100 characters."""
    return repr(expr if len(expr) <= 100 else expr[:100] + "…")


def parse_constraint(expr: str) -> tuple[str, str, str]:
    """Parse a placement constraint ``key==value`` / ``key!=value`` into (key, op, value).

    Keys (SK: manager/constraint/constraint.go): ``node.id``, ``node.hostname``, ``node.role``,
    ``node.ip`` (an address or a CIDR network), ``node.platform.os``, ``node.platform.arch``,
    ``node.labels.<k>``, ``engine.labels.<k>``. Raises :class:`SpecError` with swarmkit's words,
    followed by the expression at fault (a service may have several) and what to write instead.
    """
    if not isinstance(expr, str):
        raise SpecError("constraint must be a string")
    # split at the first operator (as swarmkit does), not with one backtracking regex: the form
    # ``^\s*(key)\s*(op)\s*(.*?)\s*$`` took cubic time on long runs of spaces
    m = _CONSTRAINT_OP_RE.search(expr)
    key = expr[:m.start()].strip() if m else ""
    value = expr[m.end():].strip() if m else ""
    if (m is None or not _CONSTRAINT_KEY_RE.fullmatch(key) or "\n" in value
            or value.startswith("=") or "==" in value or "!=" in value):
        raise SpecError(f"constraint expected one operator from ==, !=: {_quoted(expr)} is not of the form "
                        "KEY==VALUE or KEY!=VALUE (e.g. node.labels.zone==eu)")
    op = m.group()
    if not value:
        raise SpecError(f"constraint {_quoted(expr)}: value must not be empty")
    lk = key.lower()
    if not (
        lk in ("node.id", "node.hostname", "node.role", "node.ip", "node.platform.os", "node.platform.arch")
        or (lk.startswith("node.labels.") and len(lk) > len("node.labels."))
        or (lk.startswith("engine.labels.") and len(lk) > len("engine.labels."))
    ):
        raise SpecError(f"constraint key {key!r} is not supported (in {_quoted(expr)}): use node.id, "
                        "node.hostname, node.role, node.ip, node.platform.os, node.platform.arch, "
                        "node.labels.<label> or engine.labels.<label>")
    if lk == "node.ip":
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise SpecError(f"constraint {_quoted(expr)}: node.ip takes an IP address or a network in CIDR notation, "
                            "e.g. node.ip==10.0.0.5 or node.ip!=10.0.0.0/24") from None
    return key, op, value


MIN_NANO_CPUS = 1_000_000
"""The least CPU a limit or reservation may give, 0.001 CPU (SK: controlapi/service.go
``validateResources``)."""
MIN_MEMORY_BYTES = 4 * 1024 * 1024
"""The least memory a limit or reservation may give, 4 MiB (SK: controlapi/service.go)."""


def _validate_resources(v: Any) -> None:
    """``Resources.Limits`` / ``Resources.Reservations``: integers; not negative; a CPU or memory
    value that is set is at least :data:`MIN_NANO_CPUS` / :data:`MIN_MEMORY_BYTES` (swarmkit's
    messages). A reservation larger than every node is valid: the task waits, pending, saying
    ``insufficient resources on N nodes``."""
    res = _obj(v, "Resources")
    for part in ("Limits", "Reservations"):
        r = _obj(res.get(part), f"Resources.{part}")
        for f in ("NanoCPUs", "MemoryBytes", "Pids"):
            if r.get(f) is not None and _int(r[f], f"Resources.{part}.{f}") < 0:
                raise SpecError(f"TaskSpec: {part.lower()[:-1]} {f} cannot be negative")
        cpus, mem = r.get("NanoCPUs") or 0, r.get("MemoryBytes") or 0
        if 0 < cpus < MIN_NANO_CPUS:
            raise SpecError(f"invalid cpu value {cpus / 1e9:g}: Must be at least {MIN_NANO_CPUS / 1e9:g}")
        if 0 < mem < MIN_MEMORY_BYTES:
            raise SpecError(f"invalid memory value {mem}: Must be at least 4MiB")


SPREAD_PREFIXES = ("node.labels.", "engine.labels.")
"""What a spread preference may name (SK: manager/scheduler/nodeset.go ``tree``)."""


def validate_placement(v: Any) -> None:
    """``TaskSpec.Placement``: ``Constraints`` (each :func:`parse_constraint`), ``Preferences``
    (``[{"Spread": {"SpreadDescriptor": "node.labels.<label>" | "engine.labels.<label>"}}]``),
    ``MaxReplicas`` (uint64), ``Platforms`` (``[{"Architecture": str, "OS": str}]``). Raises :class:`SpecError` naming the bad
    entry. Swarm ignores a preference it cannot use; Shoal refuses it, so a typo does not
    silently leave a service unspread."""
    placement = _obj(v, "Placement")
    for c in _str_list(placement.get("Constraints"), "Placement.Constraints"):
        parse_constraint(c)
    prefs = placement.get("Preferences")
    if prefs is not None and not isinstance(prefs, list):
        raise SpecError(f"json: cannot unmarshal {json_type(prefs)} into Go struct field Placement.Preferences "
                        "of type []swarm.PlacementPreference")
    for p in prefs or []:
        if not isinstance(p, dict):
            raise SpecError(f"json: cannot unmarshal {json_type(p)} into Go struct field Placement.Preferences "
                            "of type swarm.PlacementPreference")
        spread = p.get("Spread")
        if not isinstance(spread, dict) or set(p) - {"Spread"}:
            raise SpecError(f"placement preference {json.dumps(p)[:100]} is not supported: only spread is "
                            "supported, as {\"Spread\": {\"SpreadDescriptor\": \"node.labels.<label>\"}}")
        desc = spread.get("SpreadDescriptor")
        if not isinstance(desc, str):
            raise SpecError(f"json: cannot unmarshal {json_type(desc)} into Go struct field "
                            "SpreadOver.SpreadDescriptor of type string")
        if not any(desc.lower().startswith(x) and len(desc) > len(x) for x in SPREAD_PREFIXES) \
                or not _CONSTRAINT_KEY_RE.fullmatch(desc):
            raise SpecError(f"invalid placement preference spread={desc[:100]}: the descriptor must be "
                            "node.labels.<label> or engine.labels.<label>")
    if placement.get("MaxReplicas") is not None:
        _uint(placement["MaxReplicas"], "Placement.MaxReplicas")
    platforms = placement.get("Platforms")
    if platforms is not None and not isinstance(platforms, list):
        raise SpecError(f"json: cannot unmarshal {json_type(platforms)} into Go struct field Placement.Platforms "
                        "of type []swarm.Platform")
    for pf in platforms or []:
        if not isinstance(pf, dict):
            raise SpecError(f"json: cannot unmarshal {json_type(pf)} into Go struct field Placement.Platforms "
                            "of type swarm.Platform")
        for key in ("Architecture", "OS"):
            if pf.get(key) is not None and not isinstance(pf[key], str):
                raise SpecError(f"json: cannot unmarshal {json_type(pf[key])} into Go struct field "
                                f"Platform.Placement.Platforms.{key} of type string")


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
        for i, v in enumerate(_str_list(cs.get(f), f"ContainerSpec.{f}")):
            if "\x00" in v:
                raise SpecError(f"ContainerSpec.{f}[{i}] contains a NUL byte, which no program can be "
                                "given (execve): remove it")
    for f in ("Dir", "User", "Hostname", "StopSignal"):
        if cs.get(f) is not None and not isinstance(cs[f], str):
            raise SpecError(f"json: cannot unmarshal into Go struct field ContainerSpec.{f} of type string")
        text = cs.get(f) or ""
        if "\x00" in text or (f != "Dir" and any(ord(c) < 0x20 or c == "\x7f" for c in text)):
            raise SpecError(f"ContainerSpec.{f} {text[:64]!r} contains a control character (NUL, newline …): "
                            f"give a {f.lower()} without one")
    if cs.get("StopGracePeriod") is not None and _int(cs["StopGracePeriod"], "ContainerSpec.StopGracePeriod") < 0:
        raise SpecError("ContainerSpec: stop grace period cannot be negative")
    _labels(cs.get("Labels"), "ContainerSpec.Labels")
    if cs.get("ReadOnly") is not None and not isinstance(cs["ReadOnly"], bool):
        raise SpecError("json: cannot unmarshal into Go struct field ContainerSpec.ReadOnly of type bool")
    _validate_mounts(cs.get("Mounts"))
    _refuse_unsupported_container_fields(cs)
    validate_healthcheck(cs)
    _validate_security_and_limits(cs)
    _validate_log_driver(ts.get("LogDriver"))
    if ts.get("Networks") is not None:
        ts["Networks"] = validate_network_attachments(ts["Networks"], "TaskSpec.Networks")
    _validate_resources(ts.get("Resources"))
    _validate_restart_policy(ts.get("RestartPolicy"))
    validate_placement(ts.get("Placement"))
    if ts.get("ForceUpdate") is not None:
        _uint(ts["ForceUpdate"], "TaskSpec.ForceUpdate")
    return cast(dict[str, Any], ts)

