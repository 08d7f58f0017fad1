"""Putting service VIPs into the kernel: ``nft -f -`` transactions, UDP conntrack clean-up, and
:class:`LoadBalancer`, which remembers what it applied and sends only deltas.

Everything here is synchronous and short (one ``nft`` process per batch: about 10 ms for a small
delta, 0.14 s for a full load of 1k services x 3 endpoints per ``/work/shared/NETWORKING-FACTS.md``);
call it through ``asyncio.to_thread`` from a coroutine.

Network namespaces: with ``netns=PATH`` (a bind-mounted namespace file such as ``overlaynet.netns``
makes) the command runs as ``nsenter --net=PATH -- nft ...``, which changes only the network
namespace. (``ip netns exec`` also unshares a mount namespace and remounts /sys; not needed here.)

Follows kube-proxy's nftables proxier (kubernetes/kubernetes ``pkg/proxy/nftables``: one
transaction per sync, partial syncs, full resync after a failure, UDP conntrack entries of removed
endpoints deleted, ``pkg/proxy/conntrack``), learnt from, not copied.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from overlaynet.lb import rules
from overlaynet.lb.rules import Endpoint, LBState

__all__ = ["ConntrackError", "LoadBalancer", "NftError", "flush_udp_conntrack", "run_nft"]

NFT_TIMEOUT = 60.0  # seconds; a 10k-service full load takes ~20 s (NETWORKING-FACTS §3)
CONNTRACK_TIMEOUT = 20.0

_DELETED_RE = re.compile(r"(\d+) flow entries have been deleted")


class NftError(RuntimeError):
    """``nft`` refused a script (nothing of it was applied: a script is one transaction).

    ``returncode`` (int, or None when nft could not be started or timed out), ``stderr`` (nft's
    message, with line and column of the bad command) and ``script`` (what was sent)."""

    def __init__(self, message: str, returncode: int | None, stderr: str, script: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr
        self.script = script


class ConntrackError(RuntimeError):
    """``conntrack -D`` failed (not installed, or an error other than "0 entries deleted")."""


def _in_netns(cmd: list[str], netns: str | Path | None) -> list[str]:
    if netns is None:
        return cmd
    return ["nsenter", f"--net={netns}", "--", *cmd]


def run_nft(script: str, netns: str | Path | None = None, check_only: bool = False,
            timeout: float = NFT_TIMEOUT) -> None:
    """Run ``nft -f -`` (``nft -c -f -`` with ``check_only``: parse and validate in the kernel,
    change nothing) with ``script`` on stdin, in the network namespace file ``netns`` if given.

    An empty script does nothing. Raises :class:`NftError` carrying nft's own message when nft exits
    non-zero, is missing, or runs longer than ``timeout`` seconds."""
    if not script.strip():
        return
    cmd = _in_netns(["nft", *(["-c"] if check_only else []), "-f", "-"], netns)
    try:
        proc = subprocess.run(cmd, input=script, text=True, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise NftError(f"cannot run {cmd[0]}: {e}", None, str(e), script) from e
    except subprocess.TimeoutExpired as e:
        raise NftError(f"nft did not finish within {timeout:g} s", None, "", script) from e
    if proc.returncode != 0:
        err = proc.stderr.strip()
        where = f" in network namespace {netns}" if netns is not None else ""
        raise NftError(f"nft -f failed{where} (exit {proc.returncode}): {err}", proc.returncode, err, script)


def flush_udp_conntrack(endpoint_ip: str, vip: str | None = None, port: int | None = None,
                        netns: str | Path | None = None, timeout: float = CONNTRACK_TIMEOUT) -> int:
    """Delete the UDP conntrack entries DNATed to ``endpoint_ip`` (``conntrack -D -p udp --dst-nat
    IP``; narrowed to flows first sent to ``vip`` with ``--orig-dst VIP`` and to the endpoint's
    ``port`` with ``--reply-port-src PORT`` when given), in ``netns`` if given. Without this a UDP client that keeps sending (DNS, statsd) keeps hitting the removed
    endpoint, since each packet refreshes the entry.

    Returns how many entries were deleted (0 is fine: conntrack then exits 1, which is not an error
    here). Raises :class:`rules.RulesError` for a bad address and :class:`ConntrackError` when
    conntrack (Debian package ``conntrack``) is missing or fails."""
    ip = rules.Endpoint(endpoint_ip, 1).ip
    cmd = ["conntrack", "-D", "-p", "udp", "--dst-nat", ip]
    if vip is not None:
        cmd += ["--orig-dst", rules.ServiceKey(vip, "udp", 1).vip]
    if port is not None:
        cmd += ["--reply-port-src", str(rules.Endpoint(ip, port).port)]
    cmd = _in_netns(cmd, netns)
    try:
        proc = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise ConntrackError(f"cannot run {cmd[0]} (install the Debian package conntrack): {e}") from e
    except subprocess.TimeoutExpired as e:
        raise ConntrackError(f"conntrack -D did not finish within {timeout:g} s") from e
    m = _DELETED_RE.search(proc.stderr + proc.stdout)
    if m is not None and proc.returncode in (0, 1):
        return int(m.group(1))
    raise ConntrackError(f"conntrack -D failed (exit {proc.returncode}): {proc.stderr.strip()}")


class LoadBalancer:
    """The service VIPs of one network namespace, as the private table ``ip <table>``.

    ``apply(state)`` makes the table hold ``state``: the first time (and after any failure) with a
    full, atomic replacement (:func:`rules.render_full`), afterwards with only the delta from the
    last applied state (:func:`rules.render_delta`), one ``nft -f`` transaction per call; nothing
    runs when nothing changed. After the rules changed, UDP conntrack entries to endpoints that left
    a UDP service or a whole VIP are deleted. ``resync()`` re-applies everything (kube-proxy does this periodically
    to repair outside edits); ``remove()`` deletes the table.

    ``nft`` and ``conntrack`` are the functions used to run scripts / flush entries (tests pass
    fakes); they get ``netns`` as a keyword. Not thread-safe: one caller at a time.
    """

    def __init__(self, table: str = "shoal-lb", netns: str | Path | None = None,
                 nft: Callable[..., None] = run_nft,
                 conntrack: Callable[..., int] = flush_udp_conntrack) -> None:
        self.table = rules.validate_table_name(table)
        self.netns = netns
        self._nft = nft
        self._conntrack = conntrack
        self._applied: LBState | None = None  # None: the kernel's table is unknown, next apply is full

    @property
    def applied(self) -> LBState | None:
        """The state last applied successfully, or None before the first apply / after a failure."""
        return self._applied

    def apply(self, state: LBState) -> str:
        """Make the table hold ``state``; return the script sent (``""`` when nothing changed).

        Raises :class:`NftError` (the table is then unchanged; the next call does a full load) and
        :class:`ConntrackError` (the rules were applied; only the clean-up failed; its first error)."""
        old = self._applied
        script = rules.render_full(state, self.table) if old is None else rules.render_delta(old, state, self.table)
        if script:
            self._applied = None
            self._nft(script, netns=self.netns)
        self._applied = state
        if old is not None:
            self._flush_removed_udp(old, state)
        return script

    def resync(self) -> str:
        """Replace the table with the last applied state (full script); ``""`` if nothing was applied."""
        state = self._applied
        if state is None:
            return ""
        self._applied = None
        return self.apply(state)

    def remove(self) -> None:
        """Delete the table (fine if it does not exist); the next apply is a full load."""
        self._applied = None
        self._nft(rules.render_delete_table(self.table), netns=self.netns)

    def _flush_removed_udp(self, old: LBState, new: LBState) -> None:
        first: ConntrackError | None = None
        for key, eps in old.services.items():
            if key.proto not in ("udp", rules.ANY_PROTO):  # a whole VIP carries UDP too
                continue
            gone: set[Endpoint] = set(eps) - set(new.services.get(key, ()))
            for ep in sorted(gone, key=Endpoint._sort_key):
                try:
                    self._conntrack(ep.ip, vip=None if key.is_local else key.vip, port=ep.port, netns=self.netns)
                except ConntrackError as e:
                    first = first or e
        if first is not None:
            raise first
