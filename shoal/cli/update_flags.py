"""Rolling update, rollback and restart policy flags of ``shoal service create|update``, the other
``service update`` flags of the docker CLI (``--env-add/-rm``, ``--label-add/-rm``,
``--limit-*``, ``--rollback``), ``shoal service rollback``, ``shoal node rm|ps`` and
``shoal swarm update``.

Names and meanings are the docker CLI's (docker/cli v28 ``cli/command/service/opts.go``,
``update.go``, ``rollback.go``, ``node/remove.go``, ``node/ps.go``, ``swarm/update.go``):

    --update-parallelism N        UpdateConfig.Parallelism (0: all at once)
    --update-delay DURATION       UpdateConfig.Delay (ns)
    --update-failure-action A     UpdateConfig.FailureAction: pause | continue | rollback
    --update-monitor DURATION     UpdateConfig.Monitor (ns)
    --update-max-failure-ratio F  UpdateConfig.MaxFailureRatio (0..1)
    --update-order O              UpdateConfig.Order: start-first | stop-first
    --rollback-*                  the same into RollbackConfig (failure action pause | continue)
    --restart-condition C         TaskTemplate.RestartPolicy.Condition: none | on-failure | any
    --restart-delay / --restart-window DURATION, --restart-max-attempts N

When one flag of a group is given, the group is written whole: the service's current values
(``service update``) or Swarm's defaults (``service create``; SWARM-FACTS 1.5), then the flags
given, as the docker CLI does. Durations use Go's syntax (``2s``, ``1m30s``); a negative or
malformed value is an argparse error (exit 2) naming the flag.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from typing import Any, TextIO

from shoal.cli import format as fmt
from shoal.cli.client import APIError, Client

SECOND = 1_000_000_000
DEFAULT_UPDATE_CONFIG: dict[str, Any] = {"Parallelism": 1, "Delay": 0, "FailureAction": "pause",
                                         "Monitor": 5 * SECOND, "MaxFailureRatio": 0, "Order": "stop-first"}
"""Swarm's UpdateConfig (and RollbackConfig) defaults (SK: api/defaults)."""
DEFAULT_RESTART_POLICY: dict[str, Any] = {"Condition": "any", "Delay": 5 * SECOND, "MaxAttempts": 0, "Window": 0}
"""Swarm's RestartPolicy defaults."""

_FIELDS = (("parallelism", "Parallelism"), ("delay", "Delay"), ("failure_action", "FailureAction"),
           ("monitor", "Monitor"), ("max_failure_ratio", "MaxFailureRatio"), ("order", "Order"))
_RESTART = (("restart_condition", "Condition"), ("restart_delay", "Delay"),
            ("restart_max_attempts", "MaxAttempts"), ("restart_window", "Window"))


# ------------------------------------------------------------------------------ flag value types
def uint_arg(text: str) -> int:
    """A non-negative integer flag value (Go's uint64). Raises ArgumentTypeError."""
    try:
        v = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: use a whole number, e.g. 2") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be 0 or more")
    return v


def duration_arg(text: str) -> int:
    """A Go duration (``2s``, ``1m30s``, ``0``) → nanoseconds. Raises ArgumentTypeError (negative
    or malformed)."""
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must not be negative")
    try:
        return fmt.parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def ratio_arg(text: str) -> float:
    """A failure ratio between 0 and 1 (Go's float32). Raises ArgumentTypeError."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid ratio {text!r}: use a number between 0 and 1, e.g. 0.2") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"invalid ratio {text!r}: must be between 0 and 1")
    return v


# ------------------------------------------------------------------------------ parsers
def add_policy_args(p: argparse.ArgumentParser, create: bool) -> None:
    """Add ``--update-*``, ``--rollback-*`` and the restart policy flags to ``p`` (``service
    create`` already has ``--restart-condition/-delay/-max-attempts``: ``create`` adds only
    ``--restart-window`` of those)."""
    for group, actions in (("update", ("pause", "continue", "rollback")), ("rollback", ("pause", "continue"))):
        what = "updated" if group == "update" else "rolled back"
        p.add_argument(f"--{group}-parallelism", type=uint_arg, default=None, metavar="N",
                       help=f"tasks {what} at once (0: all at once; default 1)")
        p.add_argument(f"--{group}-delay", type=duration_arg, default=None, metavar="DURATION",
                       help=f"wait after each batch is {what} (default 0s)")
        p.add_argument(f"--{group}-failure-action", choices=list(actions), default=None,
                       help="what to do when tasks fail (default pause)")
        p.add_argument(f"--{group}-monitor", type=duration_arg, default=None, metavar="DURATION",
                       help="how long after each task's start a failure counts (default 5s)")
        p.add_argument(f"--{group}-max-failure-ratio", type=ratio_arg, default=None, metavar="RATIO",
                       help="failure rate tolerated, 0..1 (default 0)")
        p.add_argument(f"--{group}-order", choices=["start-first", "stop-first"], default=None,
                       help="stop the old task first, or start the new one first (default stop-first)")
    if not create:
        p.add_argument("--restart-condition", choices=["none", "on-failure", "any"], default=None)
        p.add_argument("--restart-delay", type=duration_arg, default=None, metavar="DURATION")
        p.add_argument("--restart-max-attempts", type=uint_arg, default=None, metavar="N")
    p.add_argument("--restart-window", type=duration_arg, default=None, metavar="DURATION",
                   help="window used to evaluate the restart policy (default unbounded)")


def add_update_args(p: argparse.ArgumentParser) -> None:
    """The ``service update`` flags beyond the policies: ``--rollback``, ``--env-add/-rm``,
    ``--label-add/-rm`` (service labels), ``--limit-cpu/-memory/-pids``, and the policies
    (:func:`add_policy_args`)."""
    p.add_argument("--rollback", action="store_true", help="roll back to the previous specification")
    p.add_argument("--env-add", action="append", metavar="KEY=VALUE", help="add or change an environment variable")
    p.add_argument("--env-rm", action="append", metavar="KEY", help="remove an environment variable")
    p.add_argument("--label-add", action="append", metavar="KEY=VALUE", help="add or change a service label")
    p.add_argument("--label-rm", action="append", metavar="KEY", help="remove a service label")
    p.add_argument("--limit-cpu", default="", metavar="CPUS", help="e.g. 0.5")
    p.add_argument("--limit-memory", default="", metavar="BYTES", help="e.g. 64M")
    p.add_argument("--limit-pids", type=uint_arg, default=None, metavar="N", help="0: unlimited")
    add_policy_args(p, create=False)


# ------------------------------------------------------------------------------ spec building
def _config(current: Any, a: argparse.Namespace, group: str) -> dict[str, Any] | None:
    given = {key: getattr(a, f"{group}_{attr}", None) for attr, key in _FIELDS}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return None
    out = dict(DEFAULT_UPDATE_CONFIG)
    if isinstance(current, dict):
        out.update({k: v for k, v in current.items() if v is not None})
    out.update(given)
    return out


def apply_policies(spec: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """Write the ``--update-*`` / ``--rollback-*`` / ``--restart-*`` flags of ``a`` into ServiceSpec
    ``spec`` (changed in place and returned): ``UpdateConfig``, ``RollbackConfig``,
    ``TaskTemplate.RestartPolicy``. Durations are in ns. A group none of whose flags is given
    is left as it is."""
    for group, key in (("update", "UpdateConfig"), ("rollback", "RollbackConfig")):
        cfg = _config(spec.get(key), a, group)
        if cfg is not None:
            spec[key] = cfg
    given = {key: getattr(a, attr, None) for attr, key in _RESTART}
    given = {k: v for k, v in given.items() if v is not None and v != ""}
    if given:
        delay = given.get("Delay")
        if isinstance(delay, str):  # service create's --restart-delay is a string
            given["Delay"] = fmt.parse_duration(delay)
        task = spec.setdefault("TaskTemplate", {})
        rp = dict(DEFAULT_RESTART_POLICY)
        rp.update({k: v for k, v in (task.get("RestartPolicy") or {}).items() if v is not None})
        rp.update(given)
        task["RestartPolicy"] = rp
    return spec


def _env_key(entry: str) -> str:
    return entry.partition("=")[0]


def merge_limits(base: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """``Resources.Limits`` = ``base`` with ``--limit-cpu`` (``NanoCPUs``), ``--limit-memory``
    (bytes) and ``--limit-pids`` (count) applied when given; a new dict. Raises
    :class:`ValueError` on a malformed CPU count or size (the parsers' errors)."""
    limits = dict(base)
    if a.limit_cpu:
        limits["NanoCPUs"] = fmt.parse_cpus(a.limit_cpu)
    if a.limit_memory:
        limits["MemoryBytes"] = fmt.parse_bytes(a.limit_memory)
    if a.limit_pids is not None:
        limits["Pids"] = a.limit_pids
    return limits


def apply_update_extras(spec: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """``--env-add`` (``KEY=VALUE`` replaces ``KEY``; a bare ``KEY`` takes this shell's value, as
    the docker CLI), ``--env-rm KEY``, ``--label-add KEY[=VALUE]``, ``--label-rm KEY``,
    ``--limit-cpu/-memory/-pids`` and the policies, into ``spec`` (changed in place and
    returned). Raises ValueError (a bad CPU or memory value)."""
    task = spec.setdefault("TaskTemplate", {})
    cs = task.setdefault("ContainerSpec", {})
    if a.env_add or a.env_rm:
        env = list(cs.get("Env") or [])
        for entry in a.env_add or []:
            if "=" not in entry:
                entry = f"{entry}={os.environ[entry]}" if entry in os.environ else entry
            keys = [_env_key(e) for e in env]
            if _env_key(entry) in keys:
                env[keys.index(_env_key(entry))] = entry
            else:
                env.append(entry)
        gone = {_env_key(e) for e in a.env_rm or []}
        cs["Env"] = [e for e in env if _env_key(e) not in gone]
    if a.label_add or a.label_rm:
        labels = dict(spec.get("Labels") or {})
        for kv in a.label_add or []:
            k, _, v = kv.partition("=")
            labels[k] = v
        for k in a.label_rm or []:
            labels.pop(k, None)
        spec["Labels"] = labels
    if a.limit_cpu or a.limit_memory or a.limit_pids is not None:
        res = task.setdefault("Resources", {})
        limits = merge_limits(res.get("Limits") or {}, a)
        res["Limits"] = limits
    return apply_policies(spec, a)


# ------------------------------------------------------------------------------ waiting
class UpdateWatch:
    """Follows a service's ``UpdateStatus`` while ``service update|rollback`` waits, as the docker
    CLI's progress (cli/command/service/progress). :meth:`check` (each poll) returns why the wait
    must fail now, or None: ``paused`` → "service update paused: MESSAGE", ``rollback_paused`` →
    "service rollback paused: MESSAGE". An automatic rollback (the failure action; ``rollback``
    False: this command did not ask for one) is followed to its end; :meth:`final` (once the
    service converged) then returns "service rolled back: MESSAGE", the reason it started."""

    def __init__(self, rollback: bool = False) -> None:
        self.rollback = rollback
        self.rolled_back: str | None = None

    def check(self, svc: dict[str, Any]) -> str | None:
        us = svc.get("UpdateStatus") or {}
        state, msg = us.get("State", ""), us.get("Message", "")
        if state == "paused":
            return f"service update paused: {msg}"
        if state == "rollback_paused":
            return f"service rollback paused: {msg}"
        if state in ("rollback_started", "rollback_completed") and not self.rollback and self.rolled_back is None:
            self.rolled_back = msg or "rollback completed"
        return None

    def settled(self, svc: dict[str, Any]) -> bool:
        """Whether the service's update (or rollback) is over: ``UpdateStatus`` absent (no update
        started: nothing to roll) or ``completed`` / ``rollback_completed``. While it is
        ``updating`` or ``rollback_started`` the service has not converged, even when every task
        of the new spec runs (a global update has moved only some nodes yet)."""
        state = (svc.get("UpdateStatus") or {}).get("State") or ""
        return state in ("", "completed", "rollback_completed")

    def final(self) -> str | None:
        """Why the wait fails although the service converged (it was rolled back), or None."""
        return f"service rolled back: {self.rolled_back}" if self.rolled_back is not None else None


# ------------------------------------------------------------------------------ commands
def service_rollback(c: Client, ref: str) -> dict[str, Any]:
    """``POST /services/{id}/update?version=&rollback=previous`` with the current spec (as
    docker/cli's rollback.go); the daemon puts ``PreviousSpec`` back. Returns the service as it
    was. Raises APIError (400 when there is no previous spec)."""
    svc = c.service(ref)
    c.request("POST", f"/services/{svc['ID']}/update",
              params={"version": svc["Version"]["Index"], "rollback": "previous"}, body=svc["Spec"])
    return svc


def node_remove(c: Client, ref: str, force: bool) -> None:
    """``DELETE /nodes/{id}?force=``. Raises APIError (a manager; a node that is up without
    ``force``; not found)."""
    c.request("DELETE", f"/nodes/{ref}", params={"force": force})


def cmd_node_rm(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    """``node rm [--force] NODE…``: each node removed is printed; errors are printed per node and
    the exit status is 1 if any failed (docker/cli node/remove.go)."""
    errors = []
    for ref in a.nodes:
        try:
            node_remove(c, ref, a.force)
            out.write(ref + "\n")
        except APIError as e:
            errors.append(e.message)
    if errors:
        out.flush()
        sys.stderr.write("".join(f"Error response from daemon: {m}\n" for m in errors))
        return 1
    return 0


def cmd_node_ps(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    """``node ps [NODE…]`` (default ``self``, this node): the tasks on the nodes, as ``service
    ps`` shows them, with ``-f desired-state=…``, ``-q``, ``--no-trunc``."""
    refs = a.nodes or ["self"]
    self_id = ""
    nodes_by_id = {n["ID"]: n for n in c.nodes()}
    tasks: list[dict[str, Any]] = []
    for ref in refs:
        if ref == "self":
            self_id = self_id or (c.info().get("Swarm") or {}).get("NodeID", "")
            if not self_id:
                raise APIError(503, "This node is not a swarm manager. Use \"shoal swarm init\" or "
                                    "\"shoal swarm join\" to connect this node to swarm and try again.")
            nid = self_id
        else:
            nid = c.node(ref)["ID"]
        tasks += c.tasks({"node": [nid]})
    for f in a.filter or []:
        k, _, v = f.partition("=")
        if k != "desired-state":
            raise ValueError(f"unsupported filter {k!r}: use desired-state=running|shutdown|accepted")
        tasks = [t for t in tasks if t.get("DesiredState") == v]
    if a.quiet:
        out.writelines(t["ID"] + "\n" for t in tasks)
        return 0
    services: dict[str, dict[str, Any]] = {}
    for sid in {t.get("ServiceID", "") for t in tasks}:
        try:
            services[sid] = c.service(sid)
        except APIError:
            services[sid] = {"ID": sid, "Spec": {"Name": fmt.short_id(sid)}}
    out.write(fmt.table(fmt.TASK_HEADERS, fmt.task_rows(tasks, services, nodes_by_id, trunc=not a.no_trunc)))
    return 0


def cmd_swarm_update(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    """``swarm update [--task-history-limit N]``: the SwarmSpec with
    ``Orchestration.TaskHistoryRetentionLimit`` changed (``POST /swarm/update?version=``)."""
    sw = c.swarm_inspect()
    spec = copy.deepcopy(sw.get("Spec") or {})
    if a.task_history_limit is not None:
        spec.setdefault("Orchestration", {})["TaskHistoryRetentionLimit"] = a.task_history_limit
    c.request("POST", "/swarm/update", params={"version": sw["Version"]["Index"]}, body=spec)
    out.write("Swarm updated.\n")
    return 0


def add_node_commands(nd: Any) -> None:
    """``node rm`` and ``node ps`` on the ``node`` subparsers ``nd``."""
    x = nd.add_parser("rm", help="remove nodes from the swarm")
    x.add_argument("-f", "--force", action="store_true", help="remove a node that is up (a worker only)")
    x.add_argument("nodes", nargs="+", metavar="NODE")
    x.set_defaults(func=cmd_node_rm)
    x = nd.add_parser("ps", help="list the tasks on nodes (default: this node)")
    x.add_argument("-q", "--quiet", action="store_true")
    x.add_argument("--no-trunc", action="store_true")
    x.add_argument("-f", "--filter", action="append", metavar="KEY=VALUE", help="desired-state=running")
    x.add_argument("nodes", nargs="*", metavar="NODE")
    x.set_defaults(func=cmd_node_ps)


def add_swarm_commands(sw: Any) -> None:
    """``swarm update`` on the ``swarm`` subparsers ``sw``."""
    x = sw.add_parser("update", help="update the swarm's settings")
    x.add_argument("--task-history-limit", type=int, default=None, metavar="N",
                   help="tasks kept per slot (default 5; negative: keep all)")
    x.set_defaults(func=cmd_swarm_update)
