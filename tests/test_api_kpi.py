"""KPIs: the pure computation, and ``GET /v1/reports/kpi`` over alarms handled via the API."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.kpi import compute_kpi
from rules.events import AlarmType
from tests.api_world import OTHER, OWN, World

in_session_loop = pytest.mark.asyncio(loop_scope="session")

MIN = 60_000


def alarm(
    *,
    raised: int = 0,
    acked: int | None = None,
    resolved: int | None = None,
    cause: str | None = None,
    type: str = "SPEEDING",
    ack_in: int = 30,
    resolve_in: int = 240,
) -> dict[str, Any]:
    status = "resolved" if resolved is not None else "acknowledged" if acked is not None else "open"
    return {
        "type": type,
        "severity": "major",
        "status": status,
        "raised_at": raised * MIN,
        "ack_due": (raised + ack_in) * MIN,
        "resolve_due": (raised + resolve_in) * MIN,
        "acknowledged_at": None if acked is None else acked * MIN,
        "resolved_at": None if resolved is None else resolved * MIN,
        "resolution": None if resolved is None else {"cause": cause or "other"},
    }


def test_empty_report_has_no_rates() -> None:
    kpi = compute_kpi([], now_ms=0)
    assert kpi["alarms"] == 0
    assert kpi["acknowledge"]["on_time_rate"] is None
    assert kpi["resolve"]["mean_time_s"] is None
    assert kpi["false_alarm_rate"] is None


def test_rates_and_means() -> None:
    alarms = [
        alarm(acked=10, resolved=100, cause="false_alarm"),  # both on time
        alarm(acked=40, resolved=300, cause="traffic_detour", type="ROUTE_DEVIATION"),  # both late
        alarm(acked=20),  # acked on time, resolve still open and not yet due
        alarm(),  # open, ack overdue at now=60 min
        alarm(raised=50),  # open, ack not yet due at 60 min: counted neither way
        alarm(resolved=5, cause="false_alarm"),  # resolved from open: acked at 5
    ]
    kpi = compute_kpi(alarms, now_ms=60 * MIN)
    assert kpi["alarms"] == 6
    assert kpi["by_type"] == {"ROUTE_DEVIATION": 1, "SPEEDING": 5}
    assert kpi["by_status"] == {"acknowledged": 1, "open": 2, "resolved": 3}
    ack = kpi["acknowledge"]
    assert (ack["on_time"], ack["counted"], ack["handled"]) == (3, 5, 4)
    assert ack["on_time_rate"] == pytest.approx(3 / 5)
    assert ack["mean_time_s"] == pytest.approx((10 + 40 + 20 + 5) / 4 * 60)
    res = kpi["resolve"]
    assert (res["on_time"], res["counted"], res["handled"]) == (2, 3, 3)
    assert res["mean_time_s"] == pytest.approx((100 + 300 + 5) / 3 * 60)
    assert kpi["resolved"] == 3 and kpi["false_alarms"] == 2
    assert kpi["false_alarm_rate"] == pytest.approx(2 / 3)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 1000),
            st.none() | st.integers(0, 500),
            st.none() | st.integers(0, 500),
            st.sampled_from(["false_alarm", "other"]),
        ),
        max_size=30,
    ),
    st.integers(0, 3000),
)
def test_rates_are_fractions(rows: list[tuple[int, int | None, int | None, str]], now: int) -> None:
    alarms = []
    for raised, ack_after, resolve_after, cause in rows:
        acked = None if ack_after is None else raised + ack_after
        resolved = None if resolve_after is None or acked is None else acked + resolve_after
        alarms.append(alarm(raised=raised, acked=acked, resolved=resolved, cause=cause))
    kpi = compute_kpi(alarms, now * MIN)
    for part in ("acknowledge", "resolve"):
        p = kpi[part]
        assert 0 <= p["on_time"] <= p["counted"] <= len(alarms)
        if p["on_time_rate"] is not None:
            assert 0.0 <= p["on_time_rate"] <= 1.0
        if p["mean_time_s"] is not None:
            assert p["mean_time_s"] >= 0
    assert sum(kpi["by_type"].values()) == len(alarms)
    if kpi["false_alarm_rate"] is not None:
        assert 0.0 <= kpi["false_alarm_rate"] <= 1.0


@in_session_loop
async def test_report_over_the_api(world: World) -> None:
    desk = world.auth("desk")
    own = world.tenants[OWN]
    # pg's seed alarm (LOCK_TAMPER, critical, pg's SLA: ack within 5 min) acknowledged after
    # 2 min and resolved as a false alarm after 10; a second one left open past its deadline.
    world.clock.advance(120)
    r = await world.client.post(f"/v1/alarms/{own.alarm_id}/ack", json={"by": "d"}, headers=desk)
    assert r.status_code == 200
    world.clock.advance(480)
    r = await world.client.post(
        f"/v1/alarms/{own.alarm_id}/resolve",
        json={"by": "d", "cause": "false_alarm"},
        headers=desk,
    )
    assert r.status_code == 200
    world.raise_alarm(own, AlarmType.SPEEDING)
    world.clock.advance(13 * 3600)  # minor: 12 h to acknowledge
    kpi = (await world.client.get("/v1/reports/kpi", params={"shipper": OWN}, headers=desk)).json()
    assert kpi["shipper"] == OWN
    assert kpi["alarms"] == 2
    assert kpi["by_type"] == {"LOCK_TAMPER": 1, "SPEEDING": 1}
    assert kpi["acknowledge"]["on_time"] == 1 and kpi["acknowledge"]["counted"] == 2
    assert kpi["acknowledge"]["mean_time_s"] == pytest.approx(120)
    assert kpi["resolve"]["mean_time_s"] == pytest.approx(600)
    assert kpi["false_alarm_rate"] == 1.0
    # the window: alarms raised before 'from' are out
    later = world.clock.now_ms() - 3600_000
    r = await world.client.get("/v1/reports/kpi", params={"from": str(later)}, headers=desk)
    assert r.json()["alarms"] == 0 and r.json()["from"].endswith("Z")
    # the shipper's own report equals what the desk sees for it; acme's is not reachable
    mine = (await world.client.get("/v1/reports/kpi", headers=world.auth("shipper"))).json()
    assert {k: v for k, v in mine.items() if k != "generated_at"} == {
        k: v for k, v in kpi.items() if k != "generated_at"
    }
    r = await world.client.get(
        "/v1/reports/kpi", params={"shipper": OTHER}, headers=world.auth("shipper")
    )
    assert r.status_code == 404


@in_session_loop
async def test_bad_window_is_422(world: World) -> None:
    r = await world.client.get(
        "/v1/reports/kpi",
        params={"from": "2026-11-23T00:00:00Z", "to": "2026-11-22T00:00:00Z"},
        headers=world.auth("desk"),
    )
    assert r.status_code == 422
