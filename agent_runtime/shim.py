"""shoal-shim: one process per container that outlives shoald (as containerd-shim does).

    shoal-shim --id ID --bundle DIR --log FILE --state FILE --runtime shoal|PATH [--runtime-root DIR]
               [--log-max-size BYTES] [--log-max-file N]

The first process forks, the child calls setsid(2) and forks again; the grandchild is the shim.
The shim runs ``<runtime> [--root R] run --pid-file <dir>/init.pid --bundle DIR ID`` with stdin
from /dev/null and stdout/stderr on pipes (``--runtime shoal`` runs the same code as ``shoal-oci run``,
``agent_runtime.oci.runtime.run``, in a forked child instead of exec'ing a second Python: this saves
a Python start-up per container), turns every line into a Docker json-file log record
(``{"log": "...\\n", "stream": "stdout"|"stderr", "time": RFC 3339}``) in FILE, rotated when it would
grow past ``--log-max-size`` bytes and keeping ``--log-max-file`` files (agent_runtime.jsonfile;
defaults 10 MiB × 3), reaps the runtime and
writes ``shim.json`` atomically at each step:

    {"status": "running"|"exited", "shim_pid", "pid", "pid_start", "exit_code", "started_at",
     "finished_at", "error"}

The first process prints that JSON on stdout once the container process exists (or has already
exited) and exits 0; it exits 1 with a message on stderr if the shim itself could not start.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

from agent_runtime.jsonfile import LogWriter, now_rfc3339
from agent_runtime.oci.runtime import RuntimeError_, run
from shoal.base.logopts import DEFAULT_MAX_FILE, DEFAULT_MAX_SIZE


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


class _Args:
    id: str
    bundle: str
    log: str
    state: str
    runtime: str
    runtime_root: str | None = None
    log_max_size: str = str(DEFAULT_MAX_SIZE)
    log_max_file: str = str(DEFAULT_MAX_FILE)


def _parse(argv: list[str]) -> _Args:
    a = _Args()
    names = {"--id": "id", "--bundle": "bundle", "--log": "log", "--state": "state", "--runtime": "runtime",
             "--runtime-root": "runtime_root", "--log-max-size": "log_max_size", "--log-max-file": "log_max_file"}
    it = iter(argv)
    for tok in it:
        key, eq, val = tok.partition("=")
        if key not in names:
            raise SystemExit(f"shoal-shim: unknown argument {tok!r}")
        if not eq:
            try:
                val = next(it)
            except StopIteration as e:
                raise SystemExit(f"shoal-shim: {key} needs a value") from e
        setattr(a, names[key], val)
    for req in ("id", "bundle", "log", "state", "runtime"):
        if not hasattr(a, req):
            raise SystemExit(f"shoal-shim: --{req.replace('_', '-')} is required")
    for opt in ("log_max_size", "log_max_file"):
        val = getattr(a, opt)
        if not (val.isascii() and val.isdigit()) or int(val) < 1:
            raise SystemExit(f"shoal-shim: --{opt.replace('_', '-')} must be a whole number of at least 1, not {val!r}")
    return a


class _Child:
    """The OCI runtime process: exec'd (runc) or forked running agent_runtime.oci.runtime.run (shoal)."""

    def __init__(self, a: _Args, pid_file: str, out_w: int, err_w: int, close: list[int]) -> None:
        self.returncode: int | None = None
        if a.runtime != "shoal":
            argv = [a.runtime]
            if a.runtime_root:
                argv += ["--root", a.runtime_root]
            argv += ["run", "--pid-file", pid_file, "--bundle", a.bundle, a.id]
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w, close_fds=True,
                                 cwd=a.bundle)
            self.pid = p.pid
            p.returncode = 0  # we reap it ourselves below; keep Popen's __del__ quiet
            return
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                for fd in [devnull, out_w, err_w] + close:
                    os.close(fd)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                code = run(a.bundle, a.id, pid_file, a.runtime_root or "/run/shoal-oci")
            except RuntimeError_ as e:
                os.write(2, f"shoal-oci: {e}\n".encode())
            except BaseException as e:  # noqa: BLE001 - the child must never return into the shim
                os.write(2, f"shoal-oci: {e}\n".encode())
            finally:
                os._exit(code)
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _serve(a: _Args, ready_w: int) -> int:
    base = os.path.dirname(os.path.abspath(a.state))
    pid_file = os.path.join(base, "init.pid")
    try:
        os.unlink(pid_file)
    except FileNotFoundError:
        pass
    st: dict[str, Any] = {"status": "starting", "shim_pid": os.getpid(), "pid": 0, "exit_code": None,
                          "started_at": None, "finished_at": None, "error": None}
    write_state(a.state, st)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    log = LogWriter(a.log, int(a.log_max_size), int(a.log_max_file))
    try:
        proc = _Child(a, pid_file, out_w, err_w, [out_r, err_r, ready_w])
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
    a = _parse(sys.argv[1:] if argv is None else argv)
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
        # The shim proper: no controlling terminal, no inherited stdio or other descriptors (a spawner
        # such as uvloop may leak its pipe ends or sockets to us), survives its spawner.
        os.closerange(3, ready_w)
        os.closerange(ready_w + 1, 1 << 20)
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
