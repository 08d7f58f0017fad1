"""Command line of ``shoal-oci``, a runc-compatible subset (see runc(8)).

    shoal-oci [--root DIR] run [--pid-file F] [--bundle B] ID   # foreground; exits with the container's code
    shoal-oci [--root DIR] state ID                              # JSON state (OCI runtime.md "state")
    shoal-oci [--root DIR] kill ID [SIGNAL]                      # default SIGTERM
    shoal-oci [--root DIR] delete [--force] ID
    shoal-oci [--root DIR] list

``create``/``start`` (the two-step lifecycle) are not implemented; ``run`` covers what the shim needs.
Errors go to stderr as ``shoal-oci: <message>`` with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

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
    alive = pid > 0 and os.path.exists(f"/proc/{pid}")
    st["status"] = "running" if alive else "stopped"
    return st


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
        from agent_runtime.oci.runtime import RuntimeError_, run

        try:
            code = run(a.bundle, a.id, a.pid_file, a.root)
        except RuntimeError_ as e:
            print(f"shoal-oci: {e}", file=sys.stderr)
            sys.exit(1)
        except OSError as e:
            print(f"shoal-oci: {e}", file=sys.stderr)
            sys.exit(1)
        sys.exit(code)
    if a.cmd == "state":
        st = _read_state(a.root, a.id)
        out = {"ociVersion": st.get("ociVersion", "1.0.2"), "id": a.id, "status": st["status"],
               "pid": st.get("pid"), "bundle": st.get("bundle")}
        print(json.dumps(out, indent=2))
        sys.exit(0)
    if a.cmd == "kill":
        st = _read_state(a.root, a.id)
        if st["status"] != "running":
            raise SystemExit(f"shoal-oci: container {a.id!r} is not running")
        os.kill(int(str(st["pid"])), _parse_signal(a.signal))
        sys.exit(0)
    if a.cmd == "delete":
        path = os.path.join(a.root, a.id)
        if not os.path.isdir(path):
            raise SystemExit(f"shoal-oci: container {a.id!r} does not exist")
        st = _read_state(a.root, a.id)
        if st["status"] == "running":
            if not a.force:
                raise SystemExit(f"shoal-oci: container {a.id!r} is running; stop it or use --force")
            os.kill(int(str(st["pid"])), signal.SIGKILL)
        from agent_runtime.oci.cgroups import Cgroup

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
