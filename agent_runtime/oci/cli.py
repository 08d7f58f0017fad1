"""Command line of ``shoal-oci``, a runc-compatible subset (see runc(8)).

    shoal-oci [--root DIR] run [--pid-file F] [--bundle B] ID   # foreground; exits with the container's code
    shoal-oci [--root DIR] state ID                              # JSON state (OCI runtime.md "state")
    shoal-oci [--root DIR] kill ID [SIGNAL]                      # default SIGTERM
    shoal-oci [--root DIR] delete [--force] ID
    shoal-oci [--root DIR] list

    shoal-oci [--root DIR] create [--pid-file F] [--bundle B] ID  # set up; the process waits before exec
    shoal-oci [--root DIR] start ID                              # let a created container exec

After ``create`` a detached monitor process holds the container (it is the container's parent, reaps
it and removes the cgroup); the container's stdio are the ones ``create`` was given, as with runc.
Errors go to stderr as ``shoal-oci: <message>`` with exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import sys

from agent_runtime.oci.cgroups import Cgroup
from agent_runtime.oci.runtime import RuntimeError_, run

DEFAULT_ROOT = "/run/shoal-oci"


def _parse_signal(s: str) -> int:
    s = s.upper()
    if s.isdigit():
        return int(s)
    if not s.startswith("SIG"):
        s = "SIG" + s
    try:
        return int(signal.Signals[s])
    except KeyError as e:
        raise SystemExit(f"shoal-oci: unknown signal {s!r}") from e


def _read_state(root: str, cid: str) -> dict[str, object]:
    path = os.path.join(root, cid, "state.json")
    try:
        with open(path) as f:
            st: dict[str, object] = json.load(f)
    except FileNotFoundError as e:
        raise SystemExit(f"shoal-oci: container {cid!r} does not exist (no {path})") from e
    pid = int(str(st.get("pid", 0)))
    alive = pid > 0 and not st.get("stopped") and _alive(pid)
    if not alive:
        st["status"] = "stopped"
    elif os.path.exists(os.path.join(root, cid, "exec.fifo")):
        st["status"] = "created"
    else:
        st["status"] = "running"
    return st


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _create(a: argparse.Namespace) -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        code = 1

        def ready() -> None:
            os.write(w, b"ok")
            os.close(w)

        try:
            code = run(a.bundle, a.id, a.pid_file, a.root, exec_fifo=True, keep_state=True, on_ready=ready)
        except (RuntimeError_, OSError) as e:
            with contextlib.suppress(OSError):
                os.write(w, f"shoal-oci: {e}".encode())
        finally:
            os._exit(code)
    os.close(w)
    msg = b""
    # The container's init inherits the write end until its exec, so stop at "ok" rather than at EOF.
    while msg != b"ok" and (chunk := os.read(r, 4096)):
        msg += chunk
    os.close(r)
    if msg != b"ok":
        print(msg.decode(errors="replace") or "shoal-oci: create failed", file=sys.stderr)
        return 1
    return 0


def _start(a: argparse.Namespace) -> int:
    st = _read_state(a.root, a.id)
    fifo = os.path.join(a.root, a.id, "exec.fifo")
    if st["status"] != "created" or not os.path.exists(fifo):
        print(f"shoal-oci: cannot start container {a.id!r} in status {st['status']}", file=sys.stderr)
        return 1
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        pid = int(str(st["pid"]))
        while True:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready and os.read(fd, 1):
                break
            if not _alive(pid):
                print(f"shoal-oci: container {a.id!r} exited before it was started", file=sys.stderr)
                return 1
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fifo)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (runc-style global flags before the command) and run the command; exits the process."""
    p = argparse.ArgumentParser(prog="shoal-oci", description="Shoal's OCI runtime (runc-compatible subset)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="state directory (default %(default)s)")
    p.add_argument("--log", default=None, help="accepted for runc compatibility; ignored")
    p.add_argument("--log-format", default=None, help="accepted for runc compatibility; ignored")
    p.add_argument("--systemd-cgroup", action="store_true", help="not supported; rejected")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="create and run a container in the foreground")
    r.add_argument("--bundle", "-b", default=".")
    r.add_argument("--pid-file", default=None)
    r.add_argument("--detach", "-d", action="store_true", help="not supported")
    r.add_argument("id")
    c = sub.add_parser("create", help="set up a container; it waits before its exec until `start`")
    c.add_argument("--bundle", "-b", default=".")
    c.add_argument("--pid-file", default=None)
    c.add_argument("--console-socket", default=None, help="not supported")
    c.add_argument("id")
    st_ = sub.add_parser("start", help="start a created container")
    st_.add_argument("id")
    s = sub.add_parser("state")
    s.add_argument("id")
    k = sub.add_parser("kill")
    k.add_argument("--all", "-a", action="store_true")
    k.add_argument("id")
    k.add_argument("signal", nargs="?", default="SIGTERM")
    d = sub.add_parser("delete")
    d.add_argument("--force", "-f", action="store_true")
    d.add_argument("id")
    sub.add_parser("list")
    a = p.parse_args(argv)
    if a.systemd_cgroup:
        raise SystemExit("shoal-oci: --systemd-cgroup is not supported; use cgroupfs paths")

    if a.cmd == "run":
        if a.detach:
            raise SystemExit("shoal-oci: run --detach is not supported; run in the foreground (the shim does)")
        try:
            code = run(a.bundle, a.id, a.pid_file, a.root)
        except RuntimeError_ as e:
            print(f"shoal-oci: {e}", file=sys.stderr)
            sys.exit(1)
        except OSError as e:
            print(f"shoal-oci: {e}", file=sys.stderr)
            sys.exit(1)
        sys.exit(code)
    if a.cmd == "create":
        if a.console_socket:
            raise SystemExit("shoal-oci: --console-socket (terminals) is not supported")
        sys.exit(_create(a))
    if a.cmd == "start":
        sys.exit(_start(a))
    if a.cmd == "state":
        st = _read_state(a.root, a.id)
        out = {"ociVersion": st.get("ociVersion", "1.0.2"), "id": a.id, "status": st["status"],
               "pid": st.get("pid"), "bundle": st.get("bundle")}
        print(json.dumps(out, indent=2))
        sys.exit(0)
    if a.cmd == "kill":
        st = _read_state(a.root, a.id)
        if st["status"] not in ("running", "created"):
            raise SystemExit(f"shoal-oci: container {a.id!r} is not running")
        os.kill(int(str(st["pid"])), _parse_signal(a.signal))
        sys.exit(0)
    if a.cmd == "delete":
        path = os.path.join(a.root, a.id)
        if not os.path.isdir(path):
            raise SystemExit(f"shoal-oci: container {a.id!r} does not exist")
        st = _read_state(a.root, a.id)
        if st["status"] in ("running", "created"):
            if not a.force:
                raise SystemExit(f"shoal-oci: container {a.id!r} is running; stop it or use --force")
            os.kill(int(str(st["pid"])), signal.SIGKILL)
        if st.get("cgroupsPath"):
            Cgroup(str(st["cgroupsPath"])).destroy()
        for f in os.listdir(path):
            os.unlink(os.path.join(path, f))
        os.rmdir(path)
        sys.exit(0)
    if a.cmd == "list":
        rows = []
        if os.path.isdir(a.root):
            for cid in sorted(os.listdir(a.root)):
                try:
                    st = _read_state(a.root, cid)
                except SystemExit:
                    continue
                rows.append({"id": cid, "pid": st.get("pid"), "status": st["status"], "bundle": st.get("bundle")})
        print(json.dumps(rows, indent=2))
        sys.exit(0)


if __name__ == "__main__":
    main()
