"""shoal.base.boundedjson: the one decoder for JSON from API clients (bodies, filters, X-Registry-Auth)."""

from __future__ import annotations

import base64
import json
import sys

import pytest

from shoal.base.boundedjson import MAX_JSON_DEPTH, InvalidJSON, decode_registry_auth, loads


def test_ordinary_documents_decode_as_json_does() -> None:
    doc = {"Name": "web", "Mode": {"Replicated": {"Replicas": 3}}, "L": [1, 2.5, True, None, "é"]}
    raw = json.dumps(doc).encode()
    assert loads(raw) == doc
    assert loads(raw.decode()) == doc
    assert loads(json.dumps(doc).encode("utf-16")) == doc  # JSON's other encodings, as json.loads
    nested = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert loads(nested) is not None


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 900, 5000, 100_000])
def test_deep_nesting_is_invalid_json_not_a_recursion_error(depth: int) -> None:
    docs = [b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth]
    if depth >= 5000:  # unclosed: deeper than the decoder's stack (shallower: "Expecting value")
        docs.append(b"[" * depth)
    for raw in docs:
        with pytest.raises(InvalidJSON) as e:
            loads(raw, "request body")
        assert str(e.value).startswith("invalid JSON in request body: ")
        assert "nesting too deep" in str(e.value)
    assert sys.getrecursionlimit() >= 1000  # nothing was changed to get there


def test_many_shallow_brackets_are_fine() -> None:
    raw = json.dumps([[i] for i in range(10_000)]).encode()
    assert len(loads(raw)) == 10_000


@pytest.mark.parametrize("raw, words", [
    (b"", "Expecting value"),
    (b"{", "Expecting property name"),
    (b"\xff\xfe\xfa", "codec can't decode"),
    (b"[NaN]", "NaN is not valid JSON"),
    (b"[-Infinity]", "-Infinity is not valid JSON"),
    (b"[1e400]", "out of range for a 64-bit float"),
    (b'["\\udc00"]', "unpaired UTF-16 surrogate"),
    (b"[" + b"7" * 5000 + b"]", "a number has more than 4300 digits"),
    (b"\xef\xbb\xbf{}", "byte-order mark"),
])
def test_malformed_input_is_invalid_json(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidJSON) as e:
        loads(raw)
    assert words in str(e.value)
    assert not e.value.too_large


def test_size_limit() -> None:
    with pytest.raises(InvalidJSON) as e:
        loads(b'"' + b"x" * 100 + b'"', max_bytes=50)
    assert e.value.too_large and "over the limit of 50 bytes" in str(e.value)


def test_a_surrogate_pair_is_fine() -> None:
    assert loads(b'["\\ud83d\\ude00"]') == ["\U0001F600"]


def test_registry_auth_header() -> None:
    auth = {"username": "u", "password": "p", "serveraddress": "reg:5000"}
    enc = base64.urlsafe_b64encode(json.dumps(auth).encode()).decode()
    assert decode_registry_auth(enc) == auth
    assert decode_registry_auth(enc.rstrip("=")) == auth  # padding is optional, as in Docker
    assert decode_registry_auth("") == {} and decode_registry_auth(None) == {}
    for bad, words in [("!!!", "not base64url"),
                       (base64.urlsafe_b64encode(b"[" * 10_000).decode(), "nesting too deep"),
                       (base64.urlsafe_b64encode(b'"x"').decode(), "expected a JSON object"),
                       ("A" * 100_000, "over the limit")]:
        with pytest.raises(InvalidJSON) as e:
            decode_registry_auth(bad)
        assert "X-Registry-Auth" in str(e.value) and words in str(e.value), (bad[:20], str(e.value))
