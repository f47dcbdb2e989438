"""JSON views of stored documents: epoch-ms times become RFC 3339 UTC strings.

Alarms are rendered by ``alerts.render`` (the same view goes to webhooks and the live feed);
this module renders everything else the API returns.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from alerts import iso, render_alarm

__all__ = [
    "csv_cell",
    "csv_response",
    "iso",
    "render_alarm",
    "render_dead_letter",
    "render_delivery",
    "render_device",
    "render_fence",
    "render_shipper",
    "render_trip",
    "render_trip_event",
    "render_webhook",
    "times_to_iso",
    "wants_csv",
]

Doc = dict[str, Any]

_TRIP_TIMES = (
    "planned_start",
    "created_at",
    "updated_at",
    "activated_at",
    "started_at",
    "completed_at",
    "cancelled_at",
    "ended_at",
)


def times_to_iso(doc: Doc, keys: tuple[str, ...]) -> Doc:
    """A copy of ``doc`` with the integer times under ``keys`` as RFC 3339 (others as given)."""
    out = dict(doc)
    for key in keys:
        value = out.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = iso(value)
    return out


def _state_view(state: Doc | None) -> Doc | None:
    if state is None:
        return None
    out: Doc = {}
    for key, value in state.items():
        is_time = key == "ts" or key.endswith(("_ts", "_at", "_ms"))
        if is_time and isinstance(value, int) and not isinstance(value, bool):
            out[key.removesuffix("_ms")] = iso(value)
        elif isinstance(value, dict):
            out[key] = _state_view(value)
        else:
            out[key] = value
    return out


def render_trip(doc: Doc, state: Doc | None = None) -> Doc:
    """A stored trip; with ``state`` (the engine's live view) under ``"live"``."""
    out = times_to_iso(doc, _TRIP_TIMES)
    stops = out.get("stops")
    if isinstance(stops, list):
        out["stops"] = [
            times_to_iso(s, ("eta", "arrived_at", "left_at")) if isinstance(s, dict) else s
            for s in stops
        ]
    if state is not None:
        out["live"] = _state_view(state)
    return out


def render_trip_event(event: Doc) -> Doc:
    """A milestone / status change of a trip."""
    return times_to_iso(event, ("ts", "at", "raised_at", "recorded_at"))


def render_device(doc: Doc) -> Doc:
    return times_to_iso(doc, ("created_at", "updated_at"))


def render_fence(doc: Doc) -> Doc:
    """A stored geofence as the GeoJSON Feature it was posted as (id = ``geofence_id``)."""
    props = dict(doc.get("properties") or {})
    props.update(
        {
            "geofence_id": doc["geofence_id"],
            "kind": doc.get("kind"),
            "name": doc.get("name"),
            "shipper": doc.get("shipper"),
            "radius_m": doc.get("radius_m"),
            "created_at": iso(doc["created_at"]) if doc.get("created_at") is not None else None,
        }
    )
    return {
        "type": "Feature",
        "id": doc["geofence_id"],
        "geometry": doc.get("geometry"),
        "properties": props,
    }


def render_shipper(doc: Doc) -> Doc:
    return {"shipper": doc["shipper"], "sla": doc.get("sla") or {}, "rules": doc.get("rules") or {}}


def secret_hint(secret: str | None) -> str:
    """Enough of a webhook secret to tell two apart, never enough to use it."""
    if not secret:
        return ""
    return "…" + secret[-4:] if len(secret) >= 16 else "…"


def render_webhook(doc: Doc) -> Doc:
    return {
        "webhook_id": doc["webhook_id"],
        "shipper": doc.get("shipper"),
        "url": doc.get("url"),
        "events": list(doc.get("events") or []),
        "secret_hint": secret_hint(doc.get("secret")),
        "active": doc.get("active", True),
        "created_at": iso(doc.get("created_at")),
    }


def render_delivery(doc: Doc) -> Doc:
    """A webhook delivery's state (the body is summarised: its event type)."""
    event_type = doc.get("event_type")
    if event_type is None and isinstance(doc.get("body"), str):
        try:
            body = json.loads(doc["body"])
            event_type = body.get("type") if isinstance(body, dict) else None
        except ValueError:
            event_type = None
    return {
        "delivery_id": doc.get("delivery_id"),
        "webhook_id": doc.get("webhook_id"),
        "event_id": doc.get("event_id"),
        "event_type": event_type,
        "shipper": doc.get("shipper"),
        "status": doc.get("status"),
        "attempts": int(doc.get("attempts") or 0),
        "created_at": iso(doc.get("created_at")),
        "next_attempt_at": iso(doc.get("next_attempt_at")),
        "delivered_at": iso(doc.get("delivered_at")),
        "last_error": doc.get("last_error"),
    }


def render_dead_letter(doc: Doc) -> Doc:
    """A dead letter; its payload as UTF-8 text when it decodes, else base64."""
    raw = doc.get("payload") or b""
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    if isinstance(raw, str):
        raw = raw.encode()
    try:
        payload, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return {
        "id": doc.get("id"),
        "topic": doc.get("topic"),
        "device_id": doc.get("device_id"),
        "received_at": iso(doc.get("received_at")),
        "reason": str(doc.get("reason")),
        "detail": doc.get("detail"),
        "payload": payload,
        "payload_encoding": encoding,
        "payload_bytes": len(raw),
    }


# -- CSV (contract v2 §7: RFC 4180, a header row, UTF-8) ------------------------------------
CSV_MEDIA_TYPE = "text/csv"
#: A spreadsheet runs a cell that starts with one of these as a formula (CSV injection):
#: such text cells are written with a leading apostrophe, which shows them as text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_OPENAPI: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {CSV_MEDIA_TYPE: {"schema": {"type": "string"}}},
        "description": "JSON, or CSV with `Accept: text/csv`",
    }
}


def wants_csv(request: Request) -> bool:
    """The client asked for CSV (``Accept: text/csv``, whatever else it lists after it)."""
    accept = request.headers.get("accept", "")
    return any(part.split(";")[0].strip().lower() == CSV_MEDIA_TYPE for part in accept.split(","))


def csv_cell(value: Any) -> str:
    """One cell: empty for None, ``true``/``false``, numbers as JSON writes them, lists and
    objects as compact JSON, text guarded against formula injection."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, Mapping | list | tuple):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_response(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[str], filename: str
) -> Response:
    """``rows`` as a CSV download: a header row of ``columns``, CRLF line ends."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_cell(row.get(c)) for c in columns])
    return Response(
        out.getvalue().encode("utf-8"),
        media_type=f"{CSV_MEDIA_TYPE}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
