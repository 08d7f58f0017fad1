"""shoal-shim: one process per container that outlives shoald (as containerd-shim does).

    shoal-shim --id ID --bundle DIR --log FILE --state FILE --runtime PATH [--runtime-root DIR]
               [--runtime-kind shoal|runc]

The first process forks, the child calls setsid(2) and forks again; the grandchild is the shim.
The shim runs ``<runtime> [--root R] run --pid-file <dir>/init.pid --bundle DIR ID`` with stdin
from /dev/null and stdout/stderr on pipes, turns every line into a Docker json-file log record
(``{"log": "...\\n", "stream": "stdout"|"stderr", "time": RFC 3339}``), reaps the runtime and
writes ``shim.json`` atomically at each step:

    {"status": "running"|"exited", "shim_pid", "pid", "pid_start", "exit_code", "started_at",
     "finished_at", "error"}

The first process prints that JSON on stdout once the container process exists (or has already
exited) and exits 0; it exits 1 with a message on stderr if the shim itself could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

from shoal.util import now_rfc3339


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), None if no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return int(data.rsplit(")", 1)[1].split()[19])


def write_state(path: str, st: dict[str, Any]) -> None:
    """Write ``st`` as JSON to ``path`` atomically (temp file + rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(st, f)
    os.replace(tmp, path)


class _LogWriter:
    def __init__(self, path: str) -> None:
        self.f = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the shim
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self.last_stderr = ""

    def feed(self, stream: str, data: bytes) -> None:
        buf = self.partial[stream] + data
        *lines, rest = buf.split(b"\n")
        out = []
        for line in lines:
            out.append(self._record(stream, line + b"\n"))
        # Docker splits very long lines at 16 KiB; keep memory bounded the same way.
        while len(rest) >= 16384:
            out.append(self._record(stream, rest[:16384]))
            rest = rest[16384:]
        self.partial[stream] = rest
        if out:
            self.f.write(b"".join(out))

    def _record(self, stream: str, line: bytes) -> bytes:
        text = line.decode("utf-8", errors="replace")
        if stream == "stderr" and text.strip():
            self.last_stderr = text.strip()
        return (json.dumps({"log": text, "stream": stream, "time": now_rfc3339()}) + "\n").encode()

    def flush(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                self.f.write(self._record(stream, rest))
        self.partial = {"stdout": b"", "stderr": b""}


def _serve(a: argparse.Namespace, ready_w: int) -> int:
    base = os.path.dirname(os.path.abspath(a.state))
    pid_file = os.path.join(base, "init.pid")
    try:
        os.unlink(pid_file)
    except FileNotFoundError:
        pass
    st: dict[str, Any] = {"status": "starting", "shim_pid": os.getpid(), "pid": 0, "exit_code": None,
                          "started_at": None, "finished_at": None, "error": None}
    write_state(a.state, st)
    argv = [a.runtime]
    if a.runtime_root:
        argv += ["--root", a.runtime_root]
    argv += ["run", "--pid-file", pid_file, "--bundle", a.bundle, a.id]
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    log = _LogWriter(a.log)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w, close_fds=True,
                                cwd=a.bundle)
    except OSError as e:
        st.update(status="exited", exit_code=127, error=f"cannot run OCI runtime {a.runtime}: {e}",
                  finished_at=now_rfc3339())
        write_state(a.state, st)
        os.write(ready_w, json.dumps(st).encode())
        os.close(ready_w)
        return 1
    os.close(out_w)
    os.close(err_w)
    sel = selectors.DefaultSelector()
    sel.register(out_r, selectors.EVENT_READ, "stdout")
    sel.register(err_r, selectors.EVENT_READ, "stderr")
    open_fds = 2

    def pump(timeout: float) -> None:
        nonlocal open_fds
        for key, _ in sel.select(timeout):
            fd = int(key.fd)
            data = os.read(fd, 65536)
            if not data:
                sel.unregister(fd)
                os.close(fd)
                open_fds -= 1
            else:
                log.feed(str(key.data), data)

    # Wait for the container process to exist: the runtime writes the pid file before the exec.
    running = False
    while not running:
        try:
            with open(pid_file) as f:
                txt = f.read().strip()
            if txt:
                st.update(status="running", pid=int(txt), pid_start=proc_start_time(int(txt)),
                          started_at=now_rfc3339())
                running = True
                break
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            break
        if open_fds:
            pump(0.002)
        else:
            time.sleep(0.002)
    if running:
        write_state(a.state, st)
        os.write(ready_w, json.dumps(st).encode())
        os.close(ready_w)
        ready_w = -1
    while open_fds:
        pump(1.0)
    log.flush()
    code = proc.wait()
    st.update(status="exited", exit_code=code, finished_at=now_rfc3339())
    if not running:
        err = log.last_stderr.removeprefix("shoal-oci: ")
        m = re.search(r'msg="((?:[^"\\]|\\.)*)"', err)  # runc's logrus line: time=… level=error msg="…"
        if m:
            err = m.group(1).replace('\\"', '"')
        st["error"] = err or f"OCI runtime exited with code {code}"
        if "executable file not found" in log.last_stderr or "no such file or directory" in log.last_stderr:
            st["exit_code"] = 127
        st["started_at"] = st["finished_at"]
    elif code in (126, 127) and log.last_stderr:
        st["error"] = log.last_stderr.removeprefix("shoal-oci: ")
    write_state(a.state, st)
    if ready_w >= 0:
        os.write(ready_w, json.dumps(st).encode())
        os.close(ready_w)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``shoal-shim``; see the module docstring for arguments and behaviour."""
    p = argparse.ArgumentParser(prog="shoal-shim")
    p.add_argument("--id", required=True)
    p.add_argument("--bundle", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--runtime", required=True, help="path of the OCI runtime binary (shoal-oci or runc)")
    p.add_argument("--runtime-root", default=None, help="--root passed to the OCI runtime")
    a = p.parse_args(argv)
    if not os.path.isfile(os.path.join(a.bundle, "config.json")):
        print(f"shoal-shim: no config.json in bundle {a.bundle}", file=sys.stderr)
        sys.exit(1)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        # The shim proper: no controlling terminal, no inherited stdio, survives its spawner.
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        code = 1
        try:
            code = _serve(a, ready_w)
        finally:
            os._exit(code)
    os.close(ready_w)
    os.waitpid(pid, 0)
    chunks = []
    while True:
        b = os.read(ready_r, 65536)
        if not b:
            break
        chunks.append(b)
    data = b"".join(chunks)
    if not data:
        print("shoal-shim: the shim exited before the container started (see shim.json)", file=sys.stderr)
        sys.exit(1)
    sys.stdout.write(data.decode() + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
