"""``/v1/reports``: how the desk handled alarms (``kpi``) and the ledger of every alarm and
exception with its deadlines, cause, action, call log and the shipper's feedback
(``ledger``). Both answer CSV with ``Accept: text/csv``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.auth import DeskOrTenant, Principal
from api.deps import RuntimeDep, RuntimeLike
from api.errors import ERROR_RESPONSES, NotFound
from api.kpi import compute_kpi, deadline_met, handled_times
from api.params import TimeWindow, Window
from api.render import CSV_OPENAPI, csv_response, iso, wants_csv

router = APIRouter(prefix="/v1/reports", tags=["reports"], responses=ERROR_RESPONSES)

MAX_ALARMS = 1_000_000


class DeadlineKpi(BaseModel):
    on_time: int
    counted: int
    on_time_rate: float | None
    handled: int
    mean_time_s: float | None


class SeverityDeadlines(BaseModel):
    ack_met: int
    ack_missed: int
    resolve_met: int
    resolve_missed: int


class KpiOut(BaseModel):
    """Alarms raised in [from, to): counts, on-time rates (of alarms whose deadline is
    decided), mean times, the false-alarm rate (false_alarm causes / resolved), the
    shippers' feedback and deadlines met per severity; ``exceptions``: how many were
    reported in the window."""

    model_config = ConfigDict(populate_by_name=True)

    shipper: str | None
    from_: str | None = Field(None, alias="from")
    to: str | None
    generated_at: str | None
    alarms: int
    by_type: dict[str, int]
    by_severity: dict[str, int]
    by_status: dict[str, int]
    acknowledge: DeadlineKpi
    resolve: DeadlineKpi
    resolved: int
    false_alarms: int
    false_alarm_rate: float | None
    feedback: dict[str, int]
    deadlines_by_severity: dict[str, SeverityDeadlines]
    exceptions: int


class LedgerNote(BaseModel):
    at: str | None
    by: str | None
    contact: str | None
    text: str | None
    outcome: str | None


class LedgerEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    alarm_id: str
    kind: str
    type: str
    severity: str
    status: str
    trip_id: str | None
    shipper: str | None
    raised_at: str | None
    ack_due: str | None
    acknowledged_at: str | None
    ack_met: bool | None = Field(description="null: not acknowledged and not yet due")
    resolve_due: str | None
    resolved_at: str | None
    resolve_met: bool | None
    cause: str | None
    action: str | None
    notes: list[LedgerNote]
    feedback: dict[str, Any] | None


class LedgerOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    shipper: str | None
    from_: str | None = Field(None, alias="from")
    to: str | None
    generated_at: str | None
    entries: list[LedgerEntry]


#: The ledger as CSV: one row per alarm or exception; notes in one cell.
LEDGER_COLUMNS = (
    "alarm_id",
    "kind",
    "type",
    "severity",
    "status",
    "trip_id",
    "shipper",
    "stop_id",
    "description",
    "raised_at",
    "ack_due",
    "acknowledged_at",
    "acknowledged_by",
    "ack_met",
    "resolve_due",
    "resolved_at",
    "resolved_by",
    "resolve_met",
    "escalation_level",
    "assigned_to",
    "cause",
    "action",
    "resolution_feedback",
    "notes_count",
    "notes",
    "feedback_verdict",
    "feedback_comment",
)


def _scope(principal: Principal, shipper: str | None) -> str | None:
    if principal.asks_foreign(shipper):
        raise NotFound("no such shipper", shipper=shipper)
    return principal.shipper_filter(shipper)


def _docs(
    runtime: RuntimeLike, principal: Principal, scope: str | None, window: TimeWindow
) -> list[dict[str, Any]]:
    docs = runtime.store.list_alarms(
        shipper=scope, since_ms=window.since_ms, until_ms=window.until_ms, limit=MAX_ALARMS
    )
    return [d for d in docs if principal.sees(d.get("shipper"))]


def _header(scope: str | None, window: TimeWindow, now: int) -> dict[str, Any]:
    return {
        "shipper": scope,
        "from": iso(window.since_ms),
        "to": iso(window.until_ms),
        "generated_at": iso(now),
    }


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(f"{prefix}.{key}" if prefix else str(key), inner)
    else:
        yield prefix, value


@router.get("/kpi", response_model=KpiOut, response_model_by_alias=True, responses=CSV_OPENAPI)
def kpi(
    request: Request,
    runtime: RuntimeDep,
    principal: DeskOrTenant,
    window: Window,
    shipper: Annotated[str | None, Query(max_length=128)] = None,
) -> Any:
    """KPIs of the alarms raised in the window (a shipper key: its own alarms). As CSV:
    one row per figure (``metric`` with dotted names such as ``acknowledge.on_time_rate``,
    ``value``)."""
    scope = _scope(principal, shipper)
    docs = _docs(runtime, principal, scope, window)
    now = runtime.clock.now_ms()
    alarms = [d for d in docs if (d.get("kind") or "alarm") == "alarm"]
    report = {
        **_header(scope, window, now),
        **compute_kpi(alarms, now),
        "exceptions": len(docs) - len(alarms),
    }
    if wants_csv(request):
        rows = ({"metric": k, "value": v} for k, v in _flatten("", report))
        return csv_response(rows, ("metric", "value"), "kpi.csv")
    return report


def ledger_entry(doc: dict[str, Any], history: list[dict[str, Any]], now: int) -> dict[str, Any]:
    """One alarm or exception as the ledger shows it."""
    acked_at, resolved_at = handled_times(doc)
    resolution = doc.get("resolution") or {}
    feedback = doc.get("feedback")
    notes = [
        {
            "at": iso(e.get("at")),
            "by": e.get("by"),
            "contact": e.get("contact"),
            "text": e.get("text"),
            "outcome": e.get("outcome"),
        }
        for e in history
        if e.get("action") == "note"
    ]
    return {
        "alarm_id": doc["alarm_id"],
        "kind": doc.get("kind") or "alarm",
        "type": doc.get("type"),
        "severity": doc.get("severity"),
        "status": doc.get("status"),
        "trip_id": doc.get("trip_id"),
        "shipper": doc.get("shipper"),
        "stop_id": doc.get("stop_id"),
        "description": doc.get("description"),
        "raised_at": iso(doc.get("raised_at")),
        "ack_due": iso(doc.get("ack_due")),
        "acknowledged_at": iso(acked_at),
        "acknowledged_by": doc.get("acknowledged_by"),
        "ack_met": deadline_met(acked_at, doc.get("ack_due"), now),
        "resolve_due": iso(doc.get("resolve_due")),
        "resolved_at": iso(resolved_at),
        "resolved_by": doc.get("resolved_by"),
        "resolve_met": deadline_met(resolved_at, doc.get("resolve_due"), now),
        "escalation_level": doc.get("escalation_level", 0),
        "assigned_to": doc.get("assigned_to"),
        "cause": resolution.get("cause"),
        "action": resolution.get("action"),
        "resolution_feedback": resolution.get("feedback"),
        "notes": notes,
        "feedback": None if not feedback else {**feedback, "at": iso(feedback.get("at"))},
    }


def ledger_csv_row(entry: dict[str, Any]) -> dict[str, Any]:
    """A ledger entry flattened into ``LEDGER_COLUMNS`` (notes one per line in one cell)."""
    feedback = entry.get("feedback") or {}
    notes = "\n".join(
        f"{n['at']} {n['by']} ({n['contact'] or 'other'}): {n['text']}"
        + (f" -> {n['outcome']}" if n.get("outcome") else "")
        for n in entry["notes"]
    )
    return {
        **entry,
        "notes_count": len(entry["notes"]),
        "notes": notes,
        "feedback_verdict": feedback.get("verdict"),
        "feedback_comment": feedback.get("comment"),
    }


@router.get(
    "/ledger", response_model=LedgerOut, response_model_by_alias=True, responses=CSV_OPENAPI
)
def ledger(
    request: Request,
    runtime: RuntimeDep,
    principal: DeskOrTenant,
    window: Window,
    shipper: Annotated[str | None, Query(max_length=128)] = None,
) -> Any:
    """Every alarm and exception raised in the window (a shipper key: its own), newest
    first, with its deadlines met or missed, cause, action, call log and feedback."""
    scope = _scope(principal, shipper)
    now = runtime.clock.now_ms()
    store = runtime.store
    entries = [
        ledger_entry(d, store.alarm_history(d["alarm_id"]), now)
        for d in _docs(runtime, principal, scope, window)
    ]
    if wants_csv(request):
        return csv_response((ledger_csv_row(e) for e in entries), LEDGER_COLUMNS, "ledger.csv")
    return {**_header(scope, window, now), "entries": entries}
