"""Per-container cgroups, v1 (one hierarchy per controller) and v2 (unified), detected at run time.

Follows the kernel documentation: Documentation/admin-guide/cgroup-v1/{memory,pids}.rst,
cgroup-v1 CFS bandwidth (``cpu.cfs_quota_us``/``cpu.cfs_period_us``), and cgroup-v2.rst
(``memory.max``, ``cpu.max``, ``pids.max``, ``cgroup.kill``), cgroup-v1/devices.rst and, on
v2, a device eBPF program (agent_runtime.oci.devicefilter). The OCI runtime spec's
``linux.resources`` object is the input; ``cgroupsPath`` is taken relative to the root of
each hierarchy (as runc's cgroupfs driver does for an absolute path).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Any

from agent_runtime.oci.devicefilter import DeviceFilterError, attach, fold

CGROUP_ROOT = "/sys/fs/cgroup"


def is_v2() -> bool:
    """True when the host uses the unified hierarchy only (``/sys/fs/cgroup/cgroup.controllers`` exists)."""
    return os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers"))


def v1_hierarchies() -> dict[str, str]:
    """Map of v1 controller name (``memory``, ``cpu``, ``name=systemd`` …) → mount point, from /proc/self/mountinfo.

    In hybrid mode the cgroup2 mount is included under the key ``unified``."""
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rfields = right.split()
            if len(rfields) >= 1 and rfields[0] == "cgroup2":
                # Hybrid mode: the unified hierarchy next to the v1 ones (runc also uses it).
                out.setdefault("unified", fields[4])
                continue
            if len(rfields) < 3 or rfields[0] != "cgroup":
                continue
            mountpoint = fields[4]
            for opt in rfields[2].split(","):
                if opt in ("rw", "ro") or opt.startswith("release_agent") or opt in ("clone_children", "noprefix"):
                    continue
                if opt == "xattr":
                    continue
                out.setdefault(opt, mountpoint)
    return out


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class Cgroup:
    """One container's cgroup at ``path`` (e.g. ``/shoal/<id>``) in every hierarchy in use.

    ``create()`` makes the directories, ``apply(resources)`` writes the limits, ``add(pid)``
    moves a process in, ``destroy()`` kills what is left and removes the directories.
    Errors are ``OSError`` naming the file that could not be written.
    """

    def __init__(self, path: str) -> None:
        if not path:
            raise ValueError("empty cgroupsPath")
        self.rel = path.strip("/")
        self.v2 = is_v2()
        if self.v2:
            self.dirs = {"unified": os.path.join(CGROUP_ROOT, self.rel)}
        else:
            self.dirs = {}
            seen: set[str] = set()
            for ctrl, mnt in v1_hierarchies().items():
                if mnt in seen:
                    continue
                seen.add(mnt)
                self.dirs[ctrl] = os.path.join(mnt, self.rel)

    def create(self) -> None:
        """Create the cgroup directories (and parents); v2 enables memory/cpu/pids in ancestors."""
        if self.v2:
            parts = self.rel.split("/")
            cur = CGROUP_ROOT
            for p in parts:
                try:
                    with open(os.path.join(cur, "cgroup.controllers")) as f:
                        avail = f.read().split()
                    want = " ".join("+" + c for c in ("memory", "cpu", "pids") if c in avail)
                    if want:
                        _write(os.path.join(cur, "cgroup.subtree_control"), want)
                except OSError:
                    pass
                cur = os.path.join(cur, p)
                os.makedirs(cur, exist_ok=True)
            return
        for ctrl, d in self.dirs.items():
            os.makedirs(d, exist_ok=True)
            if ctrl == "cpuset":
                self._init_cpuset(d)

    def _init_cpuset(self, d: str) -> None:
        # A new v1 cpuset starts empty; copy cpus/mems down from the nearest initialised ancestor.
        chain = []
        cur = d
        root = self.dirs["cpuset"][: -len(self.rel)].rstrip("/")
        while cur != root and cur.startswith(root):
            chain.append(cur)
            cur = os.path.dirname(cur)
        for node in reversed(chain):
            parent = os.path.dirname(node)
            for fname in ("cpuset.cpus", "cpuset.mems"):
                try:
                    with open(os.path.join(node, fname)) as f:
                        if f.read().strip():
                            continue
                    with open(os.path.join(parent, fname)) as f:
                        _write(os.path.join(node, fname), f.read().strip())
                except OSError:
                    pass

    def apply(self, res: dict[str, Any]) -> None:
        """Write OCI ``linux.resources`` (memory.limit/swap, cpu.quota/period, pids.limit) and enforce
        ``devices`` (see :meth:`apply_devices`)."""
        self.apply_devices(list(res.get("devices") or []))
        mem = res.get("memory") or {}
        cpu = res.get("cpu") or {}
        pids = res.get("pids") or {}
        limit = mem.get("limit")
        swap = mem.get("swap")
        quota = cpu.get("quota")
        period = cpu.get("period")
        plimit = pids.get("limit")
        if self.v2:
            d = self.dirs["unified"]
            if limit is not None and limit > 0:
                _write(os.path.join(d, "memory.max"), str(limit))
                if swap is not None and os.path.exists(os.path.join(d, "memory.swap.max")):
                    # OCI swap is memory+swap; v2 swap.max is swap alone.
                    _write(os.path.join(d, "memory.swap.max"), str(max(0, swap - limit)) if swap > 0 else "max")
            if quota is not None and quota > 0:
                _write(os.path.join(d, "cpu.max"), f"{quota} {period or 100000}")
            if plimit is not None and plimit > 0:
                _write(os.path.join(d, "pids.max"), str(plimit))
            return
        if limit is not None and limit > 0 and "memory" in self.dirs:
            d = self.dirs["memory"]
            _write(os.path.join(d, "memory.limit_in_bytes"), str(limit))
            if swap is not None and swap > 0 and os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes")):
                _write(os.path.join(d, "memory.memsw.limit_in_bytes"), str(swap))
        if quota is not None and quota > 0 and "cpu" in self.dirs:
            d = self.dirs["cpu"]
            if period:
                _write(os.path.join(d, "cpu.cfs_period_us"), str(period))
            _write(os.path.join(d, "cpu.cfs_quota_us"), str(quota))
        if plimit is not None and plimit > 0 and "pids" in self.dirs:
            _write(os.path.join(self.dirs["pids"], "pids.max"), str(plimit))

    def apply_devices(self, rules: list[dict[str, Any]]) -> None:
        """Enforce the OCI device rules (``linux.resources.devices``) before any process joins: the v1
        ``devices.allow``/``devices.deny`` files when the v1 devices controller is mounted, else a
        ``BPF_CGROUP_DEVICE`` program on the cgroup2 directory (v2, or the unified hierarchy of a
        hybrid host), as runc does (libcontainer/cgroups/devices). Never skipped: raises
        ``DeviceFilterError`` (an OSError) when the rules are malformed or cannot be applied."""
        if not rules:
            return
        fold(rules)  # validates every rule, for v1 too
        if not self.v2 and "devices" in self.dirs:
            d = self.dirs["devices"]
            for rule in rules:
                typ = rule.get("type") or "a"
                major, minor = rule.get("major"), rule.get("minor")
                line = "a" if typ == "a" else (
                    f"{typ} {'*' if major is None or major == -1 else major}:"
                    f"{'*' if minor is None or minor == -1 else minor} {rule.get('access') or 'rwm'}")
                _write(os.path.join(d, "devices.allow" if rule.get("allow") else "devices.deny"), line)
            return
        if "unified" not in self.dirs:
            raise DeviceFilterError(errno.ENOTSUP, "neither the cgroup v1 devices controller nor a cgroup2 hierarchy "
                                    "is mounted: the device rules cannot be enforced")
        attach(self.dirs["unified"], rules)

    def add(self, pid: int) -> None:
        """Move process ``pid`` (host PID) into the cgroup in every hierarchy."""
        for d in self.dirs.values():
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def pids(self) -> list[int]:
        """Host PIDs of the processes in the cgroup (union over hierarchies)."""
        out: set[int] = set()
        for d in self.dirs.values():
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    out.update(int(x) for x in f.read().split())
            except OSError:
                pass
        return sorted(out)

    def destroy(self, timeout: float = 5.0) -> None:
        """SIGKILL whatever is left in the cgroup and remove its directories (retrying up to ``timeout`` s).

        Raises ``OSError`` if a directory is still busy after the timeout.
        """
        deadline = time.monotonic() + timeout
        if self.v2:
            try:
                _write(os.path.join(self.dirs["unified"], "cgroup.kill"), "1")
            except OSError:
                pass
        while True:
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            busy: list[str] = []
            for d in self.dirs.values():
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if e.errno in (errno.EBUSY, errno.ENOTEMPTY):
                        busy.append(d)
                    else:
                        raise
            if not busy:
                return
            if time.monotonic() > deadline:
                raise OSError(errno.EBUSY, f"cgroup still busy after {timeout}s: {busy}")
            time.sleep(0.01)

    def exists(self) -> bool:
        """True if any of the cgroup's directories still exists."""
        return any(os.path.isdir(d) for d in self.dirs.values())
