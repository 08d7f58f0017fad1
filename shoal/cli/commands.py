"""``shoal``: the command-line client of a Shoal node (a Docker Engine API client only).

Commands and output follow the docker CLI (docker/cli v28 ``cli/command/{swarm,node,service,image}``):

    shoal [--host unix:///run/shoal/shoal.sock | tcp://H:P] COMMAND
    swarm init [--advertise-addr A] [--listen-addr A] [--force-new-cluster] [--default-addr-pool CIDR…]
               [--default-addr-pool-mask-length N] [--data-path-port P]
    swarm join --token T ADDR                            swarm leave [--force]
    swarm join-token [-q] worker|manager
    node ls | inspect NODE… | promote|demote NODE…
    node update [--availability active|pause|drain] [--label-add K=V] [--label-rm K] NODE
    service create [flags] IMAGE [COMMAND [ARG…]]        service ls | ps SERVICE… | inspect SERVICE…
    service create … [--constraint E] [--placement-pref spread=D] [--replicas-max-per-node N]
                   [--reserve-cpu C] [--reserve-memory M] [--dry-run] IMAGE …
    service create … [--mode replicated|global|replicated-job|global-job] [--max-concurrent N] IMAGE …
    service update [--network-add|--network-rm NET] [--publish-add|--publish-rm PORT]
                   [--endpoint-mode vip|dnsrr] [--replicas N] [--image I] [--force]
                   [--constraint-add|--constraint-rm E] [--placement-pref-add|--placement-pref-rm P]
                   [--replicas-max-per-node N] [--reserve-cpu C] [--reserve-memory M] [--dry-run] SERVICE
                   [--update-*|--rollback-*|--restart-* …] [--env-add|--env-rm] [--label-add|--label-rm]
                   [--limit-cpu|--limit-memory|--limit-pids] [--rollback]   (shoal/cli/update_flags.py)
    service rollback [-d] SERVICE                        node rm [--force] NODE… | ps [NODE…]
    swarm update [--task-history-limit N]
    service scale NAME=N…  | rm SERVICE… | logs [-f] [--tail N] [-t] [--since T] SERVICE
    events [--since T] [--until T] [-f KEY=VALUE]… [--format json]
    network create [-d overlay] [--subnet S] [--gateway G] [--ip-range R] [--attachable]
                   [--ingress] [--label K=V] [--opt K=V] NAME
    network ls [-q] [--no-trunc] [-f KEY=VALUE] | inspect NETWORK… | rm NETWORK…
    image load -i FILE | pull REF | ls

``--host`` defaults to ``$SHOAL_HOST``, then ``unix:///run/shoal/shoal.sock``. An API error
prints ``Error response from daemon: <message>`` and exits 1; bad flags exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from shoal.base.logopts import LOG_DRIVER, check_driver, parse_flags
from shoal.cli import format as fmt
from shoal.cli.client import APIError, Client, ConnectError
from shoal.cli.events_cmd import add_events_parser, timestamp_arg
from shoal.cli.health_flags import add_health_args, apply_health, update_health
from shoal.cli.modes_flags import add_mode_args, build_mode, is_job, wait_job
from shoal.cli.rebalance_flags import add_rebalance_args, apply_rebalance
from shoal.cli.update_flags import (
    UpdateWatch,
    add_node_commands,
    add_policy_args,
    add_swarm_commands,
    add_update_args,
    apply_policies,
    apply_update_extras,
    merge_limits,
    service_rollback,
)

ACTIVE_STATES = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running")
FAILED_STATES = ("failed", "rejected")


class UsageError(Exception):
    """A flag value is wrong; the message says which and what is accepted."""


# ------------------------------------------------------------------------------ lookups
def find_service(c: Client, ref: str) -> dict[str, Any]:
    """The service with ID, name or unique ID prefix ``ref``: the daemon resolves it as Docker does
    (manager/controlapi/common.py ``resolve``); APIError 404 if none, 400 if ambiguous."""
    return c.service(ref)


def find_node(c: Client, ref: str) -> dict[str, Any]:
    """The node with ID, hostname or unique ID prefix ``ref`` (resolved by the daemon, as
    :func:`find_service`); APIError 404 if none, 400 if ambiguous."""
    return c.node(ref)


def manager_addr(c: Client) -> str:
    """The address other nodes join through (first RemoteManagers entry, else NodeAddr:2377)."""
    sw = c.info().get("Swarm") or {}
    for m in sw.get("RemoteManagers") or []:
        if m.get("Addr"):
            return str(m["Addr"])
    addr = sw.get("NodeAddr") or ""
    return f"{addr}:2377" if addr else "<manager-ip>:2377"


# ------------------------------------------------------------------------------ swarm
def cmd_swarm_init(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    listen = a.listen_addr or "0.0.0.0:2377"
    node_id = c.swarm_init(a.advertise_addr or "", listen, force_new_cluster=a.force_new_cluster,
                           default_addr_pool=a.default_addr_pool, subnet_size=a.default_addr_pool_mask_length,
                           data_path_port=a.data_path_port)
    token = c.swarm_inspect().get("JoinTokens", {}).get("Worker", "")
    addr = manager_addr(c)
    out.write(f"Swarm initialized: current node ({node_id}) is now a manager.\n\n"
              "To add a worker to this swarm, run the following command:\n\n"
              f"    shoal swarm join --token {token} {addr}\n\n"
              "To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n\n")
    return 0


def cmd_swarm_join(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    if not a.token:
        raise UsageError("--token is required: use the token printed by `shoal swarm join-token worker` on a manager")
    c.swarm_join(a.token, a.addr, a.advertise_addr or "", a.listen_addr or "0.0.0.0:2377")
    role = "manager" if (c.info().get("Swarm") or {}).get("ControlAvailable") else "worker"
    out.write(f"This node joined a swarm as a {role}.\n")
    return 0


def cmd_swarm_join_token(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    tokens = c.swarm_inspect().get("JoinTokens", {})
    token = tokens.get("Worker" if a.role == "worker" else "Manager", "")
    if a.quiet:
        out.write(token + "\n")
        return 0
    out.write(f"To add a {a.role} to this swarm, run the following command:\n\n"
              f"    shoal swarm join --token {token} {manager_addr(c)}\n\n")
    return 0


def cmd_swarm_leave(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    c.swarm_leave(a.force)
    out.write("Node left the swarm.\n")
    return 0


# ------------------------------------------------------------------------------ nodes
def cmd_node_ls(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    nodes = c.nodes()
    if a.quiet:
        out.writelines(n["ID"] + "\n" for n in nodes)
        return 0
    self_id = (c.info().get("Swarm") or {}).get("NodeID", "")
    out.write(fmt.table(fmt.NODE_HEADERS, fmt.node_rows(nodes, self_id)))
    return 0


def cmd_node_inspect(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    out.write(fmt.pretty_json([find_node(c, n) for n in a.nodes]) + "\n")
    return 0


def cmd_node_update(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    node = find_node(c, a.node)
    spec = dict(node.get("Spec") or {})
    if a.availability:
        spec["Availability"] = a.availability
    if a.role:
        spec["Role"] = a.role
    labels = dict(spec.get("Labels") or {})
    for kv in a.label_add or []:
        k, _, v = kv.partition("=")
        labels[k] = v
    for k in a.label_rm or []:
        # as docker/cli's node/update.go: removing a label the node lacks is an error
        if k not in labels:
            raise UsageError(f"key {k} doesn't exist in node's labels")
        del labels[k]
    if a.label_add or a.label_rm:
        spec["Labels"] = labels
    c.node_update(node["ID"], node["Version"]["Index"], spec)
    out.write(a.node + "\n")
    return 0


def cmd_node_role(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    """``node promote|demote NODE…`` as docker/cli's node/promote.go and demote.go: a node that
    already has the role is reported and skipped."""
    for name in a.nodes:
        node = find_node(c, name)
        spec = dict(node.get("Spec") or {})
        if spec.get("Role") == a.role:
            out.write(f"Node {name} is already a {a.role}.\n")
            continue
        spec["Role"] = a.role
        c.node_update(node["ID"], node["Version"]["Index"], spec)
        if a.role == "manager":
            out.write(f"Node {name} promoted to a manager in the swarm.\n")
        else:
            out.write(f"Manager {name} demoted in the swarm.\n")
    return 0


# ------------------------------------------------------------------------------ services
def parse_network_flag(text: str) -> dict[str, Any]:
    """``--network`` as docker/cli reads it: ``NAME`` or the long form ``name=NAME,alias=A,alias=B``
    → ``{"Target": NAME, "Aliases": [...]}``. Raises ``ValueError`` naming a bad key."""
    if "=" not in text:
        return {"Target": text}
    target, aliases = "", []
    for part in text.split(","):
        k, _, v = part.partition("=")
        k = k.strip().lower()
        if k in ("name", "target"):
            target = v
        elif k == "alias":
            aliases.append(v)
        else:
            raise ValueError(f"invalid field key {k!r} in --network {text!r}: use name=NAME,alias=ALIAS")
    if not target:
        raise ValueError(f"--network {text!r}: the network name is missing (name=NAME)")
    return {"Target": target, "Aliases": aliases} if aliases else {"Target": target}


PUBLISH_MODES = ("ingress", "host")
PROTOCOLS = ("tcp", "udp", "sctp")


def _port_number(text: str, what: str, flag: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"invalid {what} {text!r} in --publish {flag!r}: a port number 1-65535")
    return int(text)


def _port_range(text: str, what: str, flag: str) -> list[int]:
    lo, dash, hi = text.partition("-")
    first = _port_number(lo, what, flag)
    last = _port_number(hi, what, flag) if dash else first
    if last < first:
        raise ValueError(f"invalid {what} range {text!r} in --publish {flag!r}")
    return list(range(first, last + 1))


def parse_publish_flag(text: str) -> list[dict[str, Any]]:
    """``--publish`` as docker/cli reads it (``opts.PortOpt``) → ``PortConfig`` entries:

    - short: ``[published:]target[/protocol]``, ports or equal-length ranges (``8080-8081:80-81``);
      no published port → the swarm picks one (30000-32767); ingress mode;
    - long: ``mode=ingress|host,target=80[,published=8080][,protocol=tcp|udp|sctp]``.

    Raises ``ValueError`` naming what is wrong (a bad key, port, protocol or mode, a missing target)."""
    if "=" in text:
        cfg: dict[str, Any] = {"Protocol": "tcp", "PublishMode": "ingress"}
        for part in text.split(","):
            k, eq, v = part.partition("=")
            k = k.strip().lower()
            if not eq:
                raise ValueError(f"invalid field {part!r} in --publish {text!r}: use key=value")
            if k == "mode":
                if v not in PUBLISH_MODES:
                    raise ValueError(f"invalid publish mode value ({v}) in --publish {text!r}: use ingress or host")
                cfg["PublishMode"] = v
            elif k == "target":
                cfg["TargetPort"] = _port_number(v, "target port", text)
            elif k == "published":
                cfg["PublishedPort"] = _port_number(v, "published port", text)
            elif k == "protocol":
                if v not in PROTOCOLS:
                    raise ValueError(f"invalid protocol value ({v}) in --publish {text!r}: use tcp, udp or sctp")
                cfg["Protocol"] = v
            else:
                raise ValueError(f"invalid field key {k!r} in --publish {text!r}: use mode, target, published, protocol")
        if "TargetPort" not in cfg:
            raise ValueError(f"missing mandatory field 'target' in --publish {text!r}")
        return [cfg]
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in PROTOCOLS:
        raise ValueError(f"invalid protocol {proto!r} in --publish {text!r}: use tcp, udp or sctp")
    published, colon, target = spec.rpartition(":")
    if not colon:
        published, target = "", spec
    if ":" in published:
        raise ValueError(f"--publish {text!r}: a host IP is not supported for swarm services "
                         f"(use [published:]target[/protocol])")
    targets = _port_range(target, "target port", text)
    pubs = _port_range(published, "published port", text) if published else []
    if pubs and len(pubs) != len(targets):
        raise ValueError(f"--publish {text!r}: the published and target ranges differ in length")
    out = []
    for i, t in enumerate(targets):
        cfg = {"Protocol": proto, "TargetPort": t, "PublishMode": "ingress"}
        if pubs:
            cfg["PublishedPort"] = pubs[i]
        out.append(cfg)
    return out


def parse_placement_pref(text: str) -> dict[str, Any]:
    """``--placement-pref spread=node.labels.zone`` as docker/cli's ``placementPrefOpts`` reads it
    → ``{"Spread": {"SpreadDescriptor": "node.labels.zone"}}``. Raises ``ValueError`` with the
    docker CLI's messages."""
    strategy, eq, arg = text.partition("=")
    if not eq or not arg:
        raise ValueError('placement preference must be of the format "<strategy>=<arg>"')
    if strategy != "spread":
        raise ValueError(f"unsupported placement preference {strategy} (only spread is supported)")
    return {"Spread": {"SpreadDescriptor": arg}}


def _max_replicas(n: int) -> int:
    if n < 0:
        raise ValueError(f"invalid argument \"{n}\" for \"--replicas-max-per-node\" flag: must be 0 or more")
    return n


def _set_reservations(task: dict[str, Any], a: argparse.Namespace) -> None:
    """``--reserve-cpu`` / ``--reserve-memory`` into ``Resources.Reservations`` (NanoCPUs, bytes)."""
    if not (a.reserve_cpu or a.reserve_memory):
        return
    res = task.setdefault("Resources", {})
    reservations = dict(res.get("Reservations") or {})
    if a.reserve_cpu:
        reservations["NanoCPUs"] = fmt.parse_cpus(a.reserve_cpu)
    if a.reserve_memory:
        reservations["MemoryBytes"] = fmt.parse_bytes(a.reserve_memory)
    res["Reservations"] = reservations


def print_plan(plan: dict[str, Any], name: str, out: TextIO) -> int:
    """Print a dry run's plan (``POST /services/plan``): one row per task, ``TASK NODE PLACEMENT``
    (``new``, ``unchanged`` or the reason it would stay pending). Returns 0 when every task
    would be placed, else 1."""
    rows = []
    pending = 0
    for t in plan.get("Tasks") or []:
        task = f"{name}.{t['Slot']}" if t.get("Slot") else f"{name}.{t.get('NodeID') or ''}".rstrip(".")
        if t.get("Error"):
            pending += 1
            how = f"pending: {t['Error']}"
        else:
            how = "unchanged" if t.get("Unchanged") else "new"
        rows.append([task, str(t.get("Node") or t.get("NodeID") or "-"), how])
    out.write(fmt.table(["TASK", "NODE", "PLACEMENT"], rows))
    for w in plan.get("Warnings") or []:
        out.write(f"warning: {w}\n")
    total = len(plan.get("Tasks") or [])
    out.write(f"dry run: {total - pending} of {total} tasks placed, nothing was written\n")
    return 1 if pending else 0


def build_service_spec(a: argparse.Namespace) -> dict[str, Any]:
    """The ServiceSpec for ``service create`` flags (as docker/cli's ``service/opts.go`` builds it).

    The positional COMMAND and ARGs go to ``ContainerSpec.Args`` (the image's Entrypoint stays);
    ``--entrypoint`` sets ``ContainerSpec.Command``. Raises UsageError for bad values.
    """
    try:
        if a.replicas is not None and a.replicas < 0:
            raise UsageError(f"invalid replicas value {a.replicas}: must be 0 or more")
        if a.replicas_max_per_node is not None:
            _max_replicas(a.replicas_max_per_node)
        if not a.image.strip():
            raise UsageError("an image is required: shoal service create [OPTIONS] IMAGE [COMMAND] [ARG...]")
        cspec: dict[str, Any] = {"Image": a.image}
        if a.args:
            cspec["Args"] = list(a.args)
        if a.entrypoint:
            import shlex

            cspec["Command"] = shlex.split(a.entrypoint)
        if a.env:
            for e in a.env:
                if "=" not in e:
                    raise UsageError(f"invalid --env {e!r}: use KEY=VALUE")
            cspec["Env"] = list(a.env)
        if a.hostname:
            cspec["Hostname"] = a.hostname
        if a.workdir:
            cspec["Dir"] = a.workdir
        if a.user:
            cspec["User"] = a.user
        if a.stop_grace_period:
            cspec["StopGracePeriod"] = fmt.parse_duration(a.stop_grace_period)
        if a.stop_signal:
            cspec["StopSignal"] = a.stop_signal
        apply_health(cspec, a)
        limits = merge_limits({}, a)
        restart: dict[str, Any] = {}
        if a.restart_condition:
            restart["Condition"] = a.restart_condition
        if a.restart_delay:
            restart["Delay"] = fmt.parse_duration(a.restart_delay)
        if a.restart_max_attempts is not None:
            restart["MaxAttempts"] = a.restart_max_attempts
        task: dict[str, Any] = {"ContainerSpec": cspec, "Resources": {"Limits": limits, "Reservations": {}},
                                "ForceUpdate": 0, "Runtime": "container"}
        if restart:
            task["RestartPolicy"] = restart
        placement: dict[str, Any] = {}
        if a.constraint:
            placement["Constraints"] = list(a.constraint)
        if a.placement_pref:
            placement["Preferences"] = [parse_placement_pref(p) for p in a.placement_pref]
        if a.replicas_max_per_node:
            placement["MaxReplicas"] = _max_replicas(a.replicas_max_per_node)
        if placement:
            task["Placement"] = placement
        _set_reservations(task, a)
        if getattr(a, "network", None):
            task["Networks"] = [parse_network_flag(n) for n in a.network]
        if a.log_driver or a.log_opt:
            # as docker/cli's logDriverOptions; --log-opt alone means the only driver, json-file
            check_driver(a.log_driver)
            task["LogDriver"] = {"Name": a.log_driver or LOG_DRIVER, "Options": parse_flags(a.log_opt or [])}
        mode = build_mode(a)
        endpoint: dict[str, Any] = {"Mode": a.endpoint_mode or "vip"}
        if a.publish:
            endpoint["Ports"] = [p for text in a.publish for p in parse_publish_flag(text)]
        spec: dict[str, Any] = {"Name": a.name or "", "Labels": {}, "TaskTemplate": task, "Mode": mode,
                                "EndpointSpec": endpoint}
        for kv in a.label or []:
            k, _, v = kv.partition("=")
            spec["Labels"][k] = v
        return apply_policies(spec, a)
    except ValueError as e:
        raise UsageError(str(e)) from None


DEFAULT_MONITOR = 5.0  # seconds: swarmkit's default UpdateConfig.Monitor, the CLI's stability wait


def _node_maps(c: Client) -> tuple[dict[str, dict[str, Any]], set[str]]:
    nodes = {n["ID"]: n for n in c.nodes()}
    down = {i for i, n in nodes.items() if n.get("Status", {}).get("State") == "down"}
    return nodes, down


def wait_converged(c: Client, service_id: str, out: TextIO, timeout: float = 300.0,
                   max_failures: int | None = None, interval: float = 0.2, monitor: float | None = None,
                   watch: UpdateWatch | None = None) -> int:
    """Poll every ``interval`` s (as docker/cli's progress does) until the service converges.

    Prints one line per slot state change (``1/3: preparing``), each failed/rejected task with its
    error, and ``verify: Service NAME converged``. As the docker CLI (cli/command/service/progress),
    once converged it keeps polling for the service's ``UpdateConfig.Monitor`` (default 5 s; the
    ``monitor`` argument in seconds overrides it) to verify the tasks are stable, and starts over
    if they are not. Returns 0 when converged, 1 when tasks fail ``max_failures`` times (default
    max(3, replicas)) or ``timeout`` seconds pass. Raises APIError 404 ``service NAME not found``
    when the service is removed while waiting (as the docker CLI). With ``watch`` (an update or
    rollback), only the tasks of the current spec count (``_up-to-date``), the service's
    ``UpdateStatus`` must be over too (:meth:`UpdateWatch.settled`), and a paused update
    or a rollback nobody asked for ends the wait with 1 and the reason (:class:`UpdateWatch`).
    """
    deadline = time.monotonic() + timeout
    converged_at: float | None = None
    name = service_id
    shown: dict[str, str] = {}
    failed_seen: set[str] = set()
    started = time.time()
    last_msg = ""
    while True:
        try:
            svc = c.service(service_id)
            name = svc["Spec"].get("Name", service_id)
            nodes, down = _node_maps(c)
            tasks = [t for t in c.tasks({"service": [svc["ID"]], **({"_up-to-date": ["true"]} if watch else {})})
                     if t.get("NodeID", "") not in down]
        except APIError as e:
            if e.status == 404:
                raise APIError(404, f"service {name} not found") from e
            raise
        why = watch.check(svc) if watch is not None else None
        if why:
            out.write(f"Error: {why}\n")
            return 1
        wait_for = monitor
        if wait_for is None:
            mon = (svc["Spec"].get("UpdateConfig") or {}).get("Monitor")
            wait_for = mon / 1e9 if isinstance(mon, int) and mon > 0 else DEFAULT_MONITOR
        mode = svc["Spec"].get("Mode") or {}
        desired = mode["Replicated"].get("Replicas", 1) if "Replicated" in mode else None
        active = [t for t in tasks if t.get("DesiredState") == "running"]
        newest: dict[str, dict[str, Any]] = {}
        for t in sorted(active, key=lambda t: t.get("CreatedAt", "")):
            newest[str(t.get("Slot") or t.get("NodeID") or t["ID"])] = t
        total = desired if desired is not None else len(newest)
        for slot, t in sorted(newest.items(), key=lambda kv: (len(kv[0]), kv[0])):
            if desired is not None and slot.isdigit() and int(slot) > desired:
                continue  # being scaled down
            st = t.get("Status", {}).get("State", "new")
            if shown.get(slot) != st:
                shown[slot] = st
                host = nodes.get(t.get("NodeID", ""), {}).get("Description", {}).get("Hostname", "")
                # a slot as "2/3"; a global task by its node's truncated ID, as the docker CLI
                label = f"{slot}/{total}" if slot.isdigit() else slot[:12]
                out.write(f"{label}: {st}" + (f" (on {host})" if host and st == "running" else "") + "\n")
                out.flush()
        for t in tasks:
            st = t.get("Status", {})
            if st.get("State") in FAILED_STATES and t["ID"] not in failed_seen and \
                    (fmt.parse_time(st.get("Timestamp", "")) or started) >= started - 1:
                failed_seen.add(t["ID"])
                host = nodes.get(t.get("NodeID", ""), {}).get("Description", {}).get("Hostname", "?")
                code = (st.get("ContainerStatus") or {}).get("ExitCode")
                last_msg = (f"task {fmt.short_id(t['ID'])} ({name}.{t.get('Slot', '')}) on {host}: {st['State']}: "
                            f"{st.get('Err') or st.get('Message', '')}" + (f" (exit code {code})" if code else ""))
                out.write(last_msg + "\n")
                out.flush()
        running = sum(1 for t in newest.values() if t.get("Status", {}).get("State") == "running")
        if len(active) == total and running == total and (desired is not None or total > 0):
            now = time.monotonic()
            if converged_at is None:
                converged_at = now
                if wait_for > 0:
                    out.write(f"overall progress: {running} out of {total} tasks\n"
                              f"verify: Waiting {max(1, round(wait_for))} seconds to verify that tasks are stable...\n")
                    out.flush()
            if now - converged_at >= wait_for and (watch is None or watch.settled(svc)):
                out.write(f"overall progress: {running} out of {total} tasks\nverify: Service {name} converged\n")
                why = watch.final() if watch is not None else None
                if why:
                    out.write(f"Error: {why}\n")
                return 1 if why else 0
        else:
            converged_at = None
        limit = max_failures if max_failures is not None else max(3, total)
        if len(failed_seen) >= limit:
            out.write(f"Error: service {name} did not converge: {len(failed_seen)} tasks failed; last: {last_msg}\n"
                      f"(the service is still there: see `shoal service ps {name}`)\n")
            return 1
        if time.monotonic() > deadline:
            out.write(f"Error: service {name} did not converge within {timeout:.0f}s "
                      f"({running} of {total} running); see `shoal service ps {name}`\n")
            return 1
        time.sleep(interval)


def cmd_service_create(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    spec = build_service_spec(a)
    if a.dry_run:
        return print_plan(c.service_plan(spec), spec.get("Name") or "(new service)", out)
    res = c.service_create(spec)
    for w in res.get("Warnings") or []:
        sys.stderr.write(f"{w}\n")
    out.write(res["ID"] + "\n")
    out.flush()
    if a.detach:
        return 0
    if is_job(spec):
        return wait_job(c, res["ID"], out, timeout=a.timeout)
    return wait_converged(c, res["ID"], out, timeout=a.timeout)


def _running_counts(c: Client) -> dict[str, int]:
    _, down = _node_maps(c)
    counts: dict[str, int] = {}
    for t in c.tasks():
        if t.get("Status", {}).get("State") == "running" and t.get("DesiredState") == "running" \
                and t.get("NodeID") not in down:
            counts[t["ServiceID"]] = counts.get(t["ServiceID"], 0) + 1
    return counts


def cmd_service_ls(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    services = c.services()
    if a.quiet:
        out.writelines(s["ID"] + "\n" for s in services)
        return 0
    need = any("ServiceStatus" not in s for s in services)
    out.write(fmt.table(fmt.SERVICE_HEADERS, fmt.service_rows(services, _running_counts(c) if need else {})))
    return 0


def cmd_service_ps(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    services = {}
    for ref in a.services:
        s = find_service(c, ref)
        services[s["ID"]] = s
    tasks = [t for sid in services for t in c.tasks({"service": [sid]})]
    for f in a.filter or []:
        k, _, v = f.partition("=")
        if k == "desired-state":
            tasks = [t for t in tasks if t.get("DesiredState") == v]
        elif k == "node":
            tasks = [t for t in tasks if t.get("NodeID") == v]
        else:
            raise UsageError(f"unsupported filter {k!r}: use desired-state=running or node=ID")
    if a.quiet:
        out.writelines(t["ID"] + "\n" for t in tasks)
        return 0
    nodes, _ = _node_maps(c)
    out.write(fmt.table(fmt.TASK_HEADERS, fmt.task_rows(tasks, services, nodes, trunc=not a.no_trunc)))
    return 0


def cmd_service_inspect(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    out.write(fmt.pretty_json([find_service(c, s) for s in a.services]) + "\n")
    return 0


def cmd_service_scale(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    rc = 0
    targets = []
    for arg in a.pairs:
        name, eq, n = arg.partition("=")
        if not eq or not n.isdigit():
            raise UsageError(f"invalid scale specifier {arg!r}: use SERVICE=REPLICAS, e.g. web=5")
        svc = find_service(c, name)
        spec = svc["Spec"]
        mode = spec.get("Mode") or {}
        if "Replicated" in mode:  # as docker/cli's scale.go: replicas, or a job's completions
            mode["Replicated"]["Replicas"] = int(n)
        elif "ReplicatedJob" in mode:
            mode["ReplicatedJob"] = dict(mode["ReplicatedJob"] or {}, TotalCompletions=int(n))
        else:
            sys.stderr.write(f"{name}: scale can only be used with replicated or replicated-job mode\n")
            rc = 1
            continue
        c.service_update(svc["ID"], svc["Version"]["Index"], spec)
        out.write(f"{name} scaled to {n}\n")
        out.flush()
        targets.append((svc["ID"], is_job(spec)))
    if not a.detach:
        for sid, job in targets:
            rc = (wait_job(c, sid, out, timeout=a.timeout) if job else wait_converged(c, sid, out, timeout=a.timeout)) or rc
    return rc


def _same_port(p: dict[str, Any], rm: dict[str, Any]) -> bool:
    """The ``--publish-rm`` match of the docker CLI (v28, as it behaves): the same target port and
    protocol, whatever the publish mode."""
    return bool(int(p.get("TargetPort") or 0) == rm["TargetPort"]
                and str(p.get("Protocol") or "tcp") == rm["Protocol"])


def update_service_spec(c: Client, spec: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """``spec`` (a copy of the service's) changed by ``service update`` flags, as docker/cli's
    service/update.go: ``--network-rm`` (a network name or ID, resolved by the daemon),
    ``--network-add`` (``NAME`` or ``name=NAME,alias=A``), ``--publish-rm`` (a ``--publish`` value:
    its target port and protocol), ``--publish-add``, ``--endpoint-mode``, ``--replicas``,
    ``--image``, placement (:func:`_update_placement`), ``--reserve-cpu``, ``--reserve-memory``,
    ``--force``. Raises UsageError (bad flags, a network added twice)."""
    try:
        task = spec.setdefault("TaskTemplate", {})
        if a.network_rm:
            nets = list(task.get("Networks") or [])
            for ref in a.network_rm:
                try:
                    nid = c.network(ref).get("Id", ref)
                except APIError:
                    nid = ref
                kept = [n for n in nets if n.get("Target") not in (ref, nid)]
                if len(kept) == len(nets):
                    raise UsageError(f"--network-rm {ref}: the service is not attached to that network")
                nets = kept
            task["Networks"] = nets
        for text in a.network_add or []:
            att = parse_network_flag(text)
            nets = list(task.get("Networks") or [])
            try:
                nid = c.network(att["Target"]).get("Id", att["Target"])
            except APIError:
                nid = att["Target"]
            if any(n.get("Target") in (att["Target"], nid) for n in nets):
                raise UsageError(f"service is already attached to network {att['Target']}")
            task["Networks"] = [*nets, att]
        endpoint = dict(spec.get("EndpointSpec") or {})
        if a.endpoint_mode:
            endpoint["Mode"] = a.endpoint_mode
        ports = list(endpoint.get("Ports") or [])
        for text in a.publish_rm or []:
            for rm in parse_publish_flag(text):
                ports = [p for p in ports if not _same_port(p, rm)]
        for text in a.publish_add or []:
            for add in parse_publish_flag(text):
                ports = [p for p in ports if not (add.get("PublishedPort") and
                                                  p.get("PublishedPort") == add["PublishedPort"] and
                                                  str(p.get("Protocol") or "tcp") == add["Protocol"])]
                ports.append(add)
        if a.publish_rm or a.publish_add:
            endpoint["Ports"] = ports
        spec["EndpointSpec"] = endpoint
        if a.replicas is not None:
            if "Replicated" not in (spec.get("Mode") or {}):
                raise UsageError("--replicas can only be used with replicated mode")
            spec["Mode"]["Replicated"]["Replicas"] = a.replicas
        if a.image:
            task.setdefault("ContainerSpec", {})["Image"] = a.image
        update_health(task.setdefault("ContainerSpec", {}), a)
        _update_placement(task, a)
        _set_reservations(task, a)
        if a.force:
            task["ForceUpdate"] = int(task.get("ForceUpdate") or 0) + 1
        return apply_update_extras(spec, a)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _update_placement(task: dict[str, Any], a: argparse.Namespace) -> None:
    """``--constraint-add/-rm``, ``--placement-pref-add/-rm`` and ``--replicas-max-per-node`` as
    docker/cli's service/update.go: constraints are added, then those equal to a ``-rm`` value
    removed, then sorted; preferences whose descriptor a ``-rm`` names are removed, then the
    ``-add`` ones appended."""
    if not (a.constraint_add or a.constraint_rm or a.placement_pref_add or a.placement_pref_rm
            or a.replicas_max_per_node is not None):
        return
    placement = dict(task.get("Placement") or {})
    if a.constraint_add or a.constraint_rm:
        constraints = [*(placement.get("Constraints") or []), *(a.constraint_add or [])]
        placement["Constraints"] = sorted(c for c in constraints if c not in set(a.constraint_rm or []))
    if a.placement_pref_add or a.placement_pref_rm:
        gone = {parse_placement_pref(p)["Spread"]["SpreadDescriptor"] for p in a.placement_pref_rm or []}
        prefs = [p for p in placement.get("Preferences") or []
                 if ((p.get("Spread") or {}).get("SpreadDescriptor")) not in gone]
        placement["Preferences"] = [*prefs, *(parse_placement_pref(p) for p in a.placement_pref_add or [])]
    if a.replicas_max_per_node is not None:
        placement["MaxReplicas"] = _max_replicas(a.replicas_max_per_node)
    task["Placement"] = placement


def cmd_service_update(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    if a.rollback:
        plain = vars(build_parser().parse_args(["service", "update", a.service]))
        if any(v != plain.get(k) for k, v in vars(a).items() if k not in ("rollback", "detach", "timeout", "host")):
            raise UsageError("other flags may not be combined with --rollback")  # as the docker CLI
        return cmd_service_rollback(c, a, out)
    svc = find_service(c, a.service)
    spec = apply_rebalance(update_service_spec(c, dict(svc["Spec"]), a), a)
    if a.dry_run:
        return print_plan(c.service_plan(spec, svc["ID"]), str(svc["Spec"].get("Name") or a.service), out)
    res = c.service_update(svc["ID"], svc["Version"]["Index"], spec)
    for w in res.get("Warnings") or []:
        sys.stderr.write(f"{w}\n")
    out.write(a.service + "\n")
    out.flush()
    if a.detach:
        return 0
    if is_job(spec):
        return wait_job(c, svc["ID"], out, timeout=a.timeout)
    return wait_converged(c, svc["ID"], out, timeout=a.timeout, watch=UpdateWatch())


def cmd_service_rollback(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    """``service rollback [-d] SERVICE`` (and ``service update --rollback``): back to the
    service's previous spec (update_flags.service_rollback), then wait as ``service update``."""
    svc = service_rollback(c, a.service)
    out.write(a.service + "\n")
    out.flush()
    if a.detach:
        return 0
    if is_job(svc["Spec"]):  # a job's rollback is a new iteration of the previous spec
        return wait_job(c, svc["ID"], out, timeout=a.timeout)
    return wait_converged(c, svc["ID"], out, timeout=a.timeout, watch=UpdateWatch(rollback=True))


def cmd_service_rm(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    rc = 0
    for ref in a.services:
        try:
            c.service_remove(find_service(c, ref)["ID"])
            out.write(ref + "\n")
        except APIError as e:
            sys.stderr.write(f"Error response from daemon: {e.message}\n")
            rc = 1
    return rc


def cmd_service_logs(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    svc = find_service(c, a.service)
    name = svc["Spec"].get("Name", svc["ID"])
    tasks: dict[str, dict[str, Any]] = {}
    nodes: dict[str, dict[str, Any]] = {}

    def prefix(details: str) -> str:
        kv = dict(p.partition("=")[::2] for p in details.split(","))
        tid = kv.get("com.docker.swarm.task.id", "")
        if tid and tid not in tasks:
            tasks.update({t["ID"]: t for t in c.tasks({"service": [svc["ID"]]})})
            nodes.update(_node_maps(c)[0])
        t = tasks.get(tid, {})
        host = nodes.get(kv.get("com.docker.swarm.node.id", t.get("NodeID", "")), {}).get(
            "Description", {}).get("Hostname", "")
        return f"{name}.{t.get('Slot', '')}.{fmt.short_id(tid)}@{host}    | "

    since = timestamp_arg(a.since) if a.since else None
    for stream, raw in c.service_logs(svc["ID"], follow=a.follow, tail=a.tail, timestamps=a.timestamps, since=since):
        line = raw.decode(errors="replace")
        if stream == 3:  # the daemon's warning: the nodes whose lines could not be read
            sys.stderr.write(line.rstrip("\n") + "\n")
            sys.stderr.flush()
            continue
        pre = ""
        ts = ""
        if a.timestamps and " " in line:
            ts, line = line.split(" ", 1)
        if line.startswith("com.docker.swarm."):
            details, _, line = line.partition(" ")
            if not a.raw:
                pre = prefix(details)
        text = (f"{ts} " if ts else "") + pre + line + "\n"
        (sys.stderr if stream == 2 else out).write(text)
        (sys.stderr if stream == 2 else out).flush()
    return 0


# ------------------------------------------------------------------------------ images
def cmd_image_load(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    if not a.input:
        raise UsageError("requested load from stdin, but stdin is not supported: use -i ARCHIVE.tar")
    try:
        f = open(a.input, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise UsageError(f"cannot read {a.input}: {e.strerror}") from None
    with f:
        for msg in c.images_load(f):
            if msg.get("error"):
                raise APIError(500, str(msg["error"]))
            if msg.get("stream"):
                out.write(str(msg["stream"]))
    return 0


def cmd_image_pull(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    ref = a.ref
    name, tag = ref, ""
    if "@" not in ref:
        last = ref.rsplit("/", 1)[-1]
        if ":" in last:
            name, tag = ref.rsplit(":", 1)
        else:
            tag = "latest"
    for msg in c.images_pull(name, tag):
        if msg.get("error"):
            raise APIError(500, str(msg["error"]))
        status = msg.get("status")
        if status:
            out.write((f"{msg['id']}: " if msg.get("id") else "") + str(status) + "\n")
            out.flush()
    return 0


def cmd_image_ls(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    rows = []
    now = time.time()
    for img in c.images():
        tags = img.get("RepoTags") or ["<none>:<none>"]
        for rt in tags:
            repo, _, tag = rt.rpartition(":")
            if "/" in tag:
                repo, tag = rt, "<none>"
            created = img.get("Created")
            when = fmt.human_duration(now - created) + " ago" if isinstance(created, (int, float)) and created else ""
            rows.append([repo, tag, img.get("Id", "").removeprefix("sha256:")[:12], when,
                         fmt.human_size(img.get("Size", 0))])
    out.write(fmt.table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], sorted(rows)))
    return 0


# ------------------------------------------------------------------------------ networks
def _key_values(items: list[str] | None, flag: str) -> dict[str, str]:
    """``["k=v", "k2"]`` → ``{"k": "v", "k2": ""}`` (docker/cli's ``opts.ConvertKVStringsToMap``)."""
    out = {}
    for kv in items or []:
        k, _, v = kv.partition("=")
        if not k:
            raise UsageError(f"invalid {flag} {kv!r}: use KEY=VALUE")
        out[k] = v
    return out


def build_network_request(a: argparse.Namespace) -> dict[str, Any]:
    """The ``NetworkCreateRequest`` for ``network create`` flags (as docker/cli's
    network/create.go builds it: one IPAM config from --subnet, --gateway, --ip-range)."""
    if (a.gateway or a.ip_range) and not a.subnet:
        raise UsageError("every ip-range or gateway must have a corresponding subnet")
    config: dict[str, str] = {}
    if a.subnet:
        config["Subnet"] = a.subnet
    if a.gateway:
        config["Gateway"] = a.gateway
    if a.ip_range:
        config["IPRange"] = a.ip_range
    return {"Name": a.name, "Driver": a.driver, "Options": _key_values(a.opt, "--opt"),
            "IPAM": {"Driver": "default", "Config": [config] if config else []},
            "Attachable": a.attachable, "Internal": a.internal, "Ingress": a.ingress,
            "Labels": _key_values(a.label, "--label")}


def cmd_network_create(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    out.write(c.network_create(build_network_request(a))["Id"] + "\n")
    return 0


def cmd_network_ls(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    filters: dict[str, list[str]] = {}
    for f in a.filter or []:
        k, eq, v = f.partition("=")
        if not eq or not k:
            raise UsageError(f"bad format of filter (expected name=value): {f}")
        filters.setdefault(k, []).append(v)
    nets = c.networks(filters or None)
    if a.quiet:
        out.writelines(row[0] + "\n" for row in fmt.network_rows(nets, trunc=not a.no_trunc))
        return 0
    out.write(fmt.table(fmt.NETWORK_HEADERS, fmt.network_rows(nets, trunc=not a.no_trunc)))
    return 0


def cmd_network_inspect(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    out.write(fmt.pretty_json([c.network(n) for n in a.networks]) + "\n")
    return 0


def cmd_network_rm(c: Client, a: argparse.Namespace, out: TextIO) -> int:
    rc = 0
    for ref in a.networks:
        try:
            c.network_remove(ref)
            out.write(ref + "\n")
        except APIError as e:
            sys.stderr.write(f"Error response from daemon: {e.message}\n")
            rc = 1
    return rc


# ------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of the ``shoal`` command (each leaf sets ``func``)."""
    p = argparse.ArgumentParser(prog="shoal", description="Drive a Shoal cluster (Docker Engine API client).")
    p.add_argument("-H", "--host", default=None,
                   help="daemon socket: unix:///path or tcp://HOST:PORT (default $SHOAL_HOST or unix:///run/shoal/shoal.sock)")
    top = p.add_subparsers(dest="group", required=True, metavar="COMMAND")

    sw = top.add_parser("swarm", help="manage the swarm").add_subparsers(dest="cmd", required=True)
    x = sw.add_parser("init", help="initialize a swarm; this node becomes its first manager")
    x.add_argument("--advertise-addr", default="")
    x.add_argument("--listen-addr", default="")
    x.add_argument("--force-new-cluster", action="store_true",
                   help="on a manager of a swarm that lost its quorum for good: keep this manager's "
                        "state and make it the only manager")
    x.add_argument("--default-addr-pool", action="append", metavar="CIDR",
                   help="where overlay subnets come from (repeatable; default 10.0.0.0/8)")
    x.add_argument("--default-addr-pool-mask-length", type=int, default=0, metavar="N",
                   help="prefix length of each overlay subnet taken from the pools (default 24)")
    x.add_argument("--data-path-port", type=int, default=0, metavar="PORT",
                   help="UDP port of the VXLAN data path, 1024-49151 (default 4789)")
    x.set_defaults(func=cmd_swarm_init)
    x = sw.add_parser("join", help="join a swarm as a worker or manager (by the token)")
    x.add_argument("--token", required=True)
    x.add_argument("--advertise-addr", default="")
    x.add_argument("--listen-addr", default="")
    x.add_argument("addr", metavar="HOST:PORT")
    x.set_defaults(func=cmd_swarm_join)
    x = sw.add_parser("join-token", help="print a join token")
    x.add_argument("-q", "--quiet", action="store_true", help="only the token")
    x.add_argument("role", choices=["worker", "manager"])
    x.set_defaults(func=cmd_swarm_join_token)
    x = sw.add_parser("leave", help="leave the swarm")
    x.add_argument("-f", "--force", action="store_true")
    x.set_defaults(func=cmd_swarm_leave)
    add_swarm_commands(sw)

    nd = top.add_parser("node", help="manage nodes").add_subparsers(dest="cmd", required=True)
    x = nd.add_parser("ls", help="list nodes")
    x.add_argument("-q", "--quiet", action="store_true")
    x.set_defaults(func=cmd_node_ls)
    x = nd.add_parser("inspect", help="show nodes as JSON")
    x.add_argument("nodes", nargs="+")
    x.set_defaults(func=cmd_node_inspect)
    x = nd.add_parser("update", help="change a node's availability, role or labels")
    x.add_argument("--availability", choices=["active", "pause", "drain"])
    x.add_argument("--role", choices=["worker", "manager"])
    x.add_argument("--label-add", action="append", metavar="KEY=VALUE", help="add or change a node label")
    x.add_argument("--label-rm", action="append", metavar="KEY", help="remove a node label")
    x.add_argument("node")
    x.set_defaults(func=cmd_node_update)
    for verb, role in (("promote", "manager"), ("demote", "worker")):
        x = nd.add_parser(verb, help=f"make nodes {'managers' if role == 'manager' else 'workers'}")
        x.add_argument("nodes", nargs="+")
        x.set_defaults(func=cmd_node_role, role=role)
    add_node_commands(nd)

    sv = top.add_parser("service", help="manage services").add_subparsers(dest="cmd", required=True)
    x = sv.add_parser("create", help="create a service")
    x.add_argument("--name", default="")
    add_mode_args(x)
    x.add_argument("--replicas", type=int, default=None)
    x.add_argument("-d", "--detach", action="store_true", help="return at once instead of waiting to converge")
    x.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for convergence (default 300)")
    x.add_argument("--limit-memory", default="", metavar="BYTES", help="e.g. 64M")
    x.add_argument("--limit-cpu", default="", metavar="CPUS", help="e.g. 0.5")
    x.add_argument("--limit-pids", type=int, default=None)
    x.add_argument("-e", "--env", action="append", metavar="KEY=VALUE")
    x.add_argument("-l", "--label", action="append", metavar="KEY=VALUE")
    x.add_argument("--hostname", default="")
    x.add_argument("-w", "--workdir", default="")
    x.add_argument("-u", "--user", default="")
    x.add_argument("--entrypoint", default="")
    x.add_argument("--restart-condition", choices=["none", "on-failure", "any"])
    x.add_argument("--restart-delay", default="", metavar="DURATION")
    x.add_argument("--restart-max-attempts", type=int, default=None)
    x.add_argument("--stop-grace-period", default="", metavar="DURATION")
    x.add_argument("--stop-signal", default="")
    x.add_argument("--constraint", action="append", metavar="EXPR", help="e.g. node.hostname==h2")
    x.add_argument("--placement-pref", action="append", metavar="PREF", help="e.g. spread=node.labels.zone")
    x.add_argument("--replicas-max-per-node", type=int, default=None, metavar="N",
                   help="at most N tasks of the service per node (0 = no limit)")
    x.add_argument("--reserve-cpu", default="", metavar="CPUS", help="CPUs each task reserves, e.g. 0.5")
    x.add_argument("--reserve-memory", default="", metavar="BYTES", help="memory each task reserves, e.g. 64M")
    x.add_argument("--dry-run", action="store_true",
                   help="print where each task would go (or why not) and create nothing")
    x.add_argument("--network", action="append", metavar="NETWORK",
                   help="attach to an overlay network: NAME, or name=NAME,alias=ALIAS (repeatable)")
    x.add_argument("-p", "--publish", action="append", metavar="PORT",
                   help="publish a port: [published:]target[/proto], or mode=host,target=80,published=8080"
                        "[,protocol=udp] (repeatable; ingress mode: every node answers)")
    x.add_argument("--endpoint-mode", choices=["vip", "dnsrr"], default="",
                   help="vip (a virtual IP per network, the default) or dnsrr (DNS round robin)")
    x.add_argument("--log-driver", default="", metavar="DRIVER", help="json-file (the only one)")
    x.add_argument("--log-opt", action="append", metavar="KEY=VALUE",
                   help="json-file option: max-size=10m, max-file=3 (repeatable)")
    add_health_args(x)
    add_policy_args(x, create=True)
    x.add_argument("image", metavar="IMAGE")
    x.add_argument("args", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    x.set_defaults(func=cmd_service_create)
    x = sv.add_parser("update", help="update a service (its networks, published ports, replicas, image)")
    x.add_argument("-d", "--detach", action="store_true", help="return at once instead of waiting to converge")
    x.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for convergence (default 300)")
    x.add_argument("--network-add", action="append", metavar="NETWORK", help="NAME or name=NAME,alias=ALIAS")
    x.add_argument("--network-rm", action="append", metavar="NETWORK")
    x.add_argument("--publish-add", action="append", metavar="PORT", help="as service create --publish")
    x.add_argument("--publish-rm", action="append", metavar="PORT",
                   help="remove the published port with this target port (and protocol, mode)")
    x.add_argument("--endpoint-mode", choices=["vip", "dnsrr"], default="")
    x.add_argument("--replicas", type=int, default=None)
    x.add_argument("--image", default="")
    x.add_argument("--force", action="store_true", help="replace the tasks even if nothing changed")
    x.add_argument("--constraint-add", action="append", metavar="EXPR", help="add a placement constraint")
    x.add_argument("--constraint-rm", action="append", metavar="EXPR", help="remove a placement constraint")
    x.add_argument("--placement-pref-add", action="append", metavar="PREF", help="add a placement preference")
    x.add_argument("--placement-pref-rm", action="append", metavar="PREF", help="remove a placement preference")
    x.add_argument("--replicas-max-per-node", type=int, default=None, metavar="N")
    x.add_argument("--reserve-cpu", default="", metavar="CPUS")
    x.add_argument("--reserve-memory", default="", metavar="BYTES")
    x.add_argument("--dry-run", action="store_true",
                   help="print where each task would go (or why not) and change nothing")
    add_health_args(x)
    add_update_args(x)
    add_rebalance_args(x)
    x.add_argument("service", metavar="SERVICE")
    x.set_defaults(func=cmd_service_update)

    x = sv.add_parser("rollback", help="revert a service to its previous spec")
    x.add_argument("-d", "--detach", action="store_true", help="return at once instead of waiting to converge")
    x.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for convergence (default 300)")
    x.add_argument("service", metavar="SERVICE")
    x.set_defaults(func=cmd_service_rollback)
    x = sv.add_parser("ls", help="list services")
    x.add_argument("-q", "--quiet", action="store_true")
    x.set_defaults(func=cmd_service_ls)
    x = sv.add_parser("ps", help="list the tasks of services")
    x.add_argument("-q", "--quiet", action="store_true")
    x.add_argument("--no-trunc", action="store_true")
    x.add_argument("-f", "--filter", action="append", metavar="KEY=VALUE")
    x.add_argument("services", nargs="+", metavar="SERVICE")
    x.set_defaults(func=cmd_service_ps)
    x = sv.add_parser("inspect", help="show services as JSON")
    x.add_argument("services", nargs="+", metavar="SERVICE")
    x.set_defaults(func=cmd_service_inspect)
    x = sv.add_parser("scale", help="set the replicas of services")
    x.add_argument("-d", "--detach", action="store_true")
    x.add_argument("--timeout", type=float, default=300.0)
    x.add_argument("pairs", nargs="+", metavar="SERVICE=REPLICAS")
    x.set_defaults(func=cmd_service_scale)
    x = sv.add_parser("rm", help="remove services")
    x.add_argument("services", nargs="+", metavar="SERVICE")
    x.set_defaults(func=cmd_service_rm)
    x = sv.add_parser("logs", help="print the logs of a service's tasks")
    x.add_argument("-f", "--follow", action="store_true")
    x.add_argument("-n", "--tail", default="all")
    x.add_argument("-t", "--timestamps", action="store_true")
    x.add_argument("--raw", action="store_true", help="no task prefix")
    x.add_argument("--since", default="", metavar="TIME", help="lines from TIME on (10m, a date, seconds)")
    x.add_argument("service", metavar="SERVICE")
    x.set_defaults(func=cmd_service_logs)

    nw = top.add_parser("network", help="manage networks").add_subparsers(dest="cmd", required=True)
    x = nw.add_parser("create", help="create an overlay network (on a manager)")
    x.add_argument("-d", "--driver", default="overlay", help="overlay (the only driver; the default)")
    x.add_argument("--subnet", default="", metavar="CIDR", help="e.g. 10.20.0.0/24 (default: the next free /24)")
    x.add_argument("--gateway", default="", metavar="IP")
    x.add_argument("--ip-range", default="", metavar="CIDR", help="allocate task addresses from this sub-range")
    x.add_argument("--attachable", action="store_true")
    x.add_argument("--internal", action="store_true")
    x.add_argument("--ingress", action="store_true",
                   help="the routing mesh's network (one per swarm; swarm init makes `ingress`)")
    x.add_argument("--label", action="append", metavar="KEY=VALUE")
    x.add_argument("-o", "--opt", action="append", metavar="KEY=VALUE", help="driver option")
    x.add_argument("name", metavar="NAME")
    x.set_defaults(func=cmd_network_create)
    x = nw.add_parser("ls", help="list networks")
    x.add_argument("-q", "--quiet", action="store_true")
    x.add_argument("--no-trunc", action="store_true")
    x.add_argument("-f", "--filter", action="append", metavar="KEY=VALUE",
                   help="id, name, label, driver, scope (swarm|local), type (custom|builtin)")
    x.set_defaults(func=cmd_network_ls)
    x = nw.add_parser("inspect", help="show networks as JSON")
    x.add_argument("networks", nargs="+", metavar="NETWORK")
    x.set_defaults(func=cmd_network_inspect)
    x = nw.add_parser("rm", help="remove networks")
    x.add_argument("networks", nargs="+", metavar="NETWORK")
    x.set_defaults(func=cmd_network_rm)

    add_events_parser(top)

    im = top.add_parser("image", help="manage images").add_subparsers(dest="cmd", required=True)
    x = im.add_parser("load", help="load an OCI archive or `docker save` tar")
    x.add_argument("-i", "--input", default="", metavar="FILE")
    x.set_defaults(func=cmd_image_load)
    x = im.add_parser("pull", help="pull an image from a registry")
    x.add_argument("ref", metavar="NAME[:TAG]")
    x.set_defaults(func=cmd_image_pull)
    x = im.add_parser("ls", help="list images")
    x.set_defaults(func=cmd_image_ls)
    return p


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of ``shoal``; returns the exit status (0 ok, 1 daemon/usage error, 2 bad flags)."""
    args = build_parser().parse_args(argv)
    stream = out or sys.stdout
    try:
        c = Client(args.host)
        return int(args.func(c, args, stream))
    except APIError as e:
        stream.flush()
        sys.stderr.write(f"Error response from daemon: {e.message}\n")
        return 1
    except ConnectError as e:
        sys.stderr.write(f"{e}\n")
        return 1
    except (UsageError, ValueError) as e:
        sys.stderr.write(f"shoal: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
