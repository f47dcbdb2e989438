"""Time parameters: RFC 3339 (with offset) or epoch milliseconds, anything else a 422."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.render import iso
from api.params import BadTime, parse_time

T = 1_795_334_405_000  # 2026-11-22T08:00:05Z


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-22T08:00:05Z",
        "2026-11-22T08:00:05.000Z",
        "2026-11-22T16:00:05+08:00",
        "2026-11-22t08:00:05z",
        "2026-11-22T03:00:05-05:00",
        "1795334405000",
        " 1795334405000 ",
    ],
)
def test_accepted_forms(text: str) -> None:
    assert parse_time(text) == T


def test_integer_passes_through() -> None:
    assert parse_time(T) == T


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2026-11-22T08:00:05",
        "2026-11-22",
        "08:00:05Z",
        "1e12",
        "12.5",
        "2026-13-01T00:00:00Z",
        "99999999999999999",
        "NaN",
        "true",
    ],
)
def test_refused_forms(text: str) -> None:
    with pytest.raises(BadTime) as err:
        parse_time(text, "since")
    assert err.value.status == 422
    assert "since" in err.value.message


def test_bool_is_not_a_time() -> None:
    with pytest.raises(BadTime):
        parse_time(True)


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    st.integers(-14 * 60, 14 * 60),
)
def test_rfc3339_round_trips_at_any_offset(dt: datetime, offset_min: int) -> None:
    dt = dt.replace(microsecond=dt.microsecond // 1000 * 1000)
    ms = (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    local = dt.astimezone(timezone(timedelta(minutes=offset_min)))
    assert parse_time(local.isoformat()) == ms
    assert parse_time(iso(ms)) == ms
    assert parse_time(str(ms)) == ms


@given(st.text(max_size=40))
def test_any_text_parses_or_is_a_422(text: str) -> None:
    try:
        ms = parse_time(text)
    except BadTime as exc:
        assert exc.status == 422
    else:
        assert isinstance(ms, int)
