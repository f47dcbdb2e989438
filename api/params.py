"""Query and body values shared by the routers: times and identifiers.

Times are accepted as RFC 3339 with an offset or ``Z`` (``2026-11-22T08:00:05Z``) or as
integer epoch milliseconds (``1795334405000``); inside the API they are epoch ms.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Path, Query

from api.errors import ApiError

IDENT_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
_EPOCH_MS = re.compile(r"^-?\d{1,16}$")
# 0001-01-01 .. 9999-12-31: what datetime can represent, as epoch ms
_MIN_MS = -62_135_596_800_000
_MAX_MS = 253_402_300_799_999


class BadTime(ApiError):
    status = 422
    code = "validation_error"


def parse_time(value: str | int, name: str = "time") -> int:
    """Epoch milliseconds of an RFC 3339 string (with offset) or an epoch-ms integer.

    Raises ``BadTime`` (422) for anything else, including times without an offset."""
    if isinstance(value, bool):
        raise BadTime(f"{name}: expected RFC 3339 or epoch milliseconds")
    if isinstance(value, int):
        ms = value
    else:
        text = value.strip().upper()  # RFC 3339 allows "t" and "z"
        if _EPOCH_MS.match(text):
            ms = int(text)
        else:
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                raise BadTime(
                    f"{name}: {value!r} is neither RFC 3339 nor epoch milliseconds"
                ) from None
            if dt.tzinfo is None or len(text) <= 10:
                raise BadTime(f"{name}: {value!r} needs a date, a time and an offset (or Z)")
            ms = _to_ms(dt)
    if not _MIN_MS <= ms <= _MAX_MS:
        raise BadTime(f"{name}: {value!r} is out of range")
    return ms


def _to_ms(dt: datetime) -> int:
    # Integer arithmetic: float timestamps lose microseconds far from 1970.
    delta = dt - datetime.fromisoformat("1970-01-01T00:00:00+00:00")
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def optional_time(value: str | None, name: str) -> int | None:
    return None if value is None or value == "" else parse_time(value, name)


TIME_HELP = "RFC 3339 with offset or Z, or epoch milliseconds"


class TimeWindow:
    """``from`` / ``to`` query parameters as epoch ms (either may be absent)."""

    __slots__ = ("since_ms", "until_ms")

    def __init__(
        self,
        from_: Annotated[str | None, Query(alias="from", description=TIME_HELP)] = None,
        to: Annotated[str | None, Query(description=TIME_HELP)] = None,
    ) -> None:
        self.since_ms = optional_time(from_, "from")
        self.until_ms = optional_time(to, "to")
        if (
            self.since_ms is not None
            and self.until_ms is not None
            and self.since_ms > self.until_ms
        ):
            raise BadTime("from must not be after to")


Window = Annotated[TimeWindow, Depends()]
Ident = Annotated[str, Path(pattern=IDENT_PATTERN, description="1-64 chars of [A-Za-z0-9_.:-]")]
AnyId = Annotated[str, Path(min_length=1, max_length=200)]
Limit = Annotated[int, Query(ge=1, le=10_000, description="at most this many items")]
