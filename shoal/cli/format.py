"""Output formatting for the `shoal` CLI, matching the docker CLI's tables and wording.

Tables follow Go's ``text/tabwriter`` as docker/cli uses it (minwidth 0, padding 3, padded
with spaces; the last column is not padded). Durations follow go-units ``HumanDuration``
("Less than a second", "5 seconds", "About a minute", "3 hours", …). Sizes/durations parsed
from flags follow go-units ``RAMInBytes`` (binary units) and Go's ``time.ParseDuration``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import time
from collections.abc import Sequence
from typing import Any

from shoal.base.util import parse_size
from shoal.cli.modes_flags import replicas_text


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], padding: int = 3) -> str:
    """Return ``headers`` and ``rows`` as a tabwriter-style table (lines end with ``\\n``)."""
    all_rows = [list(headers)] + [[str(c) for c in r] for r in rows]
    ncol = max(len(r) for r in all_rows)
    widths = [0] * ncol
    for r in all_rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    lines = []
    for r in all_rows:
        cells = [c.ljust(widths[i] + padding) if i < len(r) - 1 else c for i, c in enumerate(r)]
        lines.append("".join(cells) + "\n")
    return "".join(lines)


def human_duration(seconds: float) -> str:
    """go-units HumanDuration: a human description of a duration in seconds."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def parse_time(ts: str) -> float | None:
    """Parse an RFC 3339 timestamp (nanoseconds allowed) into seconds since the epoch; None if bad."""
    if not ts:
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", ts)
    if not m:
        return None
    base = _dt.datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    frac = float("0" + m.group(2)) if m.group(2) else 0.0
    return base.timestamp() + frac


def ago(ts: str, now: float | None = None) -> str:
    """``"5 seconds ago"`` / ``"less than a second ago"`` for an RFC 3339 timestamp (empty string if
    unparseable): lowercased, as the docker CLI's task CURRENT STATE column
    (cli/command/task/formatter.go: ``strings.ToLower(units.HumanDuration(…)) + " ago"``)."""
    t = parse_time(ts)
    if t is None:
        return ""
    return human_duration(max(0.0, (now if now is not None else time.time()) - t)).lower() + " ago"


def cap(s: str) -> str:
    """Capitalise the first letter, as the docker CLI shows states (``running`` → ``Running``)."""
    return s[:1].upper() + s[1:] if s else s


def ellipsis(s: str, n: int) -> str:
    """Truncate ``s`` to ``n`` characters with a trailing ``…`` (docker formatter.Ellipsis)."""
    return s if len(s) <= n else s[: n - 1] + "…"


def short_id(i: str) -> str:
    """The first 12 characters of an ID (docker's stringid.TruncateID)."""
    return i[:12]


def image_name(img: str) -> str:
    """An image reference without its ``@sha256:`` pin, as ``service ls`` shows it."""
    return img.split("@", 1)[0]


def pretty_json(obj: Any) -> str:
    """JSON with 4-space indent, as ``docker inspect`` prints."""
    return json.dumps(obj, indent=4)


def parse_bytes(s: str) -> int:
    """go-units RAMInBytes: ``"64M"`` → 67108864, ``"1g"``, ``"512k"``, ``"100"``; binary units.

    Raises ValueError with the accepted form.
    """
    return parse_size(s, binary=True)


_DUR = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
        "h": 3_600_000_000_000}


def parse_duration(s: str) -> int:
    """Go ``time.ParseDuration`` into nanoseconds: ``"10s"``, ``"1m30s"``, ``"250ms"``, ``"0"``.

    Raises ValueError with the accepted form.
    """
    s = s.strip()
    if s == "0":
        return 0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", s)
    if not parts or "".join(a + b for a, b in parts) != s:
        raise ValueError(f"invalid duration {s!r}: use Go syntax such as 10s, 1m30s, 250ms")
    return int(sum(float(a) * _DUR[b] for a, b in parts))


def parse_cpus(s: str) -> int:
    """``"0.5"`` CPUs → 500000000 NanoCPUs. Raises ValueError for non-positive, infinite, NaN or
    non-numbers."""
    try:
        v = float(s)
    except ValueError:
        raise ValueError(f"invalid CPU count {s!r}: use a decimal number such as 0.5") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"invalid CPU count {s!r}: must be a finite number greater than 0")
    return int(round(v * 1e9))


def human_size(n: float) -> str:
    """go-units HumanSize (decimal, 4 significant digits): ``1.05MB``."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000.0
        i += 1
    return f"{n:.4g}{units[i]}"


# ---------------------------------------------------------------------------------- tables
def node_rows(nodes: list[dict[str, Any]], self_id: str = "") -> list[list[str]]:
    """Rows for ``node ls``: ID HOSTNAME STATUS AVAILABILITY MANAGER STATUS ENGINE VERSION."""
    rows = []
    for n in sorted(nodes, key=lambda n: n.get("Description", {}).get("Hostname", "")):
        ms = n.get("ManagerStatus") or {}
        mgr = "Leader" if ms.get("Leader") else cap(ms.get("Reachability", "")) if ms else ""
        rows.append([
            n["ID"] + (" *" if n["ID"] == self_id else ""),
            n.get("Description", {}).get("Hostname", ""),
            cap(n.get("Status", {}).get("State", "")),
            cap(n.get("Spec", {}).get("Availability", "")),
            mgr,
            n.get("Description", {}).get("Engine", {}).get("EngineVersion", ""),
        ])
    return rows


NODE_HEADERS = ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"]
SERVICE_HEADERS = ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
TASK_HEADERS = ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"]


NETWORK_HEADERS = ["NETWORK ID", "NAME", "DRIVER", "SCOPE"]


def network_rows(networks: list[dict[str, Any]], trunc: bool = True) -> list[list[str]]:
    """Rows for ``network ls``: NETWORK ID (12 characters unless ``trunc`` is false), NAME,
    DRIVER, SCOPE, sorted by name (docker/cli cli/command/network/list.go)."""
    return [[short_id(n.get("Id", "")) if trunc else n.get("Id", ""), n.get("Name", ""), n.get("Driver", ""),
             n.get("Scope", "")]
            for n in sorted(networks, key=lambda n: (n.get("Name", ""), n.get("Id", "")))]


def service_mode(spec: dict[str, Any]) -> str:
    """``replicated`` / ``global`` / ``replicated job`` / ``global job``."""
    mode = spec.get("Mode") or {}
    if "Global" in mode:
        return "global"
    if "ReplicatedJob" in mode:
        return "replicated job"
    if "GlobalJob" in mode:
        return "global job"
    return "replicated"


def _port_ranges(ports: list[dict[str, Any]]) -> list[str]:
    """docker/cli's PORTS text of ``ports`` (one publish mode): sorted by protocol then published
    port, consecutive published and target ports merged into ranges (``*:8080-8081->80-81/tcp``)."""
    out: list[str] = []
    cur: list[Any] | None = None  # [proto, p_start, p_end, t_start, t_end]

    def text(r: list[Any]) -> str:
        pub = f"{r[1]}-{r[2]}" if r[2] > r[1] else f"{r[1]}"
        tgt = f"{r[3]}-{r[4]}" if r[4] > r[3] else f"{r[3]}"
        return f"*:{pub}->{tgt}/{r[0]}"

    for p in sorted(ports, key=lambda p: (str(p.get("Protocol") or "tcp"), int(p.get("PublishedPort") or 0))):
        proto = str(p.get("Protocol") or "tcp")
        pub, tgt = int(p.get("PublishedPort") or 0), int(p.get("TargetPort") or 0)
        if cur is not None and proto == cur[0] and pub - cur[2] == 1 and tgt - cur[4] == 1 \
                and not (cur[4] != cur[3] and tgt <= cur[4]):
            cur[2], cur[4] = pub, tgt
            continue
        if cur is not None:
            out.append(text(cur))
        cur = [proto, pub, pub, tgt, tgt]
    if cur is not None:
        out.append(text(cur))
    return out


def ports(endpoint: dict[str, Any] | None) -> str:
    """The PORTS column of ``service ls``: ``*:8080->80/tcp`` for each published port, comma
    separated. Ingress-mode ports as docker/cli prints them (consecutive ports as one range); then,
    unlike docker/cli (which shows them in ``service ps`` only), the host-mode ports the same way."""
    published = [p for p in (endpoint or {}).get("Ports") or [] if p.get("PublishedPort")]
    ingress = [p for p in published if str(p.get("PublishMode") or "ingress") == "ingress"]
    host = [p for p in published if str(p.get("PublishMode") or "ingress") == "host"]
    return ", ".join(_port_ranges(ingress) + _port_ranges(host))


def task_ports(task: dict[str, Any]) -> str:
    """The PORTS column of ``service ps``: the host-mode ports of a running task (its
    ``Endpoint``), as docker/cli shows a task's published ports."""
    if (task.get("Status") or {}).get("State") != "running":
        return ""
    host = [p for p in (task.get("Endpoint") or {}).get("Ports") or []
            if p.get("PublishedPort") and str(p.get("PublishMode") or "ingress") == "host"]
    return ", ".join(_port_ranges(host))


def service_rows(services: list[dict[str, Any]], running: dict[str, int]) -> list[list[str]]:
    """Rows for ``service ls``. ``running`` maps service ID → running tasks (used when the
    daemon gave no ``ServiceStatus``)."""
    rows = []
    for s in sorted(services, key=lambda s: s["Spec"].get("Name", "")):
        spec = s["Spec"]
        st = s.get("ServiceStatus") or {}
        run_n = st.get("RunningTasks", running.get(s["ID"], 0))
        mode = service_mode(spec)
        if mode == "replicated":
            desired: Any = st.get("DesiredTasks", spec.get("Mode", {}).get("Replicated", {}).get("Replicas", 1))
        else:
            desired = st.get("DesiredTasks", "")
        rows.append([
            short_id(s["ID"]), spec.get("Name", ""), mode, replicas_text(s, run_n, desired),
            image_name(spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image", "")),
            ports(s.get("Endpoint")),
        ])
    return rows


def task_rows(tasks: list[dict[str, Any]], services: dict[str, dict[str, Any]],
              nodes: dict[str, dict[str, Any]], trunc: bool = True, now: float | None = None) -> list[list[str]]:
    """Rows for ``service ps``: the newest task of each slot first, older ones as ``\\_ name``."""
    def key(t: dict[str, Any]) -> tuple[str, int, str]:
        return (t.get("ServiceID", ""), int(t.get("Slot") or 0), t.get("NodeID", "") if not t.get("Slot") else "")

    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for t in tasks:
        groups.setdefault(key(t), []).append(t)
    rows = []
    for k in sorted(groups, key=lambda k: (services.get(k[0], {}).get("Spec", {}).get("Name", ""), k[1], k[2])):
        group = sorted(groups[k], key=lambda t: (t.get("CreatedAt", ""), t.get("ID", "")), reverse=True)
        for i, t in enumerate(group):
            svc = services.get(t.get("ServiceID", ""), {})
            sname = svc.get("Spec", {}).get("Name", short_id(t.get("ServiceID", "")))
            name = f"{sname}.{t['Slot']}" if t.get("Slot") else f"{sname}.{t.get('NodeID', '')}"
            if i > 0:
                name = r" \_ " + name
            st = t.get("Status") or {}
            err = st.get("Err", "")
            if err:
                err = json.dumps(ellipsis(err, 30) if trunc else err, ensure_ascii=False)
            # a node that is gone shows as its ID, as the docker CLI's resolver falls back to it
            node = nodes.get(t.get("NodeID", ""), {}).get("Description", {}).get("Hostname", "") \
                or str(t.get("NodeID") or "")
            image = t.get("Spec", {}).get("ContainerSpec", {}).get("Image", "")
            rows.append([
                short_id(t["ID"]) if trunc else t["ID"], name, image_name(image) if trunc else image, node,
                cap(t.get("DesiredState", "")), f"{cap(st.get('State', ''))} {ago(st.get('Timestamp', ''), now)}".strip(),
                err, task_ports(t),
            ])
    return rows
