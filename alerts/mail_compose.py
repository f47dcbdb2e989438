"""The notification e-mail itself: plain text, UTF-8, one per (event, address).

It says what a person on call needs without opening anything: the alarm (type, severity,
times, deadlines), the trip, the vehicle's plate, whom to call at the carrier, and a link to
the alarm on the desk page. Built from the event's stored envelope (the same JSON a webhook
receiver gets) and the trip and carrier documents read when the mail is sent.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

from telemetry.store.base import Doc

_VERBS = {
    "alarm.raised": "raised",
    "alarm.acknowledged": "acknowledged",
    "alarm.resolved": "resolved",
    "alarm.escalated": "escalated",
    "exception.created": "reported",
}


def envelope(delivery: Doc) -> Doc:
    """The event (``{"id", "type", "created_at", "shipper", "data"}``) of a delivery."""
    body = json.loads(delivery["body"])
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise ValueError("a delivery body must be an event envelope")
    return body


def desk_link(public_url: str, data: Doc) -> str:
    """The desk page's address with the alarm (or exception) selected."""
    base = public_url if public_url.endswith("/") else public_url + "/"
    if data.get("alarm_id"):
        return f"{base}#alarm={quote(str(data['alarm_id']), safe='')}"
    if data.get("exception_id"):
        return f"{base}#exception={quote(str(data['exception_id']), safe='')}"
    return base


def _line(label: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    return f"{label + ':':<18}{value}"


def _contacts(carrier: Doc | None) -> list[str]:
    if not carrier:
        return []
    lines = [f"Carrier:          {carrier.get('name') or carrier.get('carrier_id') or '?'}"]
    contacts = carrier.get("contacts")
    for contact in contacts if isinstance(contacts, list) else []:
        if not isinstance(contact, dict):
            continue
        who = str(contact.get("name") or "").strip() or "contact"
        if contact.get("role"):
            who += f" ({contact['role']})"
        ways = [
            f"{label} {contact[key]}"
            for key, label in (("phone", "tel"), ("email", "e-mail"))
            if contact.get(key)
        ]
        lines.append("  " + who + ("  " + "  ".join(ways) if ways else ""))
    if len(lines) == 1:
        lines.append("  (no contacts on record)")
    return lines


def compose(
    delivery: Doc,
    *,
    sender: str,
    public_url: str,
    trip: Doc | None,
    carrier: Doc | None,
    now: datetime | None = None,
) -> EmailMessage:
    """The message for one e-mail delivery (``delivery["to"]``)."""
    event = envelope(delivery)
    data: Doc = event["data"]
    event_type = str(event.get("type"))
    verb = _VERBS.get(event_type, event_type)
    kind = data.get("type") or "exception"
    severity = str(data.get("severity") or "")
    trip_id = data.get("trip_id") or (trip or {}).get("trip_id")
    plate = (trip or {}).get("vehicle")
    what = "Exception" if event_type.startswith("exception.") else "Alarm"

    subject = f"[cargowatch] {severity.upper() or what.upper()} {kind} {verb}"
    subject += f": trip {trip_id}" if trip_id else ""
    subject += f", {plate}" if plate else ""

    head = f"{what} {kind} ({severity or 'no severity'}) was {verb}"
    head += f" on trip {trip_id}." if trip_id else "."
    lines: list[str | None] = [head, ""]
    lines += [
        _line(what, data.get("alarm_id") or data.get("exception_id")),
        _line("Type", kind),
        _line("Severity", severity),
        _line("Status", data.get("status")),
        _line("Event time", data.get("ts")),
        _line("Raised at", data.get("raised_at") or data.get("created_at")),
        _line("Acknowledge by", data.get("ack_due")),
        _line("Resolve by", data.get("resolve_due")),
        _line("Escalation level", data.get("escalation_level") or None),
        _line("Missed deadline", data.get("deadline")),
        _line("Acknowledged by", data.get("acknowledged_by")),
        _line("Resolved by", data.get("resolved_by")),
        _line("Description", data.get("description")),
    ]
    resolution = data.get("resolution")
    if isinstance(resolution, dict):
        lines += [
            _line("Cause", resolution.get("cause")),
            _line("Action", resolution.get("action")),
        ]
    if data.get("lat") is not None and data.get("lon") is not None:
        lines.append(_line("Position", f"{data['lat']}, {data['lon']}"))
    lines += [
        "",
        _line("Trip", trip_id),
        _line("Shipper", event.get("shipper")),
        _line("Vehicle (plate)", plate),
        _line("Device", data.get("device_id")),
    ]
    contacts = _contacts(carrier)
    if contacts:
        lines += ["", *contacts]
    lines += [
        "",
        f"Open it on the desk: {desk_link(public_url, data)}",
        "",
        "-- ",
        f"cargowatch: sent to {delivery['to']} because {event.get('shipper')}'s notification "
        f"list asks for {event_type}. Event id {event.get('id')}.",
    ]
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = delivery["to"]
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    # One id per delivery: a copy sent again after a lost answer is the same message.
    domain = sender.rpartition("@")[2] or "cargowatch"
    msg["Message-ID"] = f"<{delivery['delivery_id']}@{domain}>"
    msg["Auto-Submitted"] = "auto-generated"
    text = "\n".join(line for line in lines if line is not None) + "\n"
    msg.set_content(text, charset="utf-8", cte="quoted-printable")
    return msg
