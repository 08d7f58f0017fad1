"""Joining a swarm: the worker side of ``ca.root`` + ``ca.join`` on 2377.

Follows swarmkit's join (SK: ca/certificates.go ``GetRemoteCA``, node/node.go): the joiner
first fetches the root CA over TLS *without* verifying the server, checks that sha256 of the
served root certificate's DER equals the digest in the join token (trust on first use pinned by
the token), then reconnects verifying the manager against that CA and asks for a node
certificate with a CSR of a freshly generated key.
"""

from __future__ import annotations

import asyncio
import os
import platform
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shoal.rpc import tlsutil, wire
from shoal.rpc.tlsutil import (
    DIGEST_LEN,
    cert_digest,
    generate_key_and_csr,
    parse_token,
    to_base36,
    write_node_files,
)

DEFAULT_PORT = 2377
DEFAULT_TIMEOUT = 20.0  # seconds for the whole join


class JoinError(Exception):
    """Joining failed: nothing listening, timeout, CA mismatch, or the manager refused (e.g. invalid token).

    ``str(e)`` says what went wrong and what to check.
    """


def split_addr(addr: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"host"``, or ``"[v6]:port"``) into ``(host, port)``.

    Raises ``ValueError`` with a clear message for an empty address or a bad port.
    """
    a = (addr or "").strip()
    if not a:
        raise ValueError("the remote address is empty; give the manager's address, e.g. 10.99.0.11:2377")
    if a.startswith("["):
        host, _, rest = a[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif a.count(":") == 1:
        host, port_s = a.split(":")
    else:
        host, port_s = a, ""
    if not host:
        raise ValueError(f"invalid remote address {addr!r}: no host")
    if not port_s:
        return host, default_port
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"invalid remote address {addr!r}: the port must be a number from 1 to 65535")
    return host, int(port_s)


def local_description(hostname: str, engine_version: str = "") -> dict[str, Any]:
    """Return this machine's NodeDescription: ``Hostname``, ``Platform{Architecture, OS}``,
    ``Resources{NanoCPUs, MemoryBytes}``, ``Engine{EngineVersion}`` (from os.cpu_count and /proc/meminfo)."""
    if not engine_version:
        try:
            from importlib.metadata import version

            engine_version = version("shoal")
        except Exception:
            engine_version = "0.0.0"
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return {
        "Hostname": hostname,
        "Platform": {"Architecture": platform.machine() or "x86_64", "OS": "linux"},
        "Resources": {"NanoCPUs": (os.cpu_count() or 1) * 1_000_000_000, "MemoryBytes": mem},
        "Engine": {"EngineVersion": engine_version, "Plugins": []},
    }


async def join(
    remote_addr: str,
    token: str,
    hostname: str,
    advertise_addr: str,
    certs_dir: Path | str,
    description: dict[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cannot_manage: str = "",
) -> tuple[str, str, list[str]]:
    """Join the swarm of the manager at ``remote_addr`` (``"ip:port"``; port defaults to 2377) with ``token``.

    ``hostname``: this node's hostname (``Description.Hostname``); ``advertise_addr``: the IP
    other nodes reach this one at ("" = whatever address the manager sees); ``certs_dir``: where
    ``ca.crt``, ``node.crt`` and ``node.key`` are written (only on success); ``description``:
    NodeDescription (default :func:`local_description`); ``timeout``: seconds for the whole join;
    ``cannot_manage``: why this node could not serve as a manager (e.g. its listen address is in
    use), "" if it can: the manager then refuses a manager token with this reason, before it
    adds the node, instead of making it a manager that never comes up.

    Returns ``(node_id, role, managers)`` with ``managers`` a list of ``"ip:port"``.
    Raises ``ValueError`` for a malformed token or address (before any network traffic), and
    :class:`JoinError` for everything else, e.g. "could not connect to 10.99.0.11:2377: connection
    refused", "the CA served by … does not match the join token", "… refused the join: invalid
    join token".
    """
    digest_b36, _ = parse_token(token)
    host, port = split_addr(remote_addr)
    where = f"{host}:{port}"
    desc = dict(description) if description is not None else local_description(hostname)
    desc["Hostname"] = hostname
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def left() -> float:
        return max(0.05, deadline - loop.time())

    try:
        async with asyncio.timeout(timeout):
            # 1. fetch the root CA without verifying the server; the token's digest pins it
            try:
                peer = await wire.connect(host, port, tlsutil.client_context(), timeout=left())
            except wire.WireError as e:
                raise JoinError(str(e)) from e
            try:
                root = await peer.request("ca.root", {}, timeout=left())
            except wire.WireError as e:
                raise JoinError(f"could not get the root CA from {where}: {e}") from e
            finally:
                await peer.close()
            ca_pem = root.get("cert")
            if not isinstance(ca_pem, str):
                raise JoinError(f"{where} answered ca.root without a certificate; is it a swarm manager?")
            try:
                served = to_base36(cert_digest(ca_pem), DIGEST_LEN)
            except ValueError as e:
                raise JoinError(f"{where} served a root CA that is not a valid certificate: {e}") from e
            if served != digest_b36:
                raise JoinError(
                    f"the CA served by {where} does not match the join token (token pins {digest_b36[:12]}…, "
                    f"served CA is {served[:12]}…); check the token and the manager address"
                )
            # 2. ask for a node certificate, now verifying the manager against the pinned CA
            key_pem, csr_pem = generate_key_and_csr()
            ctx = tlsutil.client_context(ca_pem=ca_pem)
            try:
                peer = await wire.connect(
                    host, port, ctx, timeout=left(), server_hostname=tlsutil.MANAGER_SERVER_NAME
                )
            except wire.WireError as e:
                raise JoinError(str(e)) from e
            try:
                req: dict[str, Any] = {"token": token, "csr": csr_pem, "hostname": hostname,
                                       "addr": advertise_addr, "description": desc}
                if cannot_manage:
                    req["cannot_manage"] = cannot_manage
                reply = await peer.request("ca.join", req, timeout=left())
            except wire.RemoteError as e:
                raise JoinError(f"{where} refused the join: {e.msg}") from e
            except wire.WireError as e:
                raise JoinError(f"join request to {where} failed: {e}") from e
            finally:
                await peer.close()
    except TimeoutError as e:
        raise JoinError(f"could not join the swarm at {where}: no answer within {timeout:g} s") from e

    node_id, role, cert_pem = reply.get("node_id"), reply.get("role"), reply.get("cert")
    managers = reply.get("managers") or [where]
    if not isinstance(node_id, str) or role not in ("worker", "manager") or not isinstance(cert_pem, str):
        raise JoinError(f"{where} sent a malformed ca.join reply (missing node_id, role or cert)")
    _check_issued(cert_pem, key_pem, ca_pem, node_id, where)
    write_node_files(Path(certs_dir), ca_pem, cert_pem, key_pem)
    ca_key = reply.get("ca_key")
    if role == "manager":
        if not isinstance(ca_key, str):
            raise JoinError(f"{where} made this node a manager but did not send the CA key")
        tlsutil.write_ca_key(Path(certs_dir), ca_key)
    return node_id, str(role), [str(m) for m in managers]


async def renew_certificate(node_id: str, managers: list[str], certs_dir: Path | str,
                            timeout: float = 30.0) -> str:
    """Get a new certificate for this node's current role in the store (after ``node promote``
    or ``demote``; swarmkit's node certificate renewal) from any of ``managers`` (``host:port``),
    authenticated by the current certificate. Writes ``node.crt``/``node.key`` and, for a
    manager, ``ca.key`` (removed for a worker). Returns the role. Raises :class:`JoinError`
    naming every manager tried."""
    d = Path(certs_dir)
    ca_pem = (d / "ca.crt").read_text()
    errors = []
    for addr in managers:
        try:
            host, port = split_addr(addr)
            peer = await wire.connect_node(host, port, d, timeout=timeout)
        except (OSError, ValueError, wire.WireError) as e:
            errors.append(f"{addr}: {e}")
            continue
        try:
            key_pem, csr_pem = generate_key_and_csr()
            reply = await peer.request("ca.renew", {"csr": csr_pem}, timeout=timeout)
        except wire.WireError as e:
            errors.append(f"{addr}: {e}")
            continue
        finally:
            await peer.close()
        cert_pem, role = reply.get("cert"), reply.get("role")
        if not isinstance(cert_pem, str) or role not in ("worker", "manager"):
            errors.append(f"{addr}: malformed ca.renew reply")
            continue
        _check_issued(cert_pem, key_pem, ca_pem, node_id, addr)
        ca_key = reply.get("ca_key") if role == "manager" else None
        if role == "manager" and not isinstance(ca_key, str):
            errors.append(f"{addr}: no CA key for a manager")
            continue
        write_node_files(d, ca_pem, cert_pem, key_pem)
        tlsutil.write_ca_key(d, ca_key)
        return str(role)
    raise JoinError("could not renew this node's certificate: " + "; ".join(errors or ["no manager known"]))


def _check_issued(cert_pem: str, key_pem: str, ca_pem: str, node_id: str, where: str) -> None:
    """Check the issued certificate is for our key and node ID and signed by the pinned CA."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        cert.verify_directly_issued_by(ca)
    except Exception as e:
        raise JoinError(f"{where} issued a certificate that does not verify against its CA: {e}") from e
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise JoinError(f"{where} issued a certificate for a different key")
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    if not cn or cn[0].value != node_id:
        raise JoinError(f"{where} issued a certificate whose CN is not the node ID {node_id}")
