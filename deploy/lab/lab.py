"""The lab: several Shoal hosts on one machine, as network namespaces on one bridge.

Layout (all names start with ``shoal`` so ``down`` can find them):

- bridge ``shoal-lab0`` in the root netns with 10.99.0.1/24 (gateway) and 10.99.0.2/24 (registry);
- host i (1..N): netns ``shoal-hI`` (``/run/netns/shoal-hI``), veth ``shoal-lab-hI`` on the bridge,
  ``eth0`` = 10.99.0.(10+i)/24 inside, lo up, default route via 10.99.0.1;
- the underlay's MTU (the bridge and both ends of every host's veth): the kernel's default (1500)
  unless ``up(mtu=N)`` / ``shoal-lab up --mtu N`` sets it; recorded in state.json;
- registry: Debian's ``docker-registry serve`` on 10.99.0.2:5000, storage under
  /var/lib/shoal-lab/registry, holding ``10.99.0.2:5000/busybox:latest`` (pushed with skopeo);
- one ``shoald`` per host, in that host's netns and its own UTS namespace (hostname ``hI``),
  data root /var/lib/shoal-lab/hI, exec root /run/shoal-lab/hI, socket /run/shoal-lab/hI.sock,
  cgroup parent ``shoal-lab/hI``, log /var/log/shoal-lab/hI.log; PIDs in /run/shoal-lab/state.json.

Everything here shells out to iproute2 (``ip(8)``), ``nsenter(1)``/``unshare(1)`` (util-linux),
``nft(8)``, ``umount(8)`` and skopeo, as root. Errors raise ``LabError`` with what failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.images import build_busybox
from shoal.cli.client import Client

BRIDGE = "shoal-lab0"
GATEWAY = "10.99.0.1"
REGISTRY_IP = "10.99.0.2"
REGISTRY = f"{REGISTRY_IP}:5000"
IMAGE = f"{REGISTRY}/busybox:latest"
DATA = Path("/var/lib/shoal-lab")
RUN = Path("/run/shoal-lab")
LOGS = Path("/var/log/shoal-lab")
STATE = RUN / "state.json"
REGISTRY_DIR = DATA / "registry"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "shoal-lab"
NETNS_DIR = Path("/run/netns")


class LabError(Exception):
    """A lab step failed; the message says which and how to look further (log paths)."""


def log(msg: str) -> None:
    """Print a progress line (flushed, so it interleaves with child output)."""
    print(msg, flush=True)


def run(cmd: Sequence[str], check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; raise LabError with its stderr when ``check`` and it fails."""
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise LabError(f"{cmd[0]} not found: install it (make demo installs the Debian packages)") from e
    if check and res.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


def host_name(i: int) -> str:
    """``h1``, ``h2``, …"""
    return f"h{i}"


def netns_name(i: int) -> str:
    """``shoal-h1``, …"""
    return f"shoal-h{i}"


def host_ip(i: int) -> str:
    """Underlay address of host i: 10.99.0.(10+i)."""
    return f"10.99.0.{10 + i}"


def socket_path(host: str) -> Path:
    """The Docker API socket of lab host ``hN``."""
    return RUN / f"{host}.sock"


def shoald_path() -> Path:
    """The ``shoald`` next to the running interpreter (the project's virtualenv)."""
    return Path(sys.executable).parent / "shoald"


@dataclass
class HostState:
    """One lab host as recorded in state.json."""

    name: str
    index: int
    ip: str
    netns: str
    pid: int | None = None
    argv: list[str] = field(default_factory=list)


@dataclass
class LabState:
    """The lab as recorded in /run/shoal-lab/state.json."""

    hosts: list[HostState] = field(default_factory=list)
    registry_pid: int | None = None
    runtime: str = "shoal"
    heartbeat_period: float | None = None
    mtu: int | None = None

    def save(self) -> None:
        """Write state.json atomically."""
        RUN.mkdir(parents=True, exist_ok=True)
        tmp = STATE.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "hosts": [vars(h) for h in self.hosts], "registry_pid": self.registry_pid,
            "runtime": self.runtime, "heartbeat_period": self.heartbeat_period, "mtu": self.mtu}, indent=2))
        os.replace(tmp, STATE)

    @classmethod
    def load(cls) -> LabState | None:
        """Read state.json; None when there is no lab."""
        try:
            raw = json.loads(STATE.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return cls(hosts=[HostState(**h) for h in raw.get("hosts", [])], registry_pid=raw.get("registry_pid"),
                   runtime=raw.get("runtime", "shoal"), heartbeat_period=raw.get("heartbeat_period"),
                   mtu=raw.get("mtu"))

    def host(self, name: str) -> HostState:
        """The host called ``name`` (``h1`` …); LabError if the lab has none."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"no lab host {name!r}; the lab has {[h.name for h in self.hosts]}")


# ------------------------------------------------------------------------------------ network
def _link_exists(name: str) -> bool:
    return run(["ip", "link", "show", name], check=False).returncode == 0


MTU_MIN, MTU_MAX = 1280, 9000
"""The underlay MTUs ``up`` accepts: IPv6's minimum (and room for VXLAN's 50 bytes) to jumbo frames."""


def make_network(n: int, mtu: int | None = None) -> None:
    """Create the bridge and N host namespaces wired to it; ``mtu``: of the bridge and every veth end
    (None: the kernel's default)."""
    mtu_args = ["mtu", str(mtu)] if mtu is not None else []
    run(["ip", "link", "add", BRIDGE, *mtu_args, "type", "bridge"])
    run(["ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE])
    run(["ip", "addr", "add", f"{REGISTRY_IP}/24", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    for i in range(1, n + 1):
        ns, veth = netns_name(i), f"shoal-lab-h{i}"
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", veth, *mtu_args, "type", "veth", "peer", "name", "eth0", *mtu_args, "netns", ns])
        run(["ip", "link", "set", veth, "master", BRIDGE, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{host_ip(i)}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "route", "add", "default", "via", GATEWAY])
        # Containers reach the outside through the host's bridge; let the host forward.
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=False)


# ----------------------------------------------------------------------------------- registry
def registry_config() -> Path:
    """Write the docker-registry config (no auth, HTTP on 10.99.0.2:5000) and return its path."""
    REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    cfg = REGISTRY_DIR / "config.yml"
    cfg.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n  filesystem:\n    rootdirectory: " + str(REGISTRY_DIR / "data") + "\n"
        "  delete:\n    enabled: true\n"
        "http:\n  addr: " + REGISTRY + "\n"
    )
    return cfg


def _spawn(argv: list[str], logfile: Path, env: dict[str, str] | None = None) -> int:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as out:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True, env=env, close_fds=True)
    return p.pid


def wait_for(cond: Any, timeout: float, what: str, interval: float = 0.1,
             fatal: type[Exception] | None = None) -> None:
    """Poll ``cond()`` until truthy; LabError naming ``what`` after ``timeout`` seconds.

    Exceptions from ``cond`` count as "not yet", except instances of ``fatal``, which propagate.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except Exception as e:
            if fatal is not None and isinstance(e, fatal):
                raise
            last = e
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def _registry_up() -> bool:
    with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=1) as r:
        return bool(r.status == 200)


def start_registry() -> int:
    """Start docker-registry (detached) and wait until /v2/ answers; returns its PID."""
    cfg = registry_config()
    exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    pid = _spawn([exe, "serve", str(cfg)], LOGS / "registry.log")
    wait_for(_registry_up, 30, f"the registry on {REGISTRY} (log: {LOGS / 'registry.log'})")
    return pid


def ensure_image() -> None:
    """Build the busybox image if missing and push it to the lab registry with skopeo."""
    layout = build_busybox.DEFAULT_OUT / "busybox-oci"
    if not (layout / "index.json").exists():
        log(f"lab: building the busybox image into {layout} (deploy/images/build_busybox.py)")
        build_busybox.build()
    else:
        log(f"lab: the busybox image is built ({layout})")
    log(f"lab: pushing {IMAGE}")
    run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{IMAGE}"],
        timeout=300)


# ------------------------------------------------------------------------------------ daemons
def shoald_argv(i: int, runtime: str, heartbeat_period: float | None, extra: Sequence[str] = ()) -> list[str]:
    """The command line that starts host i's shoald (see module docstring)."""
    h = host_name(i)
    flags = [
        str(shoald_path()), "--data-root", str(DATA / h), "--exec-root", str(RUN / h),
        "--socket", str(socket_path(h)), "--cgroup-parent", f"{CGROUP_PARENT}/{h}",
        "--insecure-registry", REGISTRY, "--runtime", runtime,
    ]
    if heartbeat_period is not None:
        flags += ["--heartbeat-period", str(heartbeat_period)]
    flags += list(extra)
    inner = f"hostname {h} && exec " + " ".join(_shquote(a) for a in flags)
    return ["nsenter", f"--net={NETNS_DIR / netns_name(i)}", "unshare", "--uts", "--", "sh", "-c", inner]


def _shquote(s: str) -> str:
    return shlex.quote(s)


def ping(host: str, timeout: float = 1.0) -> bool:
    """True when lab host ``host``'s socket answers GET /_ping."""
    return Client(f"unix://{socket_path(host)}", timeout=timeout).ping().strip() == "OK"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):  # gone between open and read: ESRCH
        return False


def start_daemon(state: LabState, host: HostState, wait: float = 60.0) -> None:
    """Start (or restart) ``host``'s shoald with its recorded argv; wait for /_ping."""
    (DATA / host.name).mkdir(parents=True, exist_ok=True)
    (RUN / host.name).mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket_path(host.name).unlink()
    logfile = LOGS / f"{host.name}.log"
    env = dict(os.environ)
    env["PATH"] = f"{shoald_path().parent}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    host.pid = _spawn(host.argv, logfile, env)
    state.save()

    def up() -> bool:
        if not _alive(host.pid):
            tail = "".join(logfile.read_text(errors="replace").splitlines(True)[-15:]) if logfile.exists() else ""
            raise LabError(f"shoald on {host.name} exited; last lines of {logfile}:\n{tail}")
        return ping(host.name)

    wait_for(up, wait, f"shoald on {host.name} to answer /_ping on {socket_path(host.name)} (log: {logfile})",
             interval=0.1, fatal=LabError)


def kill_daemon(state: LabState, host: HostState, sig: int = signal.SIGKILL, wait: float = 10.0) -> None:
    """Send ``sig`` to ``host``'s shoald and wait until it is gone."""
    if host.pid and _alive(host.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(host.pid, sig)
        wait_for(lambda: not _alive(host.pid), wait, f"shoald on {host.name} (pid {host.pid}) to exit")
    host.pid = None
    state.save()


# --------------------------------------------------------------------------------------- up
def up(n: int, runtime: str = "shoal", heartbeat_period: float | None = None,
       extra_flags: Sequence[str] = (), daemons: bool = True, mtu: int | None = None) -> LabState:
    """Tear down any old lab, then build the network, registry, image and N shoalds.

    ``daemons=False`` stops after the registry and image (for testing the lab itself); ``mtu``:
    the underlay links' MTU (the bridge and every host's veth), None for the kernel's default.
    Raises LabError; the caller should run ``down()`` after a failure.
    """
    if n < 1 or n > 200:
        raise LabError(f"--hosts must be between 1 and 200, got {n}")
    if mtu is not None and not MTU_MIN <= mtu <= MTU_MAX:
        raise LabError(f"--mtu must be between {MTU_MIN} and {MTU_MAX}, got {mtu}")
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, bridges, cgroups)")
    old = LabState.load()
    if old is not None and old.hosts:
        log(f"lab: a lab is already up ({len(old.hosts)} hosts: "
            + ", ".join(h.name for h in old.hosts) + "); replacing it (its swarm and services are gone)")
    down(quiet=True)
    for d in (DATA, RUN, LOGS):
        d.mkdir(parents=True, exist_ok=True)
    for old_log in LOGS.glob("*.log"):  # a new lab starts new logs (restarts append to them);
        old_log.replace(old_log.with_suffix(".log.prev"))  # the last lab's stay for a look
    state = LabState(runtime=runtime, heartbeat_period=heartbeat_period, mtu=mtu)
    for i in range(1, n + 1):
        state.hosts.append(HostState(name=host_name(i), index=i, ip=host_ip(i), netns=netns_name(i),
                                     argv=shoald_argv(i, runtime, heartbeat_period, extra_flags)))
    state.save()
    log(f"lab: bridge {BRIDGE} ({GATEWAY}/24{f', MTU {mtu}' if mtu is not None else ''}) and {n} hosts "
        + ", ".join(f"{h.name}={h.ip}" for h in state.hosts))
    make_network(n, mtu)
    log(f"lab: registry on {REGISTRY} (storage {REGISTRY_DIR / 'data'}, log {LOGS / 'registry.log'})")
    state.registry_pid = start_registry()
    state.save()
    ensure_image()
    if daemons:
        if not shoald_path().exists():
            raise LabError(f"{shoald_path()} not found: run `pip install -e .` in the virtualenv first")
        for h in state.hosts:
            log(f"lab: starting shoald on {h.name} (socket {socket_path(h.name)}, log {LOGS / (h.name + '.log')})")
            start_daemon(state, h)
    log("lab: up")
    return state


# ------------------------------------------------------------------------------------- down
def _proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _ns_inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def cgroup_dirs() -> list[Path]:
    """Every ``shoal-lab`` cgroup directory (v1 hierarchies and v2), deepest first."""
    roots: list[Path] = []
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        roots.append(CGROUP_ROOT / CGROUP_PARENT)
    else:
        with contextlib.suppress(FileNotFoundError):
            for h in sorted(CGROUP_ROOT.iterdir()):
                if h.is_dir() and not h.is_symlink():
                    roots.append(h / CGROUP_PARENT)
    out: list[Path] = []
    for r in roots:
        if r.is_dir():
            out.extend(Path(p) for p, _, _ in os.walk(r))
    return sorted(set(out), key=lambda p: (-len(p.parts), str(p)))


def _lab_netns_files() -> list[Path]:
    """The files that keep lab network namespaces alive: the hosts' (``/run/netns/shoal-h*``) and
    every nsfs mount under the lab's directories (each host's containers and overlay networks)."""
    files = list(NETNS_DIR.glob("shoal-h*"))
    prefixes = (str(DATA) + "/", str(RUN) + "/")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1] if "-" in fields else ""
            mp = fields[4].encode().decode("unicode_escape")
            if fstype == "nsfs" and mp.startswith(prefixes):
                files.append(Path(mp))
    return files


def lab_pids(state: LabState | None) -> set[int]:
    """PIDs that belong to the lab: in a shoal-lab cgroup, in a lab netns (a host's, a container's or
    an overlay network's: e.g. a tool started there with ``nsenter``), or with lab paths in argv."""
    me = os.getpid()
    pids: set[int] = set()
    for d in cgroup_dirs():
        for f in ("cgroup.procs", "tasks"):
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in (d / f).read_text().split())
    lab_ns = {ino for ino in (_ns_inode(p) for p in _lab_netns_files()) if ino}
    lab_ns.update(ino for ino in (_ns_inode(Path(f"/proc/{pid}/ns/net")) for pid in pids) if ino)
    lab_ns.discard(_ns_inode(Path("/proc/1/ns/net")))  # never the machine's own namespace
    markers = (str(DATA) + "/", str(RUN) + "/", str(REGISTRY_DIR))
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        pid = int(p.name)
        if pid in (me, os.getppid(), 1):
            continue
        if lab_ns and _ns_inode(p / "ns" / "net") in lab_ns:
            pids.add(pid)
            continue
        cmd = _proc_cmdline(pid)
        if any(m in a for a in cmd for m in markers):
            pids.add(pid)
    if state:
        pids.update(h.pid for h in state.hosts if h.pid)
        if state.registry_pid:
            pids.add(state.registry_pid)
    pids.discard(me)
    pids.discard(os.getppid())
    return {p for p in pids if _alive(p)}


def kill_all(pids: Iterable[int], grace: float) -> None:
    """SIGTERM then, after ``grace`` seconds, SIGKILL; waits up to 10 s for them to go."""
    pids = set(pids)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        pids = {p for p in pids if _alive(p)}
        if not pids:
            return


def lab_mounts() -> list[str]:
    """Mount points under the lab's directories or its netns files, deepest first."""
    prefixes = (str(DATA), str(RUN), str(NETNS_DIR / "shoal-h"))
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if any(mp == p or mp.startswith(p + "/") or (p.endswith("shoal-h") and mp.startswith(p)) for p in prefixes):
                out.append(mp)
    return sorted(set(out), key=lambda m: (-m.count("/"), m))


def down(quiet: bool = False) -> list[str]:
    """Remove everything the lab made; safe to run twice. Returns a list of leftovers (empty = clean)."""
    say = (lambda _m: None) if quiet else log
    state = LabState.load()
    # 1. shoalds first (they would restart what we kill), then everything else of the lab.
    daemons = [h.pid for h in (state.hosts if state else []) if h.pid and _alive(h.pid)]
    if daemons:
        say(f"down: stopping {len(daemons)} shoald")
        kill_all(daemons, grace=3.0)
    rest = lab_pids(state)
    if rest:
        say(f"down: killing {len(rest)} lab processes (shims, containers, registry)")
        kill_all(rest, grace=1.0)
    # 2. mounts (overlay rootfs, netns bind mounts, anything else under our dirs), deepest first.
    for mp in lab_mounts():
        if mp.startswith(str(NETNS_DIR)):
            continue
        run(["umount", "-l", mp], check=False)
    # 3. cgroups, deepest first (retry: a cgroup is busy until its last task is reaped).
    for d in cgroup_dirs():
        deadline = time.monotonic() + 5
        while d.exists():
            try:
                d.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
    # 4. nftables tables whose names start with "shoal" (root netns; the lab netns go with them).
    res = run(["nft", "-j", "list", "tables"], check=False)
    if res.returncode == 0 and res.stdout.strip():
        with contextlib.suppress(ValueError):
            for item in json.loads(res.stdout).get("nftables", []):
                t = item.get("table")
                if t and str(t.get("name", "")).startswith("shoal"):
                    run(["nft", "delete", "table", t["family"], t["name"]], check=False)
    # 5. namespaces and links.
    for ns in sorted(NETNS_DIR.glob("shoal-h*")):
        run(["ip", "netns", "delete", ns.name], check=False)
        if ns.exists():
            run(["umount", "-l", str(ns)], check=False)
            with contextlib.suppress(OSError):
                ns.unlink()
    res = run(["ip", "-o", "link", "show"], check=False)
    for line in res.stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith("shoal-lab"):
            run(["ip", "link", "delete", name], check=False)
    # 6. files: host data and run dirs (never while something is still mounted there).
    leftovers = check_clean()
    if not any(x.startswith("mount") for x in leftovers):
        for d in [*DATA.glob("h*"), RUN]:
            shutil.rmtree(d, ignore_errors=True)
    leftovers = check_clean()
    if leftovers:
        say("down: leftovers:\n  " + "\n  ".join(leftovers))
    else:
        say("down: the lab is gone")
    return leftovers


LAB_SUBNET = "10.99.0."
"""The underlay's addresses (a /24): what marks a namespace, an FDB entry or a VXLAN device as the lab's."""
LAB_LINK_PREFIX = "shoal-lab"
"""Names of the links the lab makes (its bridge and veths). shoald's overlay devices (``sov*``,
overlaynet/vxlan.py) are found by their VXLAN device's local address on the lab's underlay instead:
the integration tests make devices of those names too, on underlays of their own."""


def _netns_refs() -> dict[int, str]:
    """Every network namespace this machine still holds, by inode, with a path that enters it: the
    namespaces of processes, those open as file descriptors, and nsfs mounts (this mount namespace)."""
    refs: dict[int, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if "-" in fields and fields[fields.index("-") + 1] == "nsfs" and fields[3].startswith("net:["):
                refs.setdefault(int(fields[3][5:-1]), fields[4].encode().decode("unicode_escape"))
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        ino = _ns_inode(p / "ns" / "net")
        if ino:
            refs.setdefault(ino, str(p / "ns" / "net"))
        with contextlib.suppress(OSError):
            for fd in (p / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("net:["):
                        refs.setdefault(int(target[5:-1]), str(fd))
    return refs


def _lab_marks(links: list[dict[str, Any]], addrs: list[dict[str, Any]]) -> list[str]:
    """What in one namespace's ``ip -j -d link`` / ``ip -j addr`` is the lab's (empty: nothing)."""
    marks = [f"link {x.get('ifname')}" for x in links if str(x.get("ifname", "")).startswith(LAB_LINK_PREFIX)]
    marks += [f"vxlan {x.get('ifname')} local {(x.get('linkinfo') or {}).get('info_data', {}).get('local')}"
              for x in links if (x.get("linkinfo") or {}).get("info_kind") == "vxlan"
              and str((x.get("linkinfo") or {}).get("info_data", {}).get("local", "")).startswith(LAB_SUBNET)]
    marks += [f"address {a.get('local')} on {x.get('ifname')}" for x in addrs for a in x.get("addr_info", [])
              if str(a.get("local", "")).startswith(LAB_SUBNET)]
    return sorted(set(marks))


def leftover_netns() -> list[str]:
    """Network namespaces still alive anywhere on the machine that hold something of the lab (a lab
    link, a VXLAN device or an address on the lab's underlay), however they are held (a process, an
    open descriptor, a mount); for the machine's own namespace, the lab's links and VXLAN devices."""
    out: list[str] = []
    root = _ns_inode(Path("/proc/1/ns/net"))
    for ino, ref in sorted(_netns_refs().items()):
        links = run(["nsenter", f"--net={ref}", "ip", "-j", "-d", "link", "show"], check=False, timeout=10)
        addrs = run(["nsenter", f"--net={ref}", "ip", "-j", "addr", "show"], check=False, timeout=10)
        try:
            marks = _lab_marks(json.loads(links.stdout or "[]"), json.loads(addrs.stdout or "[]"))
        except ValueError:
            continue  # it went away while we looked
        if marks and ino == root:
            out += marks
        elif marks:
            out.append(f"netns net:[{ino}] (held by {ref}): " + ", ".join(marks))
    return out


def leftover_fdb() -> list[str]:
    """FDB entries in the machine's namespace that point at the lab's underlay or sit on a lab link."""
    res = run(["bridge", "-j", "fdb", "show"], check=False)
    out = []
    with contextlib.suppress(ValueError):
        for e in json.loads(res.stdout or "[]"):
            if str(e.get("dst", "")).startswith(LAB_SUBNET) or str(e.get("ifname", "")).startswith(LAB_LINK_PREFIX):
                out.append(f"fdb {e.get('mac')} dev {e.get('ifname')} dst {e.get('dst', '-')}")
    return out


def check_clean() -> list[str]:
    """What of the lab still exists (processes, mounts, cgroups, netns, links, FDB entries, nft tables).

    Namespaces: the hosts' names in /run/netns, and any namespace on the machine, however held, that
    still has a lab link, overlay device or underlay address (:func:`leftover_netns`)."""
    out: list[str] = []
    out += [f"mount {m}" for m in lab_mounts()]
    out += [f"cgroup {d}" for d in cgroup_dirs()]
    out += [f"netns {p.name}" for p in NETNS_DIR.glob("shoal-h*")]
    out += leftover_netns()  # the machine's namespace too: links shoal-lab*, VXLAN devices on the underlay
    out += leftover_fdb()
    res = run(["nft", "-j", "list", "tables"], check=False)
    with contextlib.suppress(ValueError):
        for item in json.loads(res.stdout or "{}").get("nftables", []):
            t = item.get("table")
            if t and str(t.get("name", "")).startswith("shoal"):
                out.append(f"nft table {t['family']} {t['name']}")
    out += [f"process {p} {' '.join(_proc_cmdline(p))[:80]}" for p in sorted(lab_pids(None))]
    return out


def exec_argv(host: str, cmd: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """argv and env that run ``cmd`` in lab host ``host``'s netns with SHOAL_HOST set to its socket."""
    state = LabState.load()
    if state is None:
        raise LabError("no lab is up: run `shoal-lab up --hosts 3` first")
    h = state.host(host)
    env = dict(os.environ)
    env["SHOAL_HOST"] = f"unix://{socket_path(h.name)}"
    env["PATH"] = f"{shoald_path().parent}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    return ["nsenter", f"--net={NETNS_DIR / h.netns}", "--", *cmd], env
