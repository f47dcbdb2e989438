from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from alerts import sign, verify


def independent_sign(secret: str, body: bytes, t: int) -> str:
    mac = hmac.new(secret.encode("utf-8"), str(t).encode() + b"." + body, hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"


def parse(header: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in header.split(","))


def test_known_vector() -> None:
    body = b'{"id":"evt_1","type":"alarm.raised"}'
    header = sign("whsec", body, 1_795_334_405)
    fields = parse(header)
    assert fields["t"] == "1795334405"
    expected = hmac.new(b"whsec", b"1795334405." + body, hashlib.sha256).hexdigest()
    assert fields["v1"] == expected


@given(st.text(min_size=1), st.binary(), st.integers(min_value=0, max_value=2**33))
def test_sign_matches_independent_implementation(secret: str, body: bytes, t: int) -> None:
    header = sign(secret, body, t)
    assert header == independent_sign(secret, body, t)
    assert verify(secret, body, header, tolerance_s=None)


def test_verify_refuses_tampering_wrong_secret_and_stale() -> None:
    body = b'{"a":1}'
    header = independent_sign("s3cret", body, 1000)
    assert verify("s3cret", body, header, now=1100)
    assert not verify("s3cret", body + b" ", header, now=1100)
    assert not verify("other", body, header, now=1100)
    assert not verify("s3cret", body, header, now=1000 + 301)
    assert verify("s3cret", body, header, tolerance_s=None, now=10**9)


def test_verify_accepts_any_of_several_v1_and_refuses_garbage() -> None:
    body = b"{}"
    good = parse(independent_sign("k", body, 5))["v1"]
    assert verify("k", body, f"t=5,v1={'0' * 64},v1={good}", now=5)
    for header in ["", "t=5", f"v1={good}", f"t=x,v1={good}", "garbage", f"t=5,v1=é{good}"]:
        assert not verify("k", body, header, now=5)
