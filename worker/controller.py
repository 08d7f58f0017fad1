"""The task controller: drives one task on this node, one state forward per step.

Follows swarmkit's ``agent/exec/controller.go`` ``Do``. :meth:`TaskController.do` is the step
function: it reads the task's desired state (``DesiredState``; ``remove`` once the task left the
assignment set) and what was observed (the last reported state, the container's runtime status,
whether it has a health check), asks the pure :func:`worker.transitions.next_action` for ONE
:class:`worker.transitions.Action`, performs its I/O (runtime, bridge, overlay, DNS calls) and
returns the state it reported, or None when nothing moved. The run loop calls it until the task is
removed, waiting for an event (an assignment change, the container's exit, a health change) when
the decision is ``WAIT``; ``WATCH`` itself waits for those events::

    new|pending|assigned → accepted → preparing → (prepare: bridge, pull, create)
    → starting → running → complete (exit 0) | failed ("task: non-zero exit (N)")

with ``rejected`` for errors before ``starting`` (image pull, create) and ``failed`` for errors at
or after it. When the desired state becomes ``shutdown`` or ``remove`` the container is stopped
(StopSignal, then SIGKILL after StopGracePeriod) and ``shutdown`` is reported; ``remove`` (or the
task vanishing from the assignment set) also removes the container and its network. States only
move forward (SWARM-FACTS 1.1; a backward report is refused and logged); each forward move is
reported once, as ``{"Timestamp", "State", "Message", "Err"?, "ContainerStatus"?}``. With a
health check (:mod:`worker.health`) ``starting`` lasts until the first passing probe; an
unhealthy container is stopped and its task fails ("task: non-zero exit (N): dockerexec:
unhealthy container").

An exception from a step (a bad spec, a runtime error) fails the task (``rejected``/``failed``
with the error's text as ``Err``) and the loop retries later (backoff 0.5 s doubling to 30 s, or at
the next change), so a step that keeps failing (e.g. remove) does not spin.

Container IDs are derived from task IDs (``sha256("shoal-task:" + task_id)``), so after a daemon
restart a task's container is found again without any state of the executor's own; containers
also carry Docker's swarm labels (``com.docker.swarm.task.id`` …). The executor
(:mod:`worker.executor`) keeps the controllers by task and the node-wide state they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import fields as dc_fields
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from agent_runtime.spec import ContainerSpec  # the runtime's dataclass (docs/contracts.md, agent_runtime)
from overlaynet.dns.server import Endpoint as DnsEndpoint
from overlaynet.driver import EndpointConfig, NetworkConfig
from shoal.base.containerrules import parse_extra_host
from shoal.base.logopts import check_driver, check_options
from shoal.base.taskstate import STATE_ORDER, TERMINAL_STATES, state_order
from shoal.base.util import now_rfc3339, wait_timeout
from shoal.base.views import Node, Task
from worker import dns as wdns
from worker import health as whealth
from worker import overlay as ov
from worker import transitions as tr
from worker.transitions import Action

if TYPE_CHECKING:
    from worker.executor import Executor

log = logging.getLogger("shoal.worker.controller")

T = TypeVar("T")

#: The messages swarmkit's agent writes with each state.
MESSAGES = {"accepted": "accepted", "preparing": "preparing", "starting": "starting", "running": "started",
            "complete": "finished", "shutdown": "shutdown", "failed": "started", "rejected": "preparing"}

DEFAULT_STOP_GRACE_S = 10.0
#: How long ``runtime.start`` may take before the task fails (unless the container runs anyway).
DEFAULT_START_TIMEOUT_S = 60.0
LABEL_TASK = "com.docker.swarm.task.id"
LABEL_SERVICE = "com.docker.swarm.service.id"
LABEL_NODE = "com.docker.swarm.node.id"


def container_id_for(task_id: str) -> str:
    """Return the 64-hex container ID of ``task_id``'s container (sha256 of ``"shoal-task:" + task_id``)."""
    return hashlib.sha256(f"shoal-task:{task_id}".encode()).hexdigest()


async def _maybe_await(x: Any) -> Any:
    if inspect.isawaitable(x):
        return await x
    return x


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Await ``fn(*args)`` if it is a coroutine function, else run it in a thread (it may do file I/O)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    return await _maybe_await(await asyncio.to_thread(fn, *args))


def _stop_grace(task: dict[str, Any]) -> float:
    """Seconds of the task's ``StopGracePeriod`` (ns; :data:`DEFAULT_STOP_GRACE_S` when unset)."""
    grace_ns = Task(task).container_spec.get("StopGracePeriod")
    try:
        return DEFAULT_STOP_GRACE_S if grace_ns is None else max(0.0, int(grace_ns) / 1e9)
    except (TypeError, ValueError):
        return DEFAULT_STOP_GRACE_S


class _Interrupted(Exception):
    """The desired state moved to shutdown/remove while an operation was in flight."""


def runtime_mounts(mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn the API's ``ContainerSpec.Mounts`` (``Type`` bind | tmpfs) into the runtime's mount dicts
    (``agent_runtime.spec.ContainerSpec.mounts``). A bind ``Source`` must be an absolute path that
    exists on this node (``BindOptions.CreateMountpoint`` creates a missing directory, as Docker
    API 1.42+). Raises ValueError (the task is then ``rejected`` with this message), with moby's
    wording (MOBY: daemon/cluster/executor/container/validate.go, volume/mounts/linux_parser.go)."""
    out: list[dict[str, Any]] = []
    for m in mounts:
        mtype, target = m.get("Type"), m.get("Target")
        if not isinstance(target, str) or not target.startswith("/"):
            raise ValueError(f"invalid mount target, must be an absolute path: {target}")
        read_only = bool(m.get("ReadOnly"))
        if mtype == "bind":
            source = m.get("Source")
            if not isinstance(source, str) or not source.startswith("/"):
                raise ValueError(f"invalid bind mount source, must be an absolute path: {source}")
            bo = m.get("BindOptions") or {}
            if not os.path.exists(source):
                if not bo.get("CreateMountpoint"):
                    raise ValueError(f'invalid mount config for type "bind": bind source path does not exist: '
                                     f"{source} (create it on this node, or set BindOptions.CreateMountpoint)")
                os.makedirs(source, exist_ok=True)
            out.append({"type": "bind", "source": source, "target": target, "read_only": read_only,
                        "propagation": bo.get("Propagation") or None, "recursive": not bo.get("NonRecursive")})
        elif mtype == "tmpfs":
            to = m.get("TmpfsOptions") or {}
            out.append({"type": "tmpfs", "target": target, "read_only": read_only,
                        "size_bytes": to.get("SizeBytes") or None, "mode": to.get("Mode") or None})
        else:
            raise ValueError(f"mount type {mtype!r} for {target} is not supported by shoal: use bind or tmpfs")
    return out


class Step(NamedTuple):
    """What one :meth:`TaskController.do` did: the ``action`` taken and the ``state`` it reported
    (None: no new state)."""

    action: Action
    state: str | None


class TaskController:
    """Drives one task (see the module docstring): ``start()``, ``update(task)``, ``vanish()``,
    ``cancel()``, ``await join()``; ``state`` is the last state observed or reported."""

    def __init__(self, ex: Executor, task: dict[str, Any], synthetic: bool = False) -> None:
        self.ex = ex
        self.task = task
        self.tid: str = task["ID"]
        self.cid = container_id_for(self.tid)
        self.synthetic = synthetic  # made by recover() before the task's spec was known
        self.state: str = Task(task).status.get("State") or "new"
        self.vanished = False
        self.cstate: Any = None  # the runtime's ContainerState, when a container exists
        self.exit_code: int | None = None
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._exit_wait: asyncio.Task[int] | None = None
        self._net_attached = False
        self._overlay_eps: list[EndpointConfig] = []  # overlay endpoints attached (or tried) in prepare
        self._overlay_recovered = False  # the container was found at start: its endpoints are the task's
        self._dns_ep: DnsEndpoint | None = None  # the embedded DNS serving this container (overlay tasks)
        self._dns_recovered = False  # _recover_dns tried for the container found at start
        self._last_status: dict[str, Any] | None = None
        self._last_sent = 0.0
        self.health: whealth.ContainerHealth | None = None  # the running container's health check
        self._health_looked = False  # _health_setup ran (once: it reads the image's config)

    # ------------------------------------------------------------ plumbing
    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"task-{self.tid}")

    def update(self, task: dict[str, Any]) -> None:
        was_recovered = self.synthetic
        self.task = task
        self.synthetic = False
        self.vanished = False
        # The manager is behind what we observed: a report may have been lost (recover() reports before
        # the session is up).  Send the last status again: at once for a recovered task, else when it
        # is more than 5 s old (reports in flight are normally a few batches behind, not 5 s).
        seen = str(Task(task).status.get("State") or "new")
        if (self._last_status is not None and state_order(seen, 0) < state_order(self.state, 0)
                and (was_recovered or time.monotonic() - self._last_sent > 5.0)):
            self._last_sent = time.monotonic()
            asyncio.get_running_loop().create_task(self.ex._send(self.tid, dict(self._last_status)))
        self._wake.set()

    def vanish(self) -> None:
        self.vanished = True
        self._wake.set()

    def cancel(self) -> None:
        if self.health is not None:
            self.health.stop()
        if self._runner is not None:
            self._runner.cancel()
        if self._exit_wait is not None:
            self._exit_wait.cancel()

    async def join(self) -> None:
        for t in (self._runner, self._exit_wait):
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def desired(self) -> str:
        """The desired state acted on: ``remove`` once the task left the assignment set."""
        return tr.effective_desired(str(self.task.get("DesiredState") or "running"), self.vanished)

    def _stopping(self) -> bool:
        return tr.stopping(self.desired())

    async def report(self, state: str, err: str | None = None, message: str | None = None) -> None:
        """Report ``state`` once (no-op when it is the current state); a backward move is refused
        (logged as an error: it is a bug)."""
        if state == self.state:
            return
        if not tr.is_forward(self.state, state):
            log.error("task %s: refusing to report %s after %s (states only move forward)", self.tid, state,
                      self.state)
            return
        self.state = state
        status: dict[str, Any] = {"Timestamp": now_rfc3339(), "State": state,
                                  "Message": message or MESSAGES.get(state, state)}
        if err is not None:
            status["Err"] = err
        if self.cstate is not None or state in ("running", "complete", "failed", "shutdown"):
            pid = int(getattr(self.cstate, "pid", 0) or 0) if state == "running" else 0
            status["ContainerStatus"] = {"ContainerID": self.cid if self.cstate is not None else "",
                                         "PID": pid, "ExitCode": self.exit_code or 0}
            if self.health is not None:  # Docker's State.Health, for `docker inspect` of the task
                status["ContainerStatus"]["Health"] = self.health.to_docker()
        log.info("task %s -> %s%s", self.tid, state, f" ({err})" if err else "")
        self._last_status, self._last_sent = status, time.monotonic()
        await self.ex._send(self.tid, status)

    async def _interruptible(self, aw: Awaitable[T]) -> T:
        """Await ``aw``; cancel it and raise _Interrupted if the task is asked to stop meanwhile."""
        op: asyncio.Future[T] = asyncio.ensure_future(aw)
        try:
            while True:
                if self._stopping():
                    raise _Interrupted()
                self._wake.clear()
                waker: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait([op, waker], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waker.cancel()
                if op.done():
                    return op.result()
        except BaseException:
            if not op.done():
                op.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await op
            raise

    # ------------------------------------------------------------ main loop
    async def _run(self) -> None:
        """Call :meth:`do` until the task is removed; wait for an event after ``WAIT``."""
        backoff = 0.5
        try:
            self.cstate = await self.ex._container_state(self.cid)
            if self.cstate is not None:
                self._net_attached = True  # whatever it had stays until removal
                self._overlay_recovered = True
            while True:
                self._wake.clear()
                try:
                    step = await self.do()
                    backoff = 0.5
                except _Interrupted:
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.exception("task %s in state %s: %s", self.tid, self.state, e)
                    try:
                        await self._fail(str(e) or type(e).__name__)
                    except Exception:
                        log.exception("task %s: reporting the failure failed", self.tid)
                    # do not spin on a step that keeps failing (e.g. remove): retry later or on a change
                    with contextlib.suppress(TimeoutError):
                        await wait_timeout(self._wake.wait(), backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                if step.action is Action.REMOVE:
                    return
                if step.action is Action.WAIT:
                    await self._wake.wait()  # an assignment change (update/vanish) sets it
        except asyncio.CancelledError:
            pass
        finally:
            if self._exit_wait is not None:
                self._exit_wait.cancel()

    def observed(self) -> tr.Observed:
        """What the decision sees: the last state, the container's status, recovered, health check."""
        container: str | None = None
        if self.cstate is not None:
            container = str(getattr(self.cstate, "status", None) or "unknown")
        return tr.Observed(state=self.state, container=container, recovered=self.synthetic,
                           health_check=self.health is not None)

    def next_action(self) -> Action:
        """The step :meth:`do` would take now (:func:`worker.transitions.next_action`)."""
        return tr.next_action(self.desired(), self.observed())

    async def do(self) -> Step:
        """One step: decide (:meth:`next_action`) and perform it; the state reported moves at most
        one forward. ``WAIT`` does nothing here (the run loop waits for an event); ``WATCH`` waits
        for the container's exit, a health change or a task change. Returns the :class:`Step`
        (``state`` None when nothing was reported). Raises what the runtime/network calls raise
        (the run loop fails the task) and ``_Interrupted`` when the task is asked to stop during
        a prepare or start."""
        before = self.state
        action = self.next_action()
        await self._perform(action)
        return Step(action, self.state if self.state != before else None)

    async def _perform(self, action: Action) -> None:
        if action is Action.SHUTDOWN:
            await self._shutdown()
        elif action is Action.REMOVE:
            await self._remove()
        elif action is Action.ACCEPT:
            await self.report("accepted")
        elif action is Action.MARK_PREPARING:
            await self.report("preparing")
        elif action is Action.PREPARE:
            await self._interruptible(self._prepare())
        elif action is Action.MARK_STARTING:
            await self.report("starting")
        elif action is Action.START:
            await self._start()
        elif action is Action.OBSERVE:
            await self._observe_container()
        elif action is Action.WATCH:
            await self._watch_running()  # until exit, (un)healthy or a change of the task
        elif action is Action.FAIL_MISSING:
            await self._fail(f"container {self.cid[:12]} not found on this node")
        # Action.WAIT: nothing to do here

    async def _fail(self, err: str) -> None:
        if self.state in TERMINAL_STATES:
            return
        await self.report(tr.fail_state(self.state), err=err)
        await self._release_network()

    async def _idle(self) -> None:
        await self._wake.wait()

    # ------------------------------------------------------------- actions
    async def _prepare(self) -> None:
        spec = Task(self.task).container_spec
        image = spec.get("Image")
        if not image or not isinstance(image, str):
            raise ValueError("task spec has no ContainerSpec.Image")
        # network
        addr, subnet, gateway = self._network()
        overlays = self._overlay_configs(addr)
        netns_path: str | None = None
        if addr is not None:
            if subnet is None or gateway is None:
                raise ValueError(
                    "task has an address but the node has no bridge subnet (Node.ShoalBridge) "
                    "and the attachment no IPAMOptions.Configs")
            await _in_thread(self.ex.bridge.ensure, subnet, gateway)
        # image: pull unless present (the store de-duplicates concurrent pulls)
        if await _maybe_await(self.ex.images.get(image)) is None:
            # shielded: another task may share this pull; leaving early must not cancel it
            await asyncio.shield(self.ex.images.pull(image))
        try:
            if addr is not None:
                netns_path = await _in_thread(self.ex.bridge.attach, self.cid, addr, gateway)
                self._net_attached = True
            if overlays:
                assert netns_path is not None
                await self._attach_overlays(overlays, netns_path)
                await self._serve_dns([cfg.network_id for cfg, _, _ in overlays], netns_path)
                await self.ex.net.task_up(self.tid, netns_path, [cfg.network_id for cfg, _, _ in overlays])
            cspec = self._container_spec(spec, image, netns_path, addr, embedded_dns=bool(overlays))
            await self._health_setup(spec, image)
            self.cstate = await self.ex.runtime.create(cspec)
        except BaseException:
            await self._release_network()
            raise

    def _network(self) -> tuple[str | None, str | None, str | None]:
        # the local bridge's attachment: the first one that is not an overlay's (NetworksAttachments[0])
        atts = [a for a in self.task.get("NetworksAttachments") or []
                if not (isinstance(a, dict) and ov.is_overlay(a.get("Network")))]
        if not atts:
            return None, None, None
        att = atts[0]
        addrs = att.get("Addresses") or []
        if not addrs:
            return None, None, None
        sb = Node(self.ex.node).bridge
        subnet, gateway = sb.get("Subnet"), sb.get("Gateway")
        if not subnet or not gateway:
            cfgs = ((att.get("Network") or {}).get("IPAMOptions") or {}).get("Configs") or []
            if cfgs:
                subnet, gateway = cfgs[0].get("Subnet"), cfgs[0].get("Gateway")
        return str(addrs[0]), subnet, gateway

    def _overlay_configs(self, addr: str | None) -> list[tuple[NetworkConfig, str, str]]:
        """``[(config, address, label)]`` of the task's overlay attachments, in order; [] for none.
        Raises ValueError naming the network when one cannot be set up here."""
        atts = ov.overlay_attachments(self.task)
        if not atts:
            return []
        if self.ex.overlay is None:
            raise ValueError(f"network {atts[0].label}: overlay networks are not supported on this node "
                             "(no overlay driver)")
        if addr is None:
            raise ValueError(f"network {atts[0].label}: the task has no local bridge address (eth0), so "
                             "it has no network namespace to attach the overlay to")
        dp = ov.data_path_addr(self.ex.node)
        return [(ov.network_config(a.network, dp, self.ex.data_path_port), a.address, a.label) for a in atts]

    async def _attach_overlays(self, overlays: list[tuple[NetworkConfig, str, str]], netns_path: str) -> None:
        """``ensure_network`` + ``attach`` each overlay as ``eth1``, ``eth2``… in order; a failure
        raises RuntimeError naming the network (the caller releases what was made)."""
        for i, (cfg, address, label) in enumerate(overlays, start=1):
            ep = EndpointConfig(cfg.network_id, self.tid, netns_path, address, ifname=f"eth{i}")
            self._overlay_eps.append(ep)  # released even if attach fails half-way (detach is idempotent)
            try:
                await self.ex._overlay_attach(cfg, ep)
            except Exception as e:
                raise RuntimeError(f"attaching to network {label} failed: {e or type(e).__name__}") from e

    async def _serve_dns(self, network_ids: list[str], netns_path: str) -> None:
        """The embedded DNS at 127.0.0.11:53 in the container's namespace, for ``network_ids``.
        Raises RuntimeError saying so when it cannot be set up (the caller releases the network)."""
        try:
            udp, tcp = await _in_thread(self.ex._dns_sockets, netns_path)
            self._dns_ep = await self.ex.resolver.serve_socket(udp, tcp, networks=network_ids)
        except Exception as e:
            raise RuntimeError(f"setting up the embedded DNS server ({wdns.DNS_ADDR}:{wdns.DNS_PORT}) in the "
                               f"container's network namespace failed: {e or type(e).__name__}") from e

    async def _recover_dns(self) -> None:
        """A running container found at start (a daemon restart) on overlay networks: its embedded
        DNS again, in ``/proc/<pid>/ns/net`` (once; a failure is logged, the container keeps running)."""
        if self._dns_ep is not None or self._dns_recovered or not self._overlay_recovered:
            return
        try:
            nids = [a.network_id for a in ov.overlay_attachments(self.task)]
        except ValueError:
            nids = []
        pid = int(getattr(self.cstate, "pid", 0) or 0)
        if not nids or pid <= 0 or getattr(self.cstate, "status", None) != "running":
            return
        self._dns_recovered = True
        try:
            await self._serve_dns(nids, f"/proc/{pid}/ns/net")
            await self.ex.net.task_up(self.tid, f"/proc/{pid}/ns/net", nids)
        except Exception as e:
            log.warning("task %s: %s", self.tid, e)

    async def _stop_dns(self) -> None:
        ep, self._dns_ep = self._dns_ep, None
        if ep is not None:
            try:
                await ep.close()
            except Exception:
                log.exception("task %s: closing its embedded DNS failed", self.tid)

    def _overlay_endpoints(self) -> list[EndpointConfig]:
        """What to detach: the endpoints made in prepare, else (a recovered container) the task's."""
        if self._overlay_eps or self.ex.overlay is None:
            return list(self._overlay_eps)
        try:
            atts = ov.overlay_attachments(self.task)
        except ValueError:
            return []
        return [EndpointConfig(a.network_id, self.tid, "", a.address) for a in atts]

    async def _release_overlays(self) -> None:
        eps = self._overlay_endpoints()
        self._overlay_eps = []
        self._overlay_recovered = False
        for ep in eps:
            try:
                await self.ex._overlay_detach(ep)
            except Exception:
                log.exception("task %s: detaching from network %s failed", self.tid, ep.network_id[:12])

    def _container_spec(self, spec: dict[str, Any], image: str, netns_path: str | None,
                        addr: str | None, embedded_dns: bool = False) -> Any:
        res = Task(self.task).limits
        ip = addr.split("/")[0] if addr else None
        hostname = spec.get("Hostname") or None
        labels = {LABEL_TASK: self.tid}
        if self.task.get("ServiceID"):
            labels[LABEL_SERVICE] = str(self.task["ServiceID"])
        if self.ex.node.get("ID"):
            labels[LABEL_NODE] = str(self.ex.node["ID"])
        hosts: list[tuple[str, str]] = []
        for line in spec.get("Hosts") or []:  # "IP_ADDRESS HOSTNAME [ALIAS…]" or "HOSTNAME:IP"
            hosts.extend(parse_extra_host(str(line)))
        dns = spec.get("DNSConfig") or {}
        # swarmkit's Task.LogDriver (the service's or the cluster's default) wins over the spec's
        driver = self.task.get("LogDriver") or Task(self.task).log_driver
        if not isinstance(driver, dict):
            raise ValueError(f"task LogDriver must be an object, got {type(driver).__name__}")
        check_driver(driver.get("Name"))
        log_opts = check_options(driver.get("Options"))
        caps_add = spec.get("CapabilityAdd") or []
        caps_drop = spec.get("CapabilityDrop") or []
        kw: dict[str, Any] = dict(
            id=self.cid, image=image, command=spec.get("Command") or None, args=spec.get("Args") or None,
            env=list(spec.get("Env") or []), cwd=spec.get("Dir") or None, user=spec.get("User") or None,
            hostname=hostname, netns=netns_path, hosts=hosts,
            memory_bytes=res.get("MemoryBytes") or None, nano_cpus=res.get("NanoCPUs") or None,
            pids_limit=res.get("Pids") or None, labels=labels,
            stop_signal=spec.get("StopSignal") or "SIGTERM",
            read_only=bool(spec.get("ReadOnly")), mounts=runtime_mounts(spec.get("Mounts") or []),
            dns=list(dns.get("Nameservers") or []), dns_search=list(dns.get("Search") or []),
            dns_options=[str(o) for o in dns.get("Options") or []],
            cap_add=[str(c) for c in caps_add], cap_drop=[str(c) for c in caps_drop],
            ulimits=[{"name": str(u.get("Name", "")), "soft": int(u.get("Soft", 0)), "hard": int(u.get("Hard", 0))}
                     for u in spec.get("Ulimits") or []],
            sysctls={str(k): str(v) for k, v in (spec.get("Sysctls") or {}).items()},
            groups=[str(g) for g in spec.get("Groups") or []],
            oom_score_adj=int(spec["OomScoreAdj"]) if spec.get("OomScoreAdj") is not None else None,
            log_opts=log_opts)
        if embedded_dns:  # the embedded DNS answers, and forwards to the host's resolvers
            kw["dns"] = [wdns.DNS_ADDR]
            kw["dns_options"] = wdns.dns_options(kw["dns_options"])
        names = {f.name for f in dc_fields(ContainerSpec)}
        if ip is not None:
            if "ip" in names:
                kw["ip"] = ip  # the runtime writes "<ip> <hostname>" to /etc/hosts
            else:
                kw["hosts"].append((hostname or self.cid[:12], ip))
        return ContainerSpec(**{k: v for k, v in kw.items() if k in names})

    async def _start(self) -> None:
        try:
            self.cstate = await self._interruptible(
                asyncio.wait_for(self.ex.runtime.start(self.cid), self.ex.start_timeout))
        except TimeoutError:
            st = await self.ex._container_state(self.cid)
            if getattr(st, "status", None) != "running":
                self.cstate = st
                await self._fail(f"container {self.cid[:12]} did not start within {self.ex.start_timeout:g} s")
                return
            log.warning("task %s: runtime.start did not return within %g s but the container runs",
                        self.tid, self.ex.start_timeout)
            self.cstate = st
        except _Interrupted:
            raise  # shutdown asked for meanwhile: the shutdown step stops whatever was started
        except Exception as e:
            self.cstate = await self.ex._container_state(self.cid)
            code = getattr(self.cstate, "exit_code", None)
            if code is not None:
                self.exit_code = int(code)
            await self._fail(str(e) or type(e).__name__)
            return
        if getattr(self.cstate, "status", None) == "exited":
            # exited before start returned (e.g. 127: command not found): no "running" to report
            code = self.cstate.exit_code
            await self._exited(int(code if code is not None else -1), getattr(self.cstate, "error", None))
            return
        self._ensure_exit_wait()
        if self.health is not None:  # with a health check: "starting" until the first passing probe
            self.health.start()
            return
        await self.report("running")

    async def _observe_container(self) -> None:
        """Report the state the existing container is really in (after a restart)."""
        st = await self.ex._container_state(self.cid)
        self.cstate = st
        if st is None:
            await self._fail(f"container {self.cid[:12]} not found on this node")
        elif st.status == "running":
            self._ensure_exit_wait()
            await self.report("running")
        elif st.status == "exited":
            await self._exited(int(st.exit_code if st.exit_code is not None else -1))
        elif st.status == "created":
            if state_order(self.state, 0) < STATE_ORDER["starting"]:
                await self.report("starting")  # the next step starts it
            else:
                await self._start()
        else:
            await self._idle()

    def _ensure_exit_wait(self) -> None:
        if self._exit_wait is None:
            self._exit_wait = asyncio.get_running_loop().create_task(self.ex.runtime.wait(self.cid))

    async def _watch_running(self) -> None:
        """Wait for the container to exit or for a change of the task; report the exit."""
        await self._recover_dns()
        self._ensure_exit_wait()
        assert self._exit_wait is not None
        if self.health is None and not self.synthetic:  # a container found at start: its check again
            await self._health_setup(Task(self.task).container_spec, None)
        if self.health is not None:
            self.health.start()
        waker = asyncio.ensure_future(self._wake.wait())
        hc = asyncio.ensure_future(self.health.changed.wait()) if self.health is not None else waker
        try:
            await asyncio.wait({self._exit_wait, waker, hc}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
            hc.cancel()
        if self._exit_wait.done() and not self._stopping():
            await self._exited(self._exit_result())
        elif self.health is not None and not self._stopping():
            self.health.changed.clear()
            if self.health.status == whealth.UNHEALTHY:
                await self._unhealthy()
            elif self.health.status == whealth.HEALTHY and self.state == "starting":
                await self.report("running")

    def _exit_result(self) -> int:
        assert self._exit_wait is not None
        try:
            return int(self._exit_wait.result())
        except Exception as e:
            log.warning("task %s: wait for container failed: %s", self.tid, e)
            return -1

    async def _exited(self, code: int, detail: str | None = None) -> None:
        """Report ``complete`` (0) or ``failed`` with Swarm's Err; ``detail`` (the runtime's error) goes
        to Message."""
        self.exit_code = code
        self.cstate = await self.ex._container_state(self.cid) or self.cstate
        if detail is None:
            detail = getattr(self.cstate, "error", None)
        if code == 0:
            await self.report("complete")
        else:
            # the runtime's own error (e.g. `exec: "x": executable file not found in $PATH`) is
            # what a user needs in `service ps`'s ERROR column, as Docker shows it
            err = f"starting container failed: {detail}" if detail else f"task: non-zero exit ({code})"
            await self.report("failed", err=err, message=detail or None)
        await self._release_network()

    async def _health_setup(self, spec: dict[str, Any], image: str | None) -> None:
        """``self.health`` from the spec's and the image's check (:func:`worker.health.task_config`);
        None without a check or when the runtime cannot exec. Raises ValueError for a bad check."""
        if self._health_looked or not hasattr(self.ex.runtime, "exec"):
            return
        self._health_looked = True
        image = image or spec.get("Image")
        img = await _maybe_await(self.ex.images.get(image)) if isinstance(image, str) and image else None
        try:
            cfg = whealth.task_config(spec, getattr(img, "config", None))
        except whealth.HealthConfigError as e:
            raise ValueError(str(e)) from e
        if cfg is not None:
            self.health = whealth.ContainerHealth(cfg, self.ex.runtime, self.cid)

    async def _unhealthy(self) -> None:
        """The check failed: stop the container (StopSignal, then SIGKILL after the grace period) and
        fail the task with Swarm's error ``task: non-zero exit (N): dockerexec: unhealthy container``."""
        spec = Task(self.task).container_spec
        grace = _stop_grace(self.task)
        assert self.health is not None
        self.health.stop()
        log.warning("task %s: unhealthy container, stopping it", self.tid)
        await self.ex.runtime.stop(self.cid, grace, spec.get("StopSignal") or "SIGTERM")
        code = -1
        if self._exit_wait is not None:
            try:
                code = int(await asyncio.wait_for(asyncio.shield(self._exit_wait), grace + 10.0))
            except (TimeoutError, Exception) as e:
                log.warning("task %s: no exit code after stop: %s", self.tid, e)
        self.exit_code = code
        self.cstate = await self.ex._container_state(self.cid) or self.cstate
        await self.report("failed", err=f"task: non-zero exit ({code}): dockerexec: unhealthy container")
        await self._release_network()

    async def _shutdown(self) -> None:
        spec = Task(self.task).container_spec
        grace = _stop_grace(self.task)
        signal = spec.get("StopSignal") or "SIGTERM"
        self.cstate = await self.ex._container_state(self.cid)
        if self.cstate is not None and self.cstate.status == "running":
            await self.ex.runtime.stop(self.cid, grace, signal)
            self._ensure_exit_wait()
            assert self._exit_wait is not None
            try:
                self.exit_code = int(await asyncio.wait_for(asyncio.shield(self._exit_wait), grace + 10.0))
            except (TimeoutError, Exception) as e:
                log.warning("task %s: no exit code after stop: %s", self.tid, e)
            self.cstate = await self.ex._container_state(self.cid)
        elif self.cstate is not None and self.cstate.exit_code is not None:
            self.exit_code = int(self.cstate.exit_code)
        await self.report("shutdown")
        await self._release_network()

    async def _release_network(self) -> None:
        if self.health is not None:
            self.health.stop()
        await self.ex.net.task_down(self.tid)
        await self._stop_dns()
        if self._overlay_eps or self._overlay_recovered:
            await self._release_overlays()
        if self._net_attached:
            await _in_thread(self.ex.bridge.detach, self.cid)
            self._net_attached = False

    async def _remove(self) -> None:
        if await self.ex._container_state(self.cid) is not None:
            await self.ex.runtime.remove(self.cid)
        self.cstate = None
        await self.ex.net.task_down(self.tid)
        await self._stop_dns()
        await self._release_overlays()  # idempotent; no driver call for a task without overlays
        await _in_thread(self.ex.bridge.detach, self.cid)  # idempotent, also for half-made ones
        self._net_attached = False
        self.ex._recovered.pop(self.cid, None)
        self.ex._forget(self.tid, self)
        if not self.vanished:
            self.ex._removed.add(self.tid)


