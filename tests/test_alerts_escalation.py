from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from alerts import AlarmService, LiveHub
from alerts.escalation import escalate, missed_deadlines
from core.clock import ManualClock
from telemetry.store import Store, open_store
from tests.alerts_support import make_store, put_trip, signal

T = 1_000_000


def alarm(**kw: object) -> dict:
    doc = {
        "alarm_id": "a", "status": "open", "ack_due": T, "resolve_due": T + 100,
        "ack_escalated": False, "resolve_escalated": False, "escalation_level": 0, "version": 3,
    }  # fmt: skip
    doc.update(kw)
    return doc


def test_nothing_before_the_deadlines() -> None:
    assert missed_deadlines(alarm(), T - 1) == []


def test_ack_deadline_only_while_open() -> None:
    assert missed_deadlines(alarm(), T) == ["ack"]
    assert missed_deadlines(alarm(status="acknowledged"), T) == []
    assert missed_deadlines(alarm(ack_escalated=True), T) == []


def test_resolve_deadline_until_resolved() -> None:
    assert missed_deadlines(alarm(), T + 100) == ["ack", "resolve"]
    assert missed_deadlines(alarm(status="acknowledged"), T + 100) == ["resolve"]
    assert missed_deadlines(alarm(status="resolved"), T + 100) == []
    assert missed_deadlines(alarm(ack_escalated=True, resolve_escalated=True), T + 10**9) == []


def test_escalate_raises_level_once_per_deadline() -> None:
    new, entries = escalate(alarm(), ["ack", "resolve"], now=T + 200)
    assert new["escalation_level"] == 2
    assert new["ack_escalated"] and new["resolve_escalated"]
    assert new["version"] == 4
    assert [(e["deadline"], e["level"], e["due"]) for e in entries] == [
        ("ack", 1, T),
        ("resolve", 2, T + 100),
    ]
    assert all(e["action"] == "escalated" and e["at"] == T + 200 for e in entries)
    assert missed_deadlines(new, T + 10**9) == []


# -- one escalation across processes -----------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("pg_url"))


def _escalated_rows(store: Store) -> list[dict]:
    return [r for r in store.list_deliveries(limit=10_000) if r["event_type"] == "alarm.escalated"]


def test_two_services_on_one_database_escalate_each_deadline_once(db_url: str) -> None:
    """Two AlarmServices, each with its own store on one database (two processes), run
    escalation passes at the same moment: every missed deadline is escalated once, with one
    history entry, one outbox row per subscription and one live event between them."""
    stores = [open_store(db_url), open_store(db_url)]
    try:
        clock = ManualClock()
        put_trip(stores[0], "T1", "pg")
        stores[0].put_webhook({"webhook_id": "wh", "shipper": "pg", "url": "http://x.invalid/",
                               "secret": "s", "events": None})  # fmt: skip
        hubs = [LiveHub(), LiveHub()]
        subs = [hub.subscribe() for hub in hubs]
        services = [AlarmService(s, clock, hub) for s, hub in zip(stores, hubs, strict=True)]
        raised = services[0].handle([signal(episode=f"e{i}") for i in range(12)])
        clock.advance(5 * 3600)  # critical: ack after 10 min and resolve after 4 h both missed
        barrier = threading.Barrier(2)

        def one_pass(service: AlarmService) -> list[dict]:
            barrier.wait()
            return service.escalate_due()

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(one_pass, services))
        for service in services:
            assert service.escalate_due() == []  # nothing left for a later pass either
        escalated = [doc["alarm_id"] for result in results for doc in result]
        assert sorted(escalated) == sorted(doc["alarm_id"] for doc in raised)  # each once
        for doc in raised:
            alarm = stores[1].get_alarm(doc["alarm_id"])
            assert alarm["escalation_level"] == 2 and alarm["version"] == 2
            history = stores[1].alarm_history(doc["alarm_id"])
            assert [h.get("deadline") for h in history if h["action"] == "escalated"] == [
                "ack",
                "resolve",
            ]
        rows = _escalated_rows(stores[0])
        assert len(rows) == 2 * len(raised) == len({r["event_id"] for r in rows})
        live = [e for sub in subs for e in sub.drain() if e["type"] == "alarm.escalated"]
        assert len(live) == 2 * len(raised)
    finally:
        for s in stores:
            s.close()


class _FailingHistory:
    """A store whose next ``add_alarm_history`` fails (a crash or outage in the middle of an
    escalation)."""

    def __init__(self, inner: Store) -> None:
        self.inner, self.fail = inner, True

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def add_alarm_history(self, alarm_id: str, entry: dict) -> None:
        if self.fail and entry.get("action") == "escalated":
            self.fail = False
            raise OSError("disk I/O error")
        self.inner.add_alarm_history(alarm_id, entry)


def test_an_escalation_interrupted_midway_is_not_half_recorded(tmp_path: Path) -> None:
    """The escalated flag, its history and its webhook are stored together: when one part
    fails, none is, and the next pass escalates (once, with its event)."""
    store = make_store(tmp_path)
    try:
        clock = ManualClock()
        put_trip(store, "T1", "pg")
        store.put_webhook({"webhook_id": "wh", "shipper": "pg", "url": "http://x.invalid/",
                           "secret": "s", "events": None})  # fmt: skip
        flaky = _FailingHistory(store)
        service = AlarmService(flaky, clock, LiveHub())  # type: ignore[arg-type]
        (doc,) = service.handle([signal()])
        clock.advance(11 * 60)
        assert service.escalate_due() == []  # the failure: nothing escalated...
        alarm = store.get_alarm(doc["alarm_id"])
        assert alarm["version"] == 1 and not alarm["ack_escalated"]  # ...and nothing stored
        assert _escalated_rows(store) == []
        (esc,) = service.escalate_due()
        assert esc["ack_escalated"] and esc["escalation_level"] == 1
        assert len(_escalated_rows(store)) == 1
        history = store.alarm_history(doc["alarm_id"])
        assert [h["action"] for h in history] == ["raised", "escalated"]
    finally:
        store.close()
