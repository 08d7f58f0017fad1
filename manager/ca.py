"""The cluster's certificate authority and Swarm join tokens.

Follows swarmkit's CA (SK: ca/certificates.go, ca/config.go; SWARM-FACTS 1.8):

- root CA: ECDSA P-256 key, self-signed, CN ``swarm-ca``, valid 20 years (630720000 s);
- node certificates: subject CN = node ID, OU = ``swarm-manager`` | ``swarm-worker``,
  O = cluster ID; DNS SANs = role OU and node ID; valid 90 days (2160 h), backdated 1 h;
- join tokens v1: ``SWMTKN-1-<sha256(DER of root cert) as base 36, zero-padded to 50>-<16 random
  bytes as base 36, zero-padded to 25>``. The digest pins the root CA for a joining node; the
  secret says whether the token is a worker's or a manager's.

Files in a certs dir: ``ca.crt``, ``ca.key`` (managers only), ``node.crt``, ``node.key``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.rpc.tlsutil import (  # re-exported: the token and key helpers live in shoal.rpc.tlsutil (shared with worker/)
    DIGEST_LEN,
    OU_BY_ROLE,
    SECRET_BYTES,
    SECRET_LEN,
    TOKEN_PREFIX,
    TOKEN_VERSION,
    _write_private,
    cert_digest,
    generate_key,
    generate_key_and_csr,
    key_to_pem,
    parse_token,
    to_base36,
    token_matches_ca,
    write_node_files,
)

__all__ = [
    "BACKDATE", "DIGEST_LEN", "NODE_VALIDITY", "ROLES", "ROOT_CN", "ROOT_VALIDITY", "SECRET_BYTES", "SECRET_LEN",
    "TOKEN_PREFIX", "TOKEN_VERSION", "RootCA", "cert_digest", "generate_key", "generate_key_and_csr",
    "key_to_pem", "make_token", "parse_token", "to_base36", "token_matches_ca", "token_role", "write_node_files",
]

ROOT_CN = "swarm-ca"
ROOT_VALIDITY = dt.timedelta(seconds=630720000)  # 20 years, SK: ca/config.go RootCAExpiration
NODE_VALIDITY = dt.timedelta(hours=2160)  # 90 days, SK: ca/config.go DefaultNodeCertExpiration
BACKDATE = dt.timedelta(hours=1)  # SK: ca/certificates.go CertBackdate

ROLES = ("worker", "manager")

BLACKLIST = "BlacklistedCertificates"
"""The Cluster object's map of removed nodes whose certificates are refused:
``{node_id: {"Expiry": RFC 3339}}`` (swarmkit's ``Cluster.BlacklistedCertificates``; not shown by
the API)."""


def _parse_time(s: object) -> dt.datetime | None:
    if not isinstance(s, str):
        return None
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def blacklist_node(cluster: dict[str, object], node_id: str, now: dt.datetime | None = None) -> None:
    """Record in ``cluster`` (a Cluster object, changed in place) that node ``node_id`` was
    removed from the swarm, so its certificates are refused on 2377 until they expire:
    ``cluster[BLACKLIST][node_id] = {"Expiry": now + NODE_VALIDITY}`` (no certificate issued
    before now outlives that). Entries already past their expiry are dropped.
    SK: manager/controlapi/node.go RemoveNode, expireBlacklistedCerts."""
    now = now or dt.datetime.now(dt.UTC)
    old = cluster.get(BLACKLIST)
    entries = dict(old) if isinstance(old, dict) else {}
    kept: dict[str, object] = {}
    for nid, e in entries.items():
        exp = _parse_time(e.get("Expiry")) if isinstance(e, dict) else None
        if exp is None or exp > now:
            kept[str(nid)] = e
    expiry = (now + NODE_VALIDITY).astimezone(dt.UTC)
    kept[node_id] = {"Expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}
    cluster[BLACKLIST] = kept


def is_blacklisted(cluster: dict[str, object] | None, node_id: str, now: dt.datetime | None = None) -> bool:
    """Whether ``cluster``'s :data:`BLACKLIST` holds ``node_id`` with an expiry still ahead
    (an entry without a readable expiry counts as current)."""
    entries = (cluster or {}).get(BLACKLIST)
    if not isinstance(entries, dict):
        return False
    e = entries.get(node_id)
    if e is None:
        return False
    exp = _parse_time(e.get("Expiry")) if isinstance(e, dict) else None
    return exp is None or exp > (now or dt.datetime.now(dt.UTC))


def make_token(root_digest: bytes, secret: bytes | None = None) -> str:
    """Return a ``SWMTKN-1-…`` join token for the root CA with sha256 digest ``root_digest``.

    ``secret`` is 16 bytes; a fresh random one is drawn when None (use one per role; keep the
    tokens, e.g. in the cluster object's ``JoinTokens``, so they survive restarts).
    """
    if len(root_digest) != 32:
        raise ValueError(f"root digest must be 32 bytes (sha256), got {len(root_digest)}")
    if secret is None:
        secret = secrets.token_bytes(SECRET_BYTES)
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"join token secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    return f"{TOKEN_PREFIX}-{TOKEN_VERSION}-{to_base36(root_digest, DIGEST_LEN)}-{to_base36(secret, SECRET_LEN)}"


def token_role(token: str, tokens: dict[str, str]) -> str | None:
    """Return ``"worker"`` or ``"manager"`` if ``token`` equals ``tokens["Worker"]`` / ``tokens["Manager"]``, else None.

    ``tokens`` is the cluster object's ``JoinTokens`` (``{"Worker": str, "Manager": str}``).
    Compares in constant time; a malformed token gives None (parse it first for a clear error).
    """
    token = token.strip() if isinstance(token, str) else ""
    for role, key in (("worker", "Worker"), ("manager", "Manager")):
        want = tokens.get(key)
        if isinstance(want, str) and want and hmac.compare_digest(token.encode(), want.encode()):
            return role
    return None


class RootCA:
    """The cluster root CA: signs node certificates and makes join tokens.

    ``cert_pem`` is the root certificate; ``key_pem`` its private key (None on nodes that only
    verify). Build with :meth:`create` or :meth:`load`.
    """

    def __init__(self, cert_pem: str, key_pem: str | None) -> None:
        self.cert_pem = cert_pem
        self.cert = x509.load_pem_x509_certificate(cert_pem.encode())
        self._key: ec.EllipticCurvePrivateKey | None = None
        if key_pem is not None:
            k = serialization.load_pem_private_key(key_pem.encode(), password=None)
            if not isinstance(k, ec.EllipticCurvePrivateKey):
                raise ValueError("the CA key must be an ECDSA key")
            self._key = k

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def create(cls, certs_dir: Path | str) -> RootCA:
        """Make a new root CA (P-256, CN swarm-ca, 20 years, backdated 1 h) and write ``ca.crt``/``ca.key`` into ``certs_dir``.

        Raises ``FileExistsError`` if ``certs_dir/ca.key`` already exists (load it instead).
        """
        d = Path(certs_dir)
        if (d / "ca.key").exists():
            raise FileExistsError(f"{d / 'ca.key'} already exists; use RootCA.load({str(d)!r})")
        key = generate_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CN)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + ROOT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        key_pem = key_to_pem(key)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(d / "ca.key", key_pem)
        _write_private(d / "ca.crt", cert_pem)
        return cls(cert_pem, key_pem)

    @classmethod
    def load(cls, certs_dir: Path | str) -> RootCA:
        """Load ``ca.crt`` (and ``ca.key`` when present) from ``certs_dir``. Raises ``FileNotFoundError`` without ``ca.crt``."""
        d = Path(certs_dir)
        cert_pem = (d / "ca.crt").read_text()
        key_path = d / "ca.key"
        key_pem = key_path.read_text() if key_path.exists() else None
        return cls(cert_pem, key_pem)

    # -- tokens -----------------------------------------------------------------------------

    @property
    def digest(self) -> bytes:
        """sha256 of the root certificate's DER (32 bytes)."""
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).digest()

    def join_token(self) -> str:
        """Return a new join token for this CA with a fresh random secret (call once per role)."""
        return make_token(self.digest)

    def new_join_tokens(self) -> dict[str, str]:
        """Return ``{"Worker": token, "Manager": token}`` with two independent fresh secrets (the cluster's ``JoinTokens``)."""
        return {"Worker": self.join_token(), "Manager": self.join_token()}

    # -- issuing ----------------------------------------------------------------------------

    def key_pem(self) -> str | None:
        """The CA private key as PEM (None on a node that only verifies). Managers all hold it,
        as every Swarm manager can sign; it goes only to nodes that become managers, over mTLS."""
        if self._key is None:
            return None
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode()

    @property
    def can_sign(self) -> bool:
        """True when the CA key is loaded."""
        return self._key is not None

    def issue(self, csr_pem: str, node_id: str, role: str, cluster_id: str) -> str:
        """Sign ``csr_pem``'s public key into a node certificate and return it as PEM.

        Subject: CN ``node_id``, OU ``swarm-<role>``, O ``cluster_id``; DNS SANs ``swarm-<role>``
        and ``node_id``; valid from now − 1 h for 90 days; usable for TLS server and client auth.
        Raises ``ValueError`` for an unknown role, a CSR that does not parse or whose signature is
        bad, or a key that is not ECDSA P-256; ``RuntimeError`` if this CA has no key.
        """
        if self._key is None:
            raise RuntimeError("this RootCA has no private key; only the manager that holds ca.key can issue")
        if role not in ROLES:
            raise ValueError(f"unknown node role {role!r}; expected 'worker' or 'manager'")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except Exception as e:
            raise ValueError(f"the certificate signing request is not a valid PEM CSR: {e}") from e
        if not csr.is_signature_valid:
            raise ValueError("the certificate signing request has a bad signature")
        pub = csr.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise ValueError("the certificate signing request must carry an ECDSA P-256 key")
        ou = OU_BY_ROLE[role]
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                x509.NameAttribute(NameOID.COMMON_NAME, node_id),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + NODE_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=True,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(ou), x509.DNSName(node_id)]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue_node_files(self, certs_dir: Path | str, node_id: str, role: str, cluster_id: str) -> None:
        """Make a key, issue a certificate for ``node_id``/``role`` and write ``ca.crt``, ``node.crt``, ``node.key`` into ``certs_dir``.

        This is how the first manager gets its own node certificate.
        """
        key_pem, csr_pem = generate_key_and_csr()
        cert_pem = self.issue(csr_pem, node_id, role, cluster_id)
        write_node_files(Path(certs_dir), self.cert_pem, cert_pem, key_pem)
