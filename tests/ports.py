"""Free TCP ports on 127.0.0.1 for tests and benchmarks that start their own listeners."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports of 127.0.0.1 that nothing listens on now (all held open together
    while they are picked, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One TCP port of 127.0.0.1 that nothing listens on now."""
    return free_ports(1)[0]
