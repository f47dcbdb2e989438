"""Webhook signatures (contract §6).

``Cargowatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.
The timestamp inside the signed text lets a receiver refuse replays of old bodies.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Cargowatch-Signature"


def sign(secret: str, body: bytes, t: int) -> str:
    """The signature header value for ``body`` sent at unix second ``t``."""
    return f"t={int(t)},v1={_digest(secret, body, int(t))}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance_s: int | None = 300,
    now: int | None = None,
) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` (and ``t`` is within ``tolerance_s``
    of ``now``, unix seconds, default the system time; ``tolerance_s=None`` skips the check).

    A receiver-side helper: several ``v1=`` values are accepted (secret rotation); a
    malformed header is simply not valid.
    """
    t: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            try:
                t = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if t is None or not candidates:
        return False
    if tolerance_s is not None:
        current = int(time.time()) if now is None else int(now)
        if abs(current - t) > tolerance_s:
            return False
    expected = _digest(secret, body, t)
    # Bytes, not str: compare_digest refuses non-ASCII str and a header may hold anything.
    return any(hmac.compare_digest(expected.encode(), c.encode()) for c in candidates)


def _digest(secret: str, body: bytes, t: int) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
