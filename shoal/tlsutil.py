"""TLS helpers for port 2377: SSL contexts from PEM files and the peer's identity from its certificate.

Node certificates are issued by the cluster CA (manager/ca.py) in swarmkit's shape
(SK: ca/certificates.go): subject CN = node ID, OU = ``swarm-manager`` | ``swarm-worker``,
O = cluster ID; SANs hold the role name and the node ID, so a client verifies a manager
under the name :data:`MANAGER_SERVER_NAME`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

MANAGER_SERVER_NAME = "swarm-manager"
"""The name a node checks a manager's certificate against (a DNS SAN of every manager cert)."""

ROLE_BY_OU = {"swarm-manager": "manager", "swarm-worker": "worker"}
"""Certificate OU → node role (``Spec.Role`` in the API)."""

OU_BY_ROLE = {v: k for k, v in ROLE_BY_OU.items()}
"""Node role → certificate OU."""

PathLike = str | Path


def server_context(cert: PathLike, key: PathLike, ca: PathLike) -> ssl.SSLContext:
    """Return a server-side context presenting ``cert``/``key`` (PEM files) that verifies client certs against ``ca``.

    A client certificate is optional at the TLS layer (``CERT_OPTIONAL``): peers without one
    may only call ``ca.root`` and ``ca.join``; the server's handlers check the rest with
    :func:`peer_identity`. A client cert that is presented but not signed by ``ca`` fails the
    handshake. TLS 1.2 is the minimum.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(
    cert: PathLike | None = None,
    key: PathLike | None = None,
    ca: PathLike | None = None,
    ca_pem: str | None = None,
) -> ssl.SSLContext:
    """Return a client-side context.

    - ``ca`` (PEM file) or ``ca_pem`` (PEM text): verify the server against that CA and check its
      name (connect with ``server_hostname=MANAGER_SERVER_NAME``). With neither, the server is
      NOT verified: use that only for ``ca.root``, whose answer the caller checks against the
      join token's digest.
    - ``cert`` and ``key`` (PEM files): present this client certificate (mutual TLS).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None or ca_pem is not None:
        if ca is not None:
            ctx.load_verify_locations(cafile=str(ca))
        if ca_pem is not None:
            ctx.load_verify_locations(cadata=ca_pem)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        if key is None:
            raise ValueError("client_context: a client certificate needs its key (key=None)")
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _subject_fields(cert: Mapping[str, object]) -> dict[str, str]:
    out: dict[str, str] = {}
    subject = cert.get("subject") or ()
    if not isinstance(subject, tuple):
        return out
    for rdn in subject:
        for pair in rdn:
            if isinstance(pair, tuple) and len(pair) == 2:
                out.setdefault(str(pair[0]), str(pair[1]))
    return out


def peer_certificate_fields(ssl_object: ssl.SSLObject | None) -> dict[str, str]:
    """Return the verified peer certificate's subject as a dict (``commonName``,
    ``organizationalUnitName``, ``organizationName``, …); empty when there is none."""
    if ssl_object is None:
        return {}
    cert = ssl_object.getpeercert()
    if not cert:
        return {}
    return _subject_fields(cert)


def peer_identity(ssl_object: ssl.SSLObject | None) -> tuple[str, str] | None:
    """Return ``(node_id, role)`` from the peer's verified certificate, or None.

    None when there is no TLS, no client certificate, or the OU is not a Swarm role.
    ``role`` is ``"manager"`` or ``"worker"``. Only certificates that verified against the
    context's CA are visible here (``getpeercert()`` returns nothing otherwise).
    """
    fields = peer_certificate_fields(ssl_object)
    cn = fields.get("commonName")
    role = ROLE_BY_OU.get(fields.get("organizationalUnitName", ""))
    if not cn or role is None:
        return None
    return cn, role


def peer_cluster_id(ssl_object: ssl.SSLObject | None) -> str | None:
    """Return the cluster ID (subject O) of the peer's verified certificate, or None."""
    return peer_certificate_fields(ssl_object).get("organizationName")
