"""The container lifecycle on one node: overlayfs snapshot, OCI bundle, shim, stop, remove, logs.

Each container lives in ``root/<id>/``::

    container.json   spec, image ID, created time (written by create)
    config.json      the OCI runtime config (bundle.build_config)
    rootfs/          overlayfs mount: lowerdir = image layers (shared), upper/ + work/ per container
    hosts resolv.conf hostname   bind-mounted into the container's /etc
    shim.json        written by the shim (status, pid, exit_code, times)
    container.log    Docker json-file log lines, rotated to container.log.1 … by size
                     (agent_runtime.jsonfile; the sizes are fixed at create, in container.json)

The overlay is mounted in the mount namespace of the caller (shoald). The shim (``shoal-shim``)
is detached (setsid + double fork), so containers survive a daemon restart; a new ``Runtime`` on
the same root re-attaches through ``list()``/``state()``/``wait()``. Exit is learnt with
pidfd_open(2) on the shim's PID (not our child) plus re-reading ``shim.json``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal as signal_mod
import sys
import time
from pathlib import Path
from typing import Any

from agent_runtime import execin
from agent_runtime.bundle import BundleError, build_config, resolv_conf_text, write_config
from agent_runtime.images import ImageError, ImageStore
from agent_runtime.jsonfile import READ_LIMIT, LogPage, read_page
from agent_runtime.oci import libc
from agent_runtime.oci.cgroups import Cgroup
from agent_runtime.oci.runtime import RuntimeError_, check_rootfs_links
from agent_runtime.shim import proc_start_time
from agent_runtime.spec import ContainerSpec, ContainerState
from shoal.base.logopts import LogOptError, effective
from shoal.base.util import now_rfc3339, private_dir

__all__ = ["ContainerError", "ContainerNotFound", "ContainerSpec", "ContainerState", "Runtime"]

_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{11,127}$")


class ContainerError(Exception):
    """A container operation failed; the message says what and why."""


class ContainerNotFound(ContainerError):
    """No container with that ID under this runtime's root."""


_CODE_ROOT = str(Path(__file__).resolve().parents[1])


def shim_argv() -> list[str]:
    """Command that starts ``shoal-shim`` quickly: this Python in isolated mode without site (the shim
    needs only the standard library and this project), about 20 ms less than the console script."""
    boot = f"import sys; sys.path.insert(0, {_CODE_ROOT!r}); from agent_runtime.shim import main; main()"
    return [sys.executable, "-I", "-S", "-c", boot]


def _signal_number(sig: str | int | None, default: int) -> int:
    if sig is None or sig == "":
        return default
    if isinstance(sig, int):
        return sig
    s = sig.upper()
    if s.isdigit():
        return int(s)
    if not s.startswith("SIG"):
        s = "SIG" + s
    try:
        return int(signal_mod.Signals[s])
    except KeyError as e:
        raise ContainerError(f"invalid stop signal {sig!r}: use a name like SIGTERM or a number") from e


def _is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def _host_resolv_conf() -> str:
    try:
        return Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""


def hosts_file(hostname: str, ip: str | None, extra: list[tuple[str, str]]) -> str:
    """Content of the container's /etc/hosts, as Docker writes it, plus ``extra`` (hostname, ip) pairs
    (either order is accepted: the member that parses as an IP address is the address)."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", "fe00::0\tip6-localnet",
             "ff00::0\tip6-mcastprefix", "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters"]
    if ip:
        lines.append(f"{ip.split('/')[0]}\t{hostname}")
    for a, b in extra:
        try:
            ipaddress.ip_address(a)
            addr, name = a, b
        except ValueError:
            addr, name = b, a
        lines.append(f"{addr}\t{name}")
    return "\n".join(lines) + "\n"


class Runtime:
    """Containers of one node under ``root`` (``<data-root>/containers``).

    ``exec_root`` holds runtime state (runc's ``--root``, shoal-oci's state dir). ``cgroup_parent``
    is the cgroup under which each container's cgroup ``<parent>/<id>`` is made. ``oci_runtime``
    picks ``shoal`` (shoal-oci from this venv) or ``runc`` (/usr/sbin/runc). ``log_opts`` are the
    daemon's json-file defaults (``{"max-size": "10m", "max-file": "3"}``, :mod:`shoal.base.logopts`); a
    container's ``spec.log_opts`` override them key by key. Raises ValueError for a bad runtime name
    or log option.
    """

    def __init__(self, root: Path, exec_root: Path, images: ImageStore, cgroup_parent: str = "shoal",
                 oci_runtime: str = "shoal", log_opts: dict[str, str] | None = None) -> None:
        if oci_runtime not in ("shoal", "runc"):
            raise ValueError(f"oci_runtime must be 'shoal' or 'runc', not {oci_runtime!r}")
        effective(None, log_opts)  # a bad daemon option fails here, not at the first container
        self.log_opts = dict(log_opts or {})
        self.root = Path(root)
        self.exec_root = Path(exec_root)
        self.images = images
        self.cgroup_parent = cgroup_parent
        self.oci_runtime = oci_runtime
        # The containers' directories (rootfs mounts, upper dirs, bundles, logs) and the OCI runtimes'
        # state are root's only (0700, fixed on existing ones too): a setuid binary or a device node
        # in a container's rootfs is not reachable by other local users, as under Docker's data root.
        private_dir(self.root)
        for sub in self.root.iterdir():
            if sub.is_dir() and not sub.is_symlink():
                private_dir(sub)
        self.exec_root.mkdir(parents=True, exist_ok=True)
        for name in ("runc", "shoal-oci"):
            private_dir(self.exec_root / name)
        if oci_runtime == "runc":
            self.runtime_cmd = shutil.which("runc") or "/usr/sbin/runc"
            self.runtime_root = str(self.exec_root / "runc")
        else:
            self.runtime_cmd = "shoal"  # the shim runs agent_runtime.oci.runtime.run (= shoal-oci run)
            self.runtime_root = str(self.exec_root / "shoal-oci")

    # ---- paths ----------------------------------------------------------------------------------

    def _dir(self, cid: str) -> Path:
        if not _ID_RE.match(cid):
            raise ContainerError(f"invalid container ID {cid!r}: 12-128 characters of [a-zA-Z0-9_.-]")
        return self.root / cid

    def log_path(self, cid: str) -> Path:
        """Path of the container's json-lines log file."""
        return self._dir(cid) / "container.log"

    def _meta(self, cid: str) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads((self._dir(cid) / "container.json").read_text())
            return meta
        except FileNotFoundError as e:
            raise ContainerNotFound(f"no such container: {cid}") from e
        except ValueError as e:
            raise ContainerError(f"container {cid}: corrupt container.json: {e}") from e

    def _shim(self, cid: str) -> dict[str, Any] | None:
        try:
            st: dict[str, Any] = json.loads((self._dir(cid) / "shim.json").read_text())
            return st
        except (FileNotFoundError, ValueError):
            return None

    # ---- create ---------------------------------------------------------------------------------

    async def create(self, spec: ContainerSpec) -> ContainerState:
        """Prepare the container: overlay snapshot at ``root/<id>/rootfs`` and the OCI bundle.

        Pulls the image if it is not stored. Raises ContainerError (already exists, bad spec such as an
        unknown user, no command or a bad log option) or ImageError (image cannot be pulled). Nothing
        is left on failure.
        """
        d = self._dir(spec.id)
        try:
            log_size, log_files = effective(spec.log_opts, self.log_opts)
        except LogOptError as e:
            raise ContainerError(f"container {spec.id}: {e}") from e
        img = self.images.get(spec.image)
        if img is None:
            img = await self.images.pull(spec.image)
        try:
            d.mkdir(mode=0o700)
        except FileExistsError as e:
            raise ContainerError(f"container {spec.id} already exists") from e
        try:
            await asyncio.to_thread(self._prepare, spec, d, img.config, img.layers, img.id,
                                    {"max-size": log_size, "max-file": log_files})
        except BaseException as e:
            await asyncio.to_thread(self._cleanup_dir, spec.id)
            if isinstance(e, BundleError):
                raise ContainerError(str(e)) from e
            if isinstance(e, OSError):
                raise ContainerError(f"cannot create container {spec.id}: {e}") from e
            raise
        return ContainerState(id=spec.id, status="created")

    def _prepare(self, spec: ContainerSpec, d: Path, image_config: dict[str, Any], layers: list[Path],
                 image_id: str, log_config: dict[str, int]) -> None:
        for sub in ("rootfs", "upper", "work"):
            (d / sub).mkdir()
        if not layers:
            empty = d / "empty"
            empty.mkdir()
            layers = [empty]
        lower = ":".join(str(p) for p in reversed(layers))
        opts = f"lowerdir={lower},upperdir={d / 'upper'},workdir={d / 'work'}"
        if len(opts) >= 4000:
            raise ContainerError(f"image has too many layers ({len(layers)}) for one overlay mount")
        libc.mount("overlay", str(d / "rootfs"), "overlay", 0, opts)
        hostname = spec.hostname or spec.id[:12]
        (d / "hosts").write_text(hosts_file(hostname, spec.ip, list(spec.hosts)))
        (d / "resolv.conf").write_text(resolv_conf_text(list(spec.dns), list(spec.dns_search),
                                                        list(spec.dns_options), _host_resolv_conf()))
        (d / "hostname").write_text(hostname + "\n")
        config = build_config(spec, image_config, d / "rootfs", d, self.cgroup_parent)
        try:
            check_rootfs_links(config)  # for runc too: it would follow an image's /dev link on the host
        except RuntimeError_ as e:
            raise ContainerError(f"container {spec.id}: {e}") from None
        write_config(d, config)
        meta = {"spec": spec.to_dict(), "image_id": image_id, "created_at": now_rfc3339(),
                "oci_runtime": self.oci_runtime, "cgroups_path": config["linux"]["cgroupsPath"],
                "log_config": log_config}
        tmp = d / "container.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, d / "container.json")

    # ---- start / state / wait -------------------------------------------------------------------

    async def start(self, cid: str) -> ContainerState:
        """Spawn the shim, which runs the OCI runtime; return once the container's process exists.

        The returned state is ``running`` with the host PID, or already ``exited`` (e.g. exit 127 when
        the command is not found, with ``error`` set). Raises ContainerError if the container is not in
        ``created`` state or the shim cannot be started.
        """
        d = self._dir(cid)
        meta = self._meta(cid)
        if self._shim(cid) is not None:
            raise ContainerError(f"container {cid} was already started")
        log_size, log_files = self._log_config(cid, meta)
        argv = shim_argv() + [
            "--id", cid, "--bundle", str(d), "--log", str(d / "container.log"), "--state", str(d / "shim.json"),
            "--runtime", self.runtime_cmd, "--runtime-root", self.runtime_root,
            "--log-max-size", str(log_size), "--log-max-file", str(log_files)]
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise ContainerError(f"container {cid}: shim failed: {err.decode(errors='replace').strip()}")
        return self.state(cid)

    def _log_config(self, cid: str, meta: dict[str, Any]) -> tuple[int, int]:
        """``(max_size, max_file)`` fixed at create; a container created before they were recorded
        takes its spec's options over this runtime's defaults."""
        lc = meta.get("log_config")
        if isinstance(lc, dict) and isinstance(lc.get("max-size"), int) and isinstance(lc.get("max-file"), int):
            return max(1, lc["max-size"]), max(1, lc["max-file"])
        try:
            return effective(ContainerSpec.from_dict(meta.get("spec") or {}).log_opts, self.log_opts)
        except (LogOptError, TypeError) as e:
            raise ContainerError(f"container {cid}: {e}") from e

    def state(self, cid: str) -> ContainerState:
        """Current state of container ``cid`` (re-read from disk). Raises ContainerNotFound."""
        self._meta(cid)
        st = self._shim(cid)
        if st is None:
            return ContainerState(id=cid, status="created")
        status = st.get("status")
        if status == "exited":
            return ContainerState(id=cid, status="exited", pid=0, exit_code=st.get("exit_code"),
                                  started_at=st.get("started_at"), finished_at=st.get("finished_at"),
                                  error=st.get("error"))
        shim_alive = self._alive(int(st.get("shim_pid") or 0), None)
        pid = int(st.get("pid") or 0)
        if status == "running" and self._alive(pid, st.get("pid_start")):
            return ContainerState(id=cid, status="running", pid=pid, started_at=st.get("started_at"))
        if shim_alive:
            # Starting, or the process just exited and the shim is about to record it.
            return ContainerState(id=cid, status="running" if status == "running" else "created", pid=pid,
                                  started_at=st.get("started_at"))
        return ContainerState(id=cid, status="exited", exit_code=255, started_at=st.get("started_at"),
                              error="the container's shim is gone and did not record an exit code")

    @staticmethod
    def _alive(pid: int, start: int | None) -> bool:
        if pid <= 0:
            return False
        t = proc_start_time(pid)
        if t is None:
            return False
        if start is not None and t != start:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    async def wait(self, cid: str) -> int:
        """Wait until the container has exited and return its exit code (128+N if killed by signal N).

        Raises ContainerError if it was never started.
        """
        loop = asyncio.get_running_loop()
        while True:
            st = self.state(cid)
            if st.status == "exited":
                return int(st.exit_code if st.exit_code is not None else 255)
            shim = self._shim(cid)
            if shim is None:
                raise ContainerError(f"container {cid} has not been started")
            shim_pid = int(shim.get("shim_pid") or 0)
            try:
                fd = os.pidfd_open(shim_pid)
            except (ProcessLookupError, OSError):
                await asyncio.sleep(0.05)
                continue
            fut: asyncio.Future[None] = loop.create_future()

            def _ready(f: asyncio.Future[None] = fut) -> None:
                if not f.done():
                    f.set_result(None)

            loop.add_reader(fd, _ready)
            try:
                # Re-check after arming: the shim may have finished in between.
                if self.state(cid).status != "exited":
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(fut, 2.0)
            finally:
                loop.remove_reader(fd)
                os.close(fd)

    async def stop(self, cid: str, timeout: float = 10.0, signal: str | int | None = None) -> ContainerState:
        """Send the stop signal (``signal`` or the spec's ``stop_signal``, default SIGTERM) to the
        container's init, then SIGKILL after ``timeout`` seconds; return the exited state."""
        meta = self._meta(cid)
        sig = _signal_number(signal if signal is not None else meta["spec"].get("stop_signal"), signal_mod.SIGTERM)
        st = self.state(cid)
        if st.status == "running" and st.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(st.pid, sig)
            try:
                await asyncio.wait_for(self.wait(cid), max(0.0, timeout))
            except TimeoutError:
                st = self.state(cid)
                if st.status == "running" and st.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(st.pid, signal_mod.SIGKILL)
                await asyncio.wait_for(self.wait(cid), 30)
        return self.state(cid)

    async def remove(self, cid: str) -> None:
        """Kill the container if it runs, then unmount its rootfs, delete its cgroup and directory.

        Afterwards no process, mount, cgroup or file of it is left. Raises ContainerNotFound.
        """
        meta = self._meta(cid)
        st = self.state(cid)
        if st.status == "running":
            await self.stop(cid, 0, signal_mod.SIGKILL)
        shim = self._shim(cid)
        if shim:
            deadline = time.monotonic() + 10
            while self._alive(int(shim.get("shim_pid") or 0), None) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        await asyncio.to_thread(self._cleanup_dir, cid, meta.get("cgroups_path"))

    def _cleanup_dir(self, cid: str, cgroups_path: str | None = None) -> None:
        d = self._dir(cid)
        rootfs = d / "rootfs"
        if rootfs.exists() and _is_mounted(rootfs):
            try:
                libc.umount2(str(rootfs), 0)
            except OSError:
                libc.umount2(str(rootfs), libc.MNT_DETACH)
        if cgroups_path:
            try:
                Cgroup(cgroups_path).destroy()
            except OSError as e:
                raise ContainerError(f"container {cid}: could not remove its cgroup {cgroups_path}: {e}") from e
        for state_root in (self.exec_root / "runc", self.exec_root / "shoal-oci"):
            shutil.rmtree(state_root / cid, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)
        if d.exists():
            raise ContainerError(f"could not remove {d}")

    def list(self) -> list[ContainerState]:
        """States of every container under ``root`` (used to re-attach after a daemon restart)."""
        out: list[ContainerState] = []
        for d in sorted(self.root.iterdir()) if self.root.exists() else []:
            if (d / "container.json").exists():
                with contextlib.suppress(ContainerError):
                    out.append(self.state(d.name))
        return out

    async def exec(self, cid: str, args: builtins.list[str], timeout: float,
                   output_limit: int = execin.DEFAULT_OUTPUT_LIMIT) -> tuple[int, bytes]:
        """Run ``args`` inside running container ``cid`` (its namespaces, cgroup, user, capabilities,
        env and cwd: :mod:`agent_runtime.execin`); return ``(exit code, first output_limit bytes of
        stdout+stderr)``. Raises TimeoutError after ``timeout`` seconds (the command is killed),
        ContainerNotFound, or ContainerError when the container is not running."""
        st = self.state(cid)
        if st.status != "running" or not st.pid:
            raise ContainerError(f"container {cid} is not running")
        try:
            config = json.loads((self._dir(cid) / "config.json").read_text())
            process, cgroups_path = config["process"], (config.get("linux") or {}).get("cgroupsPath")
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ContainerError(f"container {cid}: cannot read its config.json: {e}") from e
        return await execin.exec_in(st.pid, process, args, timeout, output_limit, cgroups_path)

    def spec(self, cid: str) -> ContainerSpec:
        """The ContainerSpec the container was created from. Raises ContainerNotFound."""
        return ContainerSpec.from_dict(self._meta(cid)["spec"])

    def read_log_page(self, cid: str, tail: int = -1, since: float = 0.0, cursor: str | None = None,
                      limit: int = READ_LIMIT) -> LogPage:
        """One bounded read of the container's log (:func:`agent_runtime.jsonfile.read_page`): the last
        ``tail`` records (-1 = all) not older than ``since`` (seconds since the epoch), or with
        ``cursor`` the records after it; at most ``limit`` bytes. Returns a LogPage (``records``
        ``{"log", "stream", "time"}`` oldest first, ``cursor`` to continue from, ``more``). Raises
        ContainerNotFound, or ContainerError for a malformed cursor or an unreadable log."""
        path = self.log_path(cid)
        self._meta(cid)
        try:
            return read_page(path, tail, since, cursor, limit)
        except (ValueError, OSError) as e:
            raise ContainerError(f"container {cid}: cannot read its log: {e}") from e

    def read_logs(self, cid: str, tail: int = -1, since: float = 0.0) -> builtins.list[dict[str, Any]]:
        """All log records ``{"log", "stream", "time"}`` of the container, oldest first; ``tail`` ≥ 0
        keeps the last N, ``since`` (seconds since the epoch) drops older records. Reads page by page
        (:meth:`read_log_page`) but returns everything kept, up to max-size × max-file bytes: callers
        that must bound memory use :meth:`read_log_page`."""
        page = self.read_log_page(cid, tail, since)
        out = list(page.records)
        while page.more:
            page = self.read_log_page(cid, cursor=page.cursor)
            out.extend(page.records)
        return out


__all__ += ["ImageError"]
