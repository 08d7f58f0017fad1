"""Unit tests for manager.ca: root CA, node certificates, join tokens, and shoal.rpc.tlsutil on top of them."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from manager import ca as camod
from manager.ca import RootCA, make_token, parse_token, token_matches_ca, token_role
from shoal.rpc import tlsutil, wire

TOKEN_RE = re.compile(r"^SWMTKN-1-([0-9a-z]{50})-([0-9a-z]{25})$")


@pytest.fixture
def root(tmp_path: Path) -> RootCA:
    return RootCA.create(tmp_path / "ca")


def test_root_ca_fields(root: RootCA, tmp_path: Path) -> None:
    c = root.cert
    assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "swarm-ca"
    pub = c.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    life = c.not_valid_after_utc - c.not_valid_before_utc
    assert life == dt.timedelta(seconds=630720000) + dt.timedelta(hours=1)
    assert c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    # load gives the same CA; create refuses to overwrite
    again = RootCA.load(tmp_path / "ca")
    assert again.cert_pem == root.cert_pem and again.can_sign
    with pytest.raises(FileExistsError):
        RootCA.create(tmp_path / "ca")


def test_token_format_and_digest(root: RootCA) -> None:
    tokens = root.new_join_tokens()
    assert tokens["Worker"] != tokens["Manager"]
    for tok in tokens.values():
        m = TOKEN_RE.match(tok)
        assert m, tok
        digest_b36, secret_b36 = m.groups()
        der = root.cert.public_bytes(serialization.Encoding.DER)
        assert int(digest_b36, 36) == int.from_bytes(hashlib.sha256(der).digest(), "big")
        assert int(secret_b36, 36) < 2**128
        assert parse_token(tok) == (digest_b36, secret_b36)
        assert token_matches_ca(tok, root.cert_pem)
    # both tokens share the digest part
    assert tokens["Worker"].split("-")[2] == tokens["Manager"].split("-")[2]


def test_base36_padding() -> None:
    assert camod.to_base36(b"\x00" * 32, 50) == "0" * 50
    assert camod.to_base36(b"\xff" * 32, 50) == format_b36(2**256 - 1).rjust(50, "0")
    assert len(camod.to_base36(b"\xff" * 16, 25)) == 25
    tok = make_token(b"\x00" * 31 + b"\x01", b"\x00" * 15 + b"\x23")
    assert tok == "SWMTKN-1-" + "0" * 49 + "1-" + "0" * 24 + "z"


def format_b36(n: int) -> str:
    s = ""
    while n:
        n, r = divmod(n, 36)
        s = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + s
    return s or "0"


@pytest.mark.parametrize(
    "bad, why",
    [
        ("", "empty"),
        ("hello", "4 dash-separated parts"),
        ("XXX-1-" + "a" * 50 + "-" + "b" * 25, "must start with SWMTKN-"),
        ("SWMTKN-2-" + "a" * 50 + "-" + "b" * 25, "unsupported token version"),
        ("SWMTKN-1-" + "a" * 49 + "-" + "b" * 25, "50 base-36 characters, got 49"),
        ("SWMTKN-1-" + "A" * 50 + "-" + "b" * 25, "50 base-36"),
        ("SWMTKN-1-" + "a" * 50 + "-" + "b" * 26, "25 base-36 characters, got 26"),
    ],
)
def test_parse_token_errors(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match="invalid join token: .*" + re.escape(why)):
        parse_token(bad)


def test_token_role(root: RootCA, tmp_path: Path) -> None:
    tokens = root.new_join_tokens()
    assert token_role(tokens["Worker"], tokens) == "worker"
    assert token_role(tokens["Manager"], tokens) == "manager"
    assert token_role(root.join_token(), tokens) is None  # right CA, wrong secret
    other = RootCA.create(tmp_path / "other")
    _, _, _, secret = tokens["Worker"].split("-")
    other_digest = other.join_token().split("-")[2]
    assert token_role(f"SWMTKN-1-{other_digest}-{secret}", tokens) is None  # right secret, other CA
    assert not token_matches_ca(other.join_token(), root.cert_pem)
    assert token_role("garbage", tokens) is None


def test_issue_node_cert(root: RootCA) -> None:
    key_pem, csr_pem = camod.generate_key_and_csr()
    pem = root.issue(csr_pem, "node1abc", "worker", "clusterxyz")
    c = x509.load_pem_x509_certificate(pem.encode())
    s = c.subject
    assert s.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node1abc"
    assert s.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "swarm-worker"
    assert s.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "clusterxyz"
    assert c.issuer == root.cert.subject
    assert c.not_valid_after_utc - c.not_valid_before_utc == dt.timedelta(days=90, hours=1)
    now = dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=59) < now - c.not_valid_before_utc < dt.timedelta(minutes=61)
    pub = c.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == pub.public_numbers()
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"swarm-worker", "node1abc"}
    c.verify_directly_issued_by(root.cert)
    mpem = root.issue(csr_pem, "m1", "manager", "clusterxyz")
    mc = x509.load_pem_x509_certificate(mpem.encode())
    assert mc.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "swarm-manager"


def test_issue_rejects_bad_input(root: RootCA) -> None:
    _, csr_pem = camod.generate_key_and_csr()
    with pytest.raises(ValueError, match="unknown node role"):
        root.issue(csr_pem, "n", "boss", "c")
    with pytest.raises(ValueError, match="not a valid PEM CSR"):
        root.issue("junk", "n", "worker", "c")
    rkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    from cryptography.hazmat.primitives import hashes

    rcsr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(rkey, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    with pytest.raises(ValueError, match="P-256"):
        root.issue(rcsr, "n", "worker", "c")
    verify_only = RootCA(root.cert_pem, None)
    with pytest.raises(RuntimeError, match="no private key"):
        verify_only.issue(csr_pem, "n", "worker", "c")


async def test_mtls_identity_over_real_tls(root: RootCA, tmp_path: Path) -> None:
    """A server context from our files sees the client's node ID and role; unauthenticated clients are allowed at TLS level."""
    root.issue_node_files(tmp_path / "mgr", "mgr1", "manager", "cl1")
    root.issue_node_files(tmp_path / "wrk", "wrk1", "worker", "cl1")
    sctx = tlsutil.server_context(tmp_path / "mgr/node.crt", tmp_path / "mgr/node.key", tmp_path / "mgr/ca.crt")
    seen: list[object] = []

    async def handler(peer: wire.Peer, t: str, body: dict[str, object]) -> dict[str, object]:
        seen.append((tlsutil.peer_identity(peer.ssl_object), tlsutil.peer_cluster_id(peer.ssl_object)))
        return {}

    peers: list[wire.Peer] = []

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        p = wire.Peer(r, w, handler)
        peers.append(p)
        p.start()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=sctx)
    port = srv.sockets[0].getsockname()[1]
    try:
        w = tmp_path / "wrk"
        cctx = tlsutil.client_context(w / "node.crt", w / "node.key", w / "ca.crt")
        c = await wire.connect("127.0.0.1", port, cctx, server_hostname=tlsutil.MANAGER_SERVER_NAME)
        await c.request("x", {})
        await c.close()
        anon = await wire.connect("127.0.0.1", port, tlsutil.client_context())
        await anon.request("x", {})
        await anon.close()
        assert seen == [(("wrk1", "worker"), "cl1"), (None, None)]
        # a server cert from another CA is refused by a client pinned to ours
        other = RootCA.create(tmp_path / "other")
        pinned_other = tlsutil.client_context(ca_pem=other.cert_pem)
        with pytest.raises(wire.WireError, match="TLS handshake"):
            await wire.connect("127.0.0.1", port, pinned_other, server_hostname=tlsutil.MANAGER_SERVER_NAME, timeout=5)
        # a worker's cert is not a manager's: hostname check fails
        sctx2 = tlsutil.server_context(w / "node.crt", w / "node.key", w / "ca.crt")
        assert isinstance(sctx2, ssl.SSLContext)
    finally:
        for p in peers:
            await p.close()
        srv.close()
        await srv.wait_closed()
