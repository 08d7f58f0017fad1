"""``shoald``'s entry point: flags, logging, the event loop, the API socket (Docker's dockerd flags
where they exist)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from shoal import __version__
from shoal.base.logopts import LogOptError, parse_flags
from shoal.base.util import parse_size
from shoal.daemon.daemon import Daemon, log
from shoal.daemon.http.app import build_app


def _byte_size(text: str) -> int:
    """``--max-layer-size``, ``--max-image-archive-size``: a positive size in binary units (``8g``, ``512m``)."""
    try:
        size = parse_size(text, binary=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: it must be more than 0 bytes")
    return size


def _engine_label(text: str) -> tuple[str, str]:
    """``--label KEY=VALUE`` (dockerd's): ``(key, value)``; raises ArgumentTypeError without a key."""
    key, eq, value = text.partition("=")
    if not key.strip() or not eq:
        raise argparse.ArgumentTypeError(f"invalid label {text!r}: use KEY=VALUE, e.g. --label storage=ssd")
    return key.strip(), value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="shoald", description="The Shoal daemon (one per host).")
    p.add_argument("--data-root", default="/var/lib/shoal", help="persistent state (default %(default)s)")
    p.add_argument("--exec-root", default="/run/shoal", help="run-time state (default %(default)s)")
    p.add_argument("--socket", default="/run/shoal/shoal.sock", help="Docker API unix socket")
    p.add_argument("--runtime", choices=["shoal", "runc"], default="shoal", help="OCI runtime")
    p.add_argument("--cgroup-parent", default="shoal", help="cgroup under which containers live")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST:PORT",
                   help="registry reached over plain HTTP (repeatable)")
    p.add_argument("--label", action="append", type=_engine_label, default=[], metavar="KEY=VALUE",
                   help="an engine label, matched by engine.labels.KEY placement constraints (repeatable)")
    p.add_argument("--max-layer-size", type=_byte_size, default="8g", metavar="SIZE",
                   help="largest image layer accepted, uncompressed (e.g. 8g, 512m; default 8g)")
    p.add_argument("--heartbeat-period", type=float, default=5.0,
                   help="dispatcher heartbeat period in seconds (node down after 3 missed)")
    p.add_argument("--heartbeat-misses", type=int, default=3,
                   help="heartbeats a node may miss before it is marked down (default %(default)s)")
    p.add_argument("--port", type=int, default=2377, help="cluster port (Raft, dispatcher, CA)")
    p.add_argument("--max-image-archive-size", type=_byte_size, default="16g", metavar="SIZE",
                   help="largest archive `image load` accepts, streamed to disk (bytes, or with a k/m/g/t "
                        "suffix; default 16g)")
    p.add_argument("--raft-tick", type=float, default=0.1,
                   help="seconds per Raft tick (default %(default)s: heartbeat every tick, election "
                        "after ElectionTick=10-20 ticks, i.e. 1-2 s; Swarm ticks every 1 s)")
    p.add_argument("--ingress-keep-client-addr", action="store_true",
                   help="routing mesh: send a published port's connections to this node's own task of the "
                        "service when it runs one, without SNAT, so the task sees the client's address "
                        "(beyond Swarm; off: Swarm's behaviour, any task on any node, source rewritten)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="default json-file option of containers: max-size=10m (rotate a container's log "
                        "when it would pass this size), max-file=3 (files kept); repeatable, a service's "
                        "--log-opt overrides it (default max-size 10 MiB, max-file 3)")
    args = p.parse_args(argv)
    try:
        args.log_opts = parse_flags(args.log_opt)
    except LogOptError as e:
        p.error(f"--log-opt: {e}")
    return args


async def serve(args: argparse.Namespace) -> None:
    """Run the daemon until SIGTERM/SIGINT; containers keep running after it stops."""
    daemon = Daemon(args)
    await daemon.start()
    app = build_app(daemon)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock_path = Path(args.socket)
    sock_path.parent.mkdir(parents=True, exist_ok=True)
    sock_path.unlink(missing_ok=True)
    site = web.UnixSite(runner, str(sock_path))
    await site.start()
    os.chmod(sock_path, 0o660)
    log.info("shoald %s serving the Docker API on %s", __version__, sock_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (containers keep running)")
    await runner.cleanup()
    await daemon.stop()
    sock_path.unlink(missing_ok=True)


class ClientErrorLogFilter(logging.Filter):
    """Turns aiohttp's "Error handling request" tracebacks for a client's fault (a request line or
    header over 8190 bytes, a bad Content-Length or chunk, an unknown method, a client that hung up
    mid-body) into one INFO line naming the error: they are the client's mistakes, answered with a
    400, not the daemon's bugs. Any other error keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, ConnectionResetError)):
            record.msg, record.args = "refused a bad request from a client: %s: %s", (type(exc).__name__, str(exc)[:200])
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def main(argv: list[str] | None = None) -> None:
    """``shoald`` entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.server").addFilter(ClientErrorLogFilter())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args))



if __name__ == "__main__":
    main()
