"""shoal.base.util's parsers: RFC 3339 times as images and Docker write them, and Docker's sizes."""

from __future__ import annotations

import pytest

from shoal.base.util import is_rfc3339, now_rfc3339, parse_rfc3339, parse_size


@pytest.mark.parametrize("text,want", [
    ("2026-11-29T16:56:02.123456789Z", 1795971362.123456789),
    ("2026-11-29T16:56:02Z", 1795971362.0),
    ("2026-11-29T18:56:02+02:00", 1795971362.0),
    ("2026-11-29T16:56:02.5-00:30", 1795973162.5),
    ("1970-01-01T00:00:00Z", 0.0),
    ("2026-11-29T16:56:02", 1795971362.0),
])
def test_parse_rfc3339(text: str, want: float) -> None:
    assert is_rfc3339(text)
    assert parse_rfc3339(text) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("text", ["", None, "yesterday", "2026-13-45T99:99:99Z", "1700000000", "2026-11-29"])
def test_parse_rfc3339_malformed_is_zero(text: str | None) -> None:
    assert parse_rfc3339(text) == 0.0


def test_parse_rfc3339_round_trips_now() -> None:
    assert parse_rfc3339(now_rfc3339(1795971362.25)) == pytest.approx(1795971362.25)


@pytest.mark.parametrize("text,want", [("512", 512), ("64k", 65536), ("10m", 10 << 20), ("10MB", 10 << 20),
                                       ("1.5g", 3 << 29), ("8GiB", 8 << 30), (" 2 k ", 2048), ("0", 0)])
def test_parse_size_binary(text: str, want: int) -> None:
    assert parse_size(text, binary=True) == want


def test_parse_size_decimal() -> None:
    assert parse_size("10m", binary=False) == 10_000_000 and parse_size("64KiB", binary=False) == 64_000


@pytest.mark.parametrize("text", ["", "x", "-1", "10q", "1e9", "10ib"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text, binary=True)
