"""Who is e-mailed about what: a shipper's ``notify`` list (contract §5, notifications to
people), its validation, and the matching of an event against it.

A ``notify`` entry is ``{"email": "ops@example.com", "severities": ["critical"], "events":
["alarm.raised", "alarm.escalated"]}``; ``severities`` and ``events`` left out mean all of
them. Each matching (event, address) becomes one outbox delivery of kind ``email``
(``alerts.outbox``), sent by the webhook sender's loop through ``alerts.mail_smtp``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from alerts.deadlines import DEFAULT_SLA
from core.errors import InvalidInput
from telemetry.store.base import Doc

EMAIL_EVENTS = (
    "alarm.raised",
    "alarm.acknowledged",
    "alarm.resolved",
    "alarm.escalated",
    "exception.created",
)
SEVERITIES = tuple(DEFAULT_SLA)
KIND = "email"
# An e-mail delivery's receiver key in the outbox (its ``webhook_id`` column): events of one
# alarm reach one address in order, and a failing address is paused on its own.
RECEIVER_PREFIX = "email:"
MAX_RECIPIENTS = 20
_MAX_ADDRESS = 254
# A plain address: no display name, no quoting, no comments; a domain with a dot. What a
# desk types into a form, and nothing that could smuggle a second header or recipient.
_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}"
)
_FIELDS = {"email", "severities", "events"}


def receiver_key(address: str) -> str:
    return RECEIVER_PREFIX + address


def check_address(value: Any, where: str) -> str:
    """A plain e-mail address (``user@example.com``), its domain lower-cased."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{where} must be an e-mail address like ops@example.com")
    address = value.strip()
    if len(address) > _MAX_ADDRESS or not _ADDRESS.fullmatch(address):
        raise InvalidInput(
            f"{where} is not an e-mail address like ops@example.com", value=address[:100]
        )
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def _choice(value: Any, allowed: Sequence[str], where: str) -> list[str]:
    if value is None:
        return list(allowed)
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"{where} must be a non-empty list of: {', '.join(allowed)}")
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise InvalidInput(
            f"{where}: unknown {', '.join(map(repr, unknown[:5]))}; known: {', '.join(allowed)}"
        )
    return [v for v in allowed if v in value]  # in the canonical order, once each


def validate_notify(value: Any, where: str = "notify") -> list[Doc]:
    """The stored form of a ``notify`` list; ``InvalidInput`` (422) naming the bad entry."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput(f"{where} must be a list of {{email, severities, events}}")
    if len(value) > MAX_RECIPIENTS:
        raise InvalidInput(f"{where} has more than {MAX_RECIPIENTS} entries")
    out: list[Doc] = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise InvalidInput(f"{at} must be an object {{email, severities, events}}")
        extra = sorted(set(entry) - _FIELDS)
        if extra:
            raise InvalidInput(f"{at}: unknown field(s) {', '.join(extra)}")
        address = check_address(entry.get("email"), f"{at}.email")
        if address.lower() in seen:
            raise InvalidInput(f"{at}.email: {address} is listed twice")
        seen.add(address.lower())
        out.append(
            {
                "email": address,
                "severities": _choice(entry.get("severities"), SEVERITIES, f"{at}.severities"),
                "events": _choice(entry.get("events"), EMAIL_EVENTS, f"{at}.events"),
            }
        )
    return out


def recipients(notify: Any, event_type: str, severity: Any) -> list[str]:
    """The addresses of a stored ``notify`` list that want this event (an event without a
    severity matches any severity filter). Tolerant of odd stored values: never raises."""
    if event_type not in EMAIL_EVENTS or not isinstance(notify, list):
        return []
    out: list[str] = []
    for entry in notify:
        if not isinstance(entry, dict) or not isinstance(entry.get("email"), str):
            continue
        events = entry.get("events")
        severities = entry.get("severities")
        if isinstance(events, list) and event_type not in events:
            continue
        if severity is not None and isinstance(severities, list) and severity not in severities:
            continue
        if entry["email"] not in out:
            out.append(entry["email"])
    return out


def still_notified(notify: Any, address: str) -> bool:
    """Whether ``address`` is still on the shipper's list (a removed one gets no more mail)."""
    return isinstance(notify, list) and any(
        isinstance(e, dict) and e.get("email") == address for e in notify
    )
