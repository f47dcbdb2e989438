from __future__ import annotations

import math

import pytest

from alerts import Cause, TransitionError, ValidationError, alarm_id_for
from alerts.deadlines import merge_sla
from alerts.lifecycle import (
    acknowledge,
    assign,
    give_feedback,
    new_alarm,
    new_exception,
    note_entry,
    resolve,
)
from rules.events import AlarmType
from tests.alerts_support import T0, signal


def fresh() -> dict:
    sig = signal()
    return new_alarm(sig, raised_at=T0, deadline=merge_sla()["critical"], details={})


def test_alarm_id_is_deterministic_per_trip_type_episode() -> None:
    a = alarm_id_for("T1", "LOCK_TAMPER", "e1")
    assert a == alarm_id_for("T1", "LOCK_TAMPER", "e1")
    assert a.startswith("alm_") and len(a) == 24
    assert len({a, alarm_id_for("T2", "LOCK_TAMPER", "e1"), alarm_id_for("T1", "SPEEDING", "e1"),
                alarm_id_for("T1", "LOCK_TAMPER", "e2")}) == 4  # fmt: skip


def test_new_alarm_fields() -> None:
    doc = fresh()
    assert doc["status"] == "open" and doc["version"] == 1 and doc["escalation_level"] == 0
    assert doc["severity"] == "critical" and doc["type"] == "LOCK_TAMPER"
    assert doc["ack_due"] == T0 + 600_000 and doc["resolve_due"] == T0 + 4 * 3_600_000


def test_nan_position_becomes_unknown() -> None:
    sig = signal(AlarmType.UNAUTHORIZED_UNLOCK)
    sig = type(sig)(**{**{f: getattr(sig, f) for f in sig.__slots__}, "lat": math.nan})
    doc = new_alarm(sig, raised_at=T0, deadline=merge_sla()["critical"], details={})
    assert doc["lat"] is None


def test_open_acknowledged_resolved() -> None:
    doc = fresh()
    acked, entries = acknowledge(
        doc, by="desk-07", note="called driver", now=T0 + 60_000, key_id="key_07"
    )
    assert acked["status"] == "acknowledged" and acked["version"] == 2
    assert acked["acknowledged_at"] == T0 + 60_000 and acked["acknowledged_by"] == "desk-07"
    assert entries == [
        {"at": T0 + 60_000, "by": "desk-07", "key_id": "key_07", "action": "acknowledged",
         "from": "open", "to": "acknowledged", "note": "called driver"}
    ]  # fmt: skip
    done, entries = resolve(
        acked, by="desk-08", cause="rest_stop", action="phoned", feedback=None, now=T0 + 120_000
    )
    assert done["status"] == "resolved" and done["version"] == 3
    assert done["resolution"] == {"cause": "rest_stop", "action": "phoned", "feedback": None}
    assert done["acknowledged_by"] == "desk-07" and done["resolved_by"] == "desk-08"
    assert [e["action"] for e in entries] == ["resolved"]
    assert entries[0]["resolution"]["cause"] == "rest_stop"
    assert doc["status"] == "open"  # inputs are not mutated


def test_resolve_from_open_records_implied_acknowledge() -> None:
    done, entries = resolve(
        fresh(), by="desk-1", cause="false_alarm", action=None, feedback="ok", now=T0 + 5
    )
    assert done["status"] == "resolved" and done["acknowledged_at"] == T0 + 5
    assert [(e["action"], e["from"], e["to"]) for e in entries] == [
        ("acknowledged", "open", "acknowledged"),
        ("resolved", "acknowledged", "resolved"),
    ]


def test_refused_transitions() -> None:
    acked, _ = acknowledge(fresh(), by="d", note=None, now=T0)
    with pytest.raises(TransitionError):
        acknowledge(acked, by="d", note=None, now=T0)
    done, _ = resolve(acked, by="d", cause="other", action=None, feedback=None, now=T0)
    with pytest.raises(TransitionError):
        acknowledge(done, by="d", note=None, now=T0)
    with pytest.raises(TransitionError) as info:
        resolve(done, by="d", cause="other", action=None, feedback=None, now=T0)
    assert info.value.context["alarm_id"] == done["alarm_id"]


@pytest.mark.parametrize("cause", [c.value for c in Cause])
def test_every_contract_cause_is_accepted(cause: str) -> None:
    done, _ = resolve(fresh(), by="d", cause=cause, action=None, feedback=None, now=T0)
    assert done["resolution"]["cause"] == cause


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cause": "aliens"},
        {"cause": None},
        {"by": ""},
        {"by": "   "},
        {"by": "x" * 129},
        {"action": 5},
        {"feedback": "x" * 5000},
    ],
)
def test_invalid_input_is_a_validation_error(kwargs: dict) -> None:
    args = {"by": "desk", "cause": "other", "action": None, "feedback": None, **kwargs}
    with pytest.raises(ValidationError):
        resolve(fresh(), now=T0, **args)


def test_assign_changes_the_owner_not_the_status() -> None:
    doc = fresh()
    mine, (entry,) = assign(doc, to="desk-07", by="desk-01", now=T0 + 5, key_id="key_1")
    assert mine["status"] == "open" and mine["assigned_to"] == "desk-07"
    assert mine["version"] == doc["version"] + 1
    assert (entry["action"], entry["from"], entry["to"], entry["by"], entry["key_id"]) == (
        "assigned", None, "desk-07", "desk-01", "key_1")  # fmt: skip
    nobody, (entry,) = assign(mine, to=None, by="desk-07", now=T0 + 6)
    assert nobody["assigned_to"] is None and (entry["from"], entry["to"]) == ("desk-07", None)
    done, _ = resolve(mine, by="d", cause="other", action=None, feedback=None, now=T0 + 7)
    with pytest.raises(TransitionError):
        assign(done, to="desk-07", by="d", now=T0 + 8)
    with pytest.raises(ValidationError):
        assign(doc, to="", by="d", now=T0)


def test_a_note_is_an_entry_in_any_status() -> None:
    doc = fresh()
    entry = note_entry(
        doc, text="driver at rest stop", contact="driver", outcome="ok", by="desk-07", now=T0
    )
    assert entry["action"] == "note" and entry["contact"] == "driver"
    assert entry["text"] == "driver at rest stop" and entry["from"] == entry["to"] == "open"
    done, _ = resolve(doc, by="d", cause="other", action=None, feedback=None, now=T0 + 1)
    assert note_entry(done, text="x", contact=None, outcome=None, by="d", now=T0)["to"] == (
        "resolved"
    )
    for bad in ({"text": ""}, {"text": "x", "contact": "mother"}, {"text": "x" * 4001}):
        kwargs = {"contact": None, "outcome": None, **bad}
        with pytest.raises(ValidationError):
            note_entry(doc, by="d", now=T0, **kwargs)  # type: ignore[arg-type]


def test_feedback_only_once_resolved_and_the_latest_stands() -> None:
    doc = fresh()
    with pytest.raises(TransitionError):
        give_feedback(doc, verdict="accepted", comment=None, by="pg-portal", now=T0)
    done, _ = resolve(doc, by="d", cause="other", action=None, feedback=None, now=T0 + 1)
    fb, (entry,) = give_feedback(done, verdict="disputed", comment="late", by="pg", now=T0 + 2)
    assert fb["feedback"] == {"verdict": "disputed", "comment": "late", "by": "pg", "at": T0 + 2}
    assert entry["action"] == "feedback" and entry["verdict"] == "disputed"
    again, _ = give_feedback(fb, verdict="accepted", comment=None, by="pg", now=T0 + 3)
    assert again["feedback"]["verdict"] == "accepted" and again["status"] == "resolved"
    with pytest.raises(ValidationError):
        give_feedback(done, verdict="meh", comment=None, by="pg", now=T0)


def test_an_exception_is_an_alarm_document_of_its_own_kind() -> None:
    trip = {"trip_id": "T1", "shipper": "pg"}
    deadline = merge_sla()["major"]
    doc, entry = new_exception(
        trip, type="damage", description="pallet crushed", stop_id="S1", severity="major",
        by="pg-portal", key_id="key_9", now=T0, deadline=deadline,
    )  # fmt: skip
    assert doc["kind"] == "exception" and doc["alarm_id"].startswith("exc_")
    assert (doc["type"], doc["shipper"], doc["status"], doc["stop_id"]) == (
        "damage", "pg", "open", "S1")  # fmt: skip
    assert (doc["ack_due"], doc["resolve_due"]) == deadline.due(T0)
    assert entry["action"] == "raised" and entry["by"] == "pg-portal"
    for bad in ({"type": "weather"}, {"severity": "huge"}, {"description": " "}):
        kwargs = {"type": "time", "description": "late", "severity": "minor", **bad}
        with pytest.raises(ValidationError):
            new_exception(
                trip, stop_id=None, by="d", key_id=None, now=T0, deadline=deadline, **kwargs
            )  # type: ignore[arg-type]
