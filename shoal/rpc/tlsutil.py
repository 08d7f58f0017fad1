"""TLS helpers for port 2377: SSL contexts from PEM files and the peer's identity from its certificate.

Node certificates are issued by the cluster CA (manager/ca.py) in swarmkit's shape
(SK: ca/certificates.go): subject CN = node ID, OU = ``swarm-manager`` | ``swarm-worker``,
O = cluster ID; SANs hold the role name and the node ID, so a client verifies a manager
under the name :data:`MANAGER_SERVER_NAME`.

Also here, because manager and worker both need them (``manager.ca`` re-exports them): join
token parsing (``SWMTKN-1-<digest b36 50>-<secret b36 25>``, SK: ca/config.go), the root CA
digest check, and node key + CSR generation (ECDSA P-256).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def node_server_context(certs_dir: PathLike) -> ssl.SSLContext:
    """:func:`server_context` for the node certificate in ``certs_dir`` (``node.crt``,
    ``node.key``, ``ca.crt``, as :func:`write_node_files` lays them out)."""
    d = Path(certs_dir)
    return server_context(d / "node.crt", d / "node.key", d / "ca.crt")


def node_client_context(certs_dir: PathLike) -> ssl.SSLContext:
    """:func:`client_context` presenting the node certificate in ``certs_dir`` and verifying
    managers against its ``ca.crt`` (mutual TLS on 2377)."""
    d = Path(certs_dir)
    return client_context(d / "node.crt", d / "node.key", d / "ca.crt")


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


# -- join tokens and node keys (shared by manager.ca and worker.join) ---------------------------

TOKEN_PREFIX = "SWMTKN"
TOKEN_VERSION = "1"
DIGEST_LEN = 50  # base-36 digits of a sha256 digest, zero-padded
SECRET_LEN = 25  # base-36 digits of a 16-byte secret, zero-padded
SECRET_BYTES = 16

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_B36_RE = re.compile(r"^[0-9a-z]+$")


def to_base36(data: bytes, width: int) -> str:
    """Return ``data`` read as a big-endian unsigned integer in lowercase base 36, zero-padded to ``width``."""
    n = int.from_bytes(data, "big")
    digits = []
    while n:
        n, r = divmod(n, 36)
        digits.append(_B36[r])
    return "".join(reversed(digits)).rjust(width, "0")


def cert_digest(cert_pem: str | bytes) -> bytes:
    """Return sha256 of the DER encoding of the PEM certificate ``cert_pem`` (32 bytes).

    Raises ``ValueError`` if ``cert_pem`` is not a PEM certificate.
    """
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    cert = x509.load_pem_x509_certificate(data)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def parse_token(token: str) -> tuple[str, str]:
    """Split a join token into ``(digest_b36, secret_b36)`` (50 and 25 lowercase base-36 chars).

    Raises ``ValueError("invalid join token: …")`` saying what is wrong, e.g. a wrong prefix,
    version, number of parts or part length. Follows SK: ca/config.go ``ParseJoinToken``.
    """
    if not isinstance(token, str) or not token:
        raise ValueError("invalid join token: the token is empty; get one with `swarm join-token worker` on a manager")
    token = token.strip()
    parts = token.split("-")
    if len(parts) != 4:
        raise ValueError(
            f"invalid join token: expected 4 dash-separated parts (SWMTKN-1-<digest>-<secret>), got {len(parts)}"
        )
    prefix, version, digest, secret = parts
    if prefix != TOKEN_PREFIX:
        raise ValueError(f"invalid join token: it must start with {TOKEN_PREFIX}-, not {prefix!r}")
    if version != TOKEN_VERSION:
        raise ValueError(f"invalid join token: unsupported token version {version!r} (only {TOKEN_VERSION})")
    if len(digest) != DIGEST_LEN or not _B36_RE.match(digest):
        raise ValueError(
            f"invalid join token: the CA digest part must be {DIGEST_LEN} base-36 characters, got {len(digest)}"
        )
    if len(secret) != SECRET_LEN or not _B36_RE.match(secret):
        raise ValueError(
            f"invalid join token: the secret part must be {SECRET_LEN} base-36 characters, got {len(secret)}"
        )
    return digest, secret


def token_matches_ca(token: str, ca_cert_pem: str | bytes) -> bool:
    """Return True if the digest in ``token`` is the sha256 of ``ca_cert_pem``'s DER. Raises ``ValueError`` on a malformed token."""
    digest, _ = parse_token(token)
    return hmac.compare_digest(digest, to_base36(cert_digest(ca_cert_pem), DIGEST_LEN))


def generate_key() -> ec.EllipticCurvePrivateKey:
    """Return a new ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """Return ``key`` as an unencrypted PKCS#8 PEM string."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def generate_key_and_csr() -> tuple[str, str]:
    """Return ``(key_pem, csr_pem)``: a new P-256 key and a CSR for it (the CA sets the subject itself)."""
    key = generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal-node")]))
        .sign(key, hashes.SHA256())
    )
    return key_to_pem(key), csr.public_bytes(serialization.Encoding.PEM).decode()


def _write_private(path: Path, data: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_node_files(certs_dir: Path, ca_pem: str, cert_pem: str, key_pem: str) -> None:
    """Write ``ca.crt``, ``node.crt`` and ``node.key`` (mode 0600) into ``certs_dir`` (created 0700), atomically each."""
    certs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(certs_dir / "ca.crt", ca_pem)
    _write_private(certs_dir / "node.crt", cert_pem)
    _write_private(certs_dir / "node.key", key_pem)


def write_ca_key(certs_dir: Path, key_pem: str | None) -> None:
    """Write the cluster CA's private key to ``certs_dir/ca.key`` (mode 0600) on a node that
    becomes a manager; ``None`` removes it (a node demoted to worker)."""
    path = certs_dir / "ca.key"
    if key_pem is None:
        path.unlink(missing_ok=True)
    else:
        _write_private(path, key_pem)
