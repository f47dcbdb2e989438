"""E-mail notifications (alerts/mail_notify.py, mail_compose.py, mail_smtp.py, and their
loop in alerts/webhooks.py) against a real SMTP server (aiosmtpd) on a loopback port."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from alerts import AlarmService, LiveHub, WebhookSender
from alerts.mail_notify import recipients, validate_notify
from alerts.mail_smtp import Mailer, SmtpServer, _PinnedSMTP
from alerts.outbox import enqueue_event
from alerts.targets import TargetGuard
from core.clock import ManualClock
from core.errors import InvalidInput
from telemetry.store.base import Doc
from telemetry.store.sqlite import SqliteStore
from tests.alerts_support import T0, put_trip, signal

HOUR_MS = 3_600_000
PUBLIC = "https://desk.example.com/"


class Inbox:
    """aiosmtpd handler: keeps every message it accepts; ``refuse`` answers RCPT with it."""

    def __init__(self, refuse: str | None = None) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.refuse = refuse

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse:
            return self.refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"

    def ids(self) -> Counter[str]:
        return Counter(str(m["Message-ID"]) for _, _, m in self.messages)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Relay:
    """A real SMTP server on 127.0.0.1:port, started and stopped by the test."""

    def __init__(self, port: int, inbox: Inbox) -> None:
        self.port, self.inbox = port, inbox
        self._controller: Controller | None = None

    def start(self) -> Relay:
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


class CarrierStore(SqliteStore):
    """The SQLite store plus carriers, for as long as the real store has none: the mail's
    contact card reads ``get_carrier`` when the store offers it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.carriers: dict[str, Doc] = {}

    def get_carrier(self, carrier_id: str) -> Doc | None:
        return self.carriers.get(carrier_id)


CARRIER = {
    "carrier_id": "c-east",
    "name": "East Haulage",
    "contacts": [
        {"name": "Li Wei", "role": "dispatcher", "phone": "+86 21 5555 0101",
         "email": "dispatch@east.example"},
    ],
}  # fmt: skip


@pytest.fixture
def store(tmp_path: Path):
    path = str(tmp_path / "cargowatch.db")
    probe = SqliteStore(path)
    has_carriers = hasattr(probe, "put_carrier")
    probe.close()
    store: Any = SqliteStore(path) if has_carriers else CarrierStore(path)
    store.migrate()
    if has_carriers:
        store.put_carrier(CARRIER)
    else:
        store.carriers["c-east"] = CARRIER
    put_trip(store, "T1", "pg", vehicle="沪A·12345", carrier="c-east")
    put_trip(store, "T2", "pg")
    yield store
    store.close()


@pytest.fixture
def relay():
    relays: list[Relay] = []

    def make(inbox: Inbox | None = None, *, started: bool = True) -> Relay:
        r = Relay(free_port(), inbox or Inbox())
        relays.append(r)
        return r.start() if started else r

    yield make
    for r in relays:
        r.stop()


def notify(store, *entries: dict[str, Any]) -> None:
    store.put_shipper({"shipper": "pg", "sla": {}, "rules": {}, "notify": validate_notify(
        list(entries))})  # fmt: skip


def mailer(store, url: str, *, guard: TargetGuard | None = None, **kw: Any) -> Mailer:
    return Mailer(store, url, sender="cargowatch@desk.example.com", public_url=PUBLIC,
                  targets=guard or TargetGuard(allow_private=True), **kw)  # fmt: skip


def emails(store) -> list[Doc]:
    return [d for d in store.list_deliveries(limit=1000) if d.get("kind") == "email"]


def notes(store, alarm_id: str) -> list[Doc]:
    return [h for h in store.alarm_history(alarm_id) if h.get("by") == "email"]


# -- what is sent ------------------------------------------------------------------------------
async def test_a_matching_alarm_is_mailed_with_alarm_trip_vehicle_carrier_and_link(
    store, relay
) -> None:
    clock = ManualClock()
    r = relay()
    notify(
        store,
        {"email": "ops@pg.example", "severities": ["critical"], "events": ["alarm.raised"]},
        {"email": "minor@pg.example", "severities": ["minor"]},
        {"email": "acks@pg.example", "events": ["alarm.acknowledged"]},
    )
    (alarm,) = AlarmService(store, clock, LiveHub()).handle([signal()])  # LOCK_TAMPER critical
    assert [d["to"] for d in emails(store)] == ["ops@pg.example"]
    async with WebhookSender(store, clock, mailer=mailer(store, r.url, clock=clock)) as sender:
        assert await sender.deliver_due() == 1
    ((mail_from, rcpt, msg),) = r.inbox.messages
    assert mail_from == "cargowatch@desk.example.com" and rcpt == ["ops@pg.example"]
    assert msg["To"] == "ops@pg.example" and msg["From"] == "cargowatch@desk.example.com"
    assert "LOCK_TAMPER" in msg["Subject"] and "CRITICAL" in msg["Subject"]
    assert "沪A·12345" in msg["Subject"]  # non-ASCII, RFC 2047-encoded on the wire
    assert msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
    body = msg.get_content()
    alarm_id = alarm["alarm_id"]
    for text in (
        alarm_id,
        "Severity:         critical",
        "Trip:             T1",
        "Vehicle (plate):  沪A·12345",
        "Device:           lock-T1",
        "Acknowledge by:   2026-11-22T08:10:00",  # raised at T0, critical: 10 min
        "Resolve by:       2026-11-22T12:00:00",
        "Carrier:          East Haulage",
        "Li Wei (dispatcher)  tel +86 21 5555 0101  e-mail dispatch@east.example",
        f"https://desk.example.com/#alarm={alarm_id}",
    ):
        assert text in body, (text, body)
    (row,) = emails(store)
    assert row["status"] == "delivered" and row["attempts"] == 1
    (entry,) = notes(store, alarm_id)
    assert entry["action"] == "notified" and entry["note"] == "to ops@pg.example: alarm.raised"
    assert entry["at"] == T0


async def test_later_events_go_to_the_addresses_that_want_them(store, relay) -> None:
    clock = ManualClock()
    r = relay()
    notify(store, {"email": "acks@pg.example", "events": ["alarm.acknowledged", "alarm.resolved"]})
    service = AlarmService(store, clock, LiveHub())
    (alarm,) = service.handle([signal()])
    assert emails(store) == []
    service.ack(alarm["alarm_id"], by="desk-07")
    service.resolve(alarm["alarm_id"], by="desk-07", cause="rest_stop", action="called")
    async with WebhookSender(store, clock, mailer=mailer(store, r.url)) as sender:
        for _ in range(3):  # one alarm's events go out in order, one per pass
            await sender.deliver_due()
    subjects = [m["Subject"] for _, _, m in r.inbox.messages]
    assert len(subjects) == 2
    assert "acknowledged" in subjects[0] and "resolved" in subjects[1]
    assert "Cause:            rest_stop" in r.inbox.messages[1][2].get_content()
    assert [n["note"] for n in notes(store, alarm["alarm_id"])] == [
        "to acks@pg.example: alarm.acknowledged",
        "to acks@pg.example: alarm.resolved",
    ]


# -- retries, leases, restarts -----------------------------------------------------------------
async def test_a_relay_that_was_down_gets_the_mail_once_when_it_is_back(store, relay) -> None:
    clock = ManualClock()
    r = relay(started=False)
    notify(store, {"email": "ops@pg.example"})
    (alarm,) = AlarmService(store, clock, LiveHub()).handle([signal()])
    async with WebhookSender(store, clock, mailer=mailer(store, r.url)) as sender:
        await sender.deliver_due()
        (row,) = emails(store)
        assert row["status"] == "pending" and row["attempts"] == 1
        assert row["last_error"] == "connection failed"  # no host or port for the shipper
        assert row["next_attempt_at"] > T0
        assert notes(store, alarm["alarm_id"]) == []  # a retry is not news
        assert await sender.deliver_due() == 0  # not due yet
        r.start()
        clock.set(row["next_attempt_at"])
        assert await sender.deliver_due() == 1
        clock.advance(3600)
        assert await sender.deliver_due() == 0
    assert len(r.inbox.messages) == 1
    (row,) = emails(store)
    assert row["status"] == "delivered" and row["attempts"] == 2 and row["last_error"] is None
    assert [n["action"] for n in notes(store, alarm["alarm_id"])] == ["notified"]


async def test_two_senders_and_a_restart_send_each_mail_once(store, relay, tmp_path) -> None:
    clock = ManualClock()
    r = relay()
    notify(store, {"email": "ops@pg.example"}, {"email": "night@pg.example"})
    service = AlarmService(store, clock, LiveHub())
    raised = service.handle([signal(trip_id=f"T{1 + i % 2}", episode=f"e{i}") for i in range(6)])
    total = len(emails(store))
    assert total == 12
    other = SqliteStore(str(tmp_path / "cargowatch.db"))  # a second process's connection
    try:
        a = WebhookSender(store, clock, owner="a", mailer=mailer(store, r.url))
        b = WebhookSender(other, clock, owner="b", mailer=mailer(other, r.url))
        sent = [0, 0]
        for _ in range(20):  # each sends at most 2 at a time per address: a few passes
            done = await asyncio.gather(a.deliver_due(), b.deliver_due())
            sent = [x + y for x, y in zip(sent, done, strict=True)]
            if not store.list_deliveries(status="pending"):
                break
        await a.aclose()
        await b.aclose()
        assert sum(sent) == total, sent
        # a restart: the same events enqueued again (a re-delivered engine event) add no
        # row, and a new sender finds nothing to send
        for row in emails(store):
            data = {"alarm_id": row["alarm_id"], "severity": "critical"}
            enqueue_event(store, clock, shipper="pg", type="alarm.raised", data=data,
                          order_key=row["order_key"], event_id=row["event_id"])  # fmt: skip
        assert len(emails(store)) == total
        async with WebhookSender(other, clock, owner="c", mailer=mailer(other, r.url)) as c:
            clock.advance(3600)
            assert await c.deliver_due() == 0
    finally:
        other.close()
    counts = r.inbox.ids()
    assert len(counts) == total and set(counts.values()) == {1}, counts
    for doc in raised:
        assert len(notes(store, doc["alarm_id"])) == 2


async def test_a_refused_recipient_is_final_and_said_in_the_history(store, relay) -> None:
    clock = ManualClock()
    r = relay(Inbox(refuse="550 5.1.1 no such mailbox"))
    notify(store, {"email": "gone@pg.example"})
    (alarm,) = AlarmService(store, clock, LiveHub()).handle([signal()])
    async with WebhookSender(store, clock, mailer=mailer(store, r.url)) as sender:
        await sender.deliver_due()
    (row,) = emails(store)
    assert row["status"] == "dead" and row["last_error"] == "SMTP 550"
    (entry,) = notes(store, alarm["alarm_id"])
    assert entry["action"] == "notify_failed"
    assert entry["note"] == "to gone@pg.example: alarm.raised: not sent (SMTP 550)"


async def test_an_address_taken_off_the_list_gets_no_more_mail(store, relay) -> None:
    clock = ManualClock()
    r = relay()
    notify(store, {"email": "ops@pg.example"})
    AlarmService(store, clock, LiveHub()).handle([signal()])
    notify(store, {"email": "someone-else@pg.example"})
    async with WebhookSender(store, clock, mailer=mailer(store, r.url)) as sender:
        await sender.deliver_due()
    assert r.inbox.messages == []
    (row,) = emails(store)
    assert row["status"] == "dead" and row["last_error"] == "address no longer notified"


async def test_without_an_smtp_server_mails_wait_unattempted_then_expire(store) -> None:
    clock = ManualClock()
    notify(store, {"email": "ops@pg.example"})
    (alarm,) = AlarmService(store, clock, LiveHub()).handle([signal()])
    async with WebhookSender(store, clock) as sender:
        await sender.deliver_due()
        (row,) = emails(store)
        assert row["status"] == "pending" and row["attempts"] == 0
        assert row["last_error"] == "e-mail is not configured"
        clock.set(T0 + 49 * HOUR_MS)
        await sender.deliver_due()
    (row,) = emails(store)
    assert row["status"] == "dead"
    (entry,) = notes(store, alarm["alarm_id"])
    assert entry["action"] == "notify_failed" and "e-mail is not configured" in entry["note"]


# -- the SSRF guard ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "resolved", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "fd00::1", "0.0.0.0"]
)
async def test_a_relay_on_a_private_address_is_refused_unless_allowed(
    store, relay, resolved: str
) -> None:
    clock = ManualClock()
    r = relay()
    notify(store, {"email": "ops@pg.example"})
    AlarmService(store, clock, LiveHub()).handle([signal()])
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return [resolved]

    guard = TargetGuard(allow_private=False, resolve=resolve)
    url = f"smtp://relay.example.com:{r.port}"
    async with WebhookSender(store, clock, mailer=mailer(store, url, guard=guard)) as sender:
        await sender.deliver_due()
    assert asked == [("relay.example.com", r.port)]
    assert r.inbox.messages == []
    (row,) = emails(store)
    assert row["status"] == "pending" and row["last_error"] == "refused target"


def test_the_connection_goes_to_the_checked_address_under_the_relays_name(relay) -> None:
    """After the guard's check the socket goes to the checked address, while the SMTP
    session (greeting, STARTTLS's certificate name) keeps the relay's name: a name that
    resolves differently a moment later (DNS rebinding) is never asked again."""
    r = relay()
    smtp = _PinnedSMTP("127.0.0.1", timeout=5, local_hostname="cargowatch")
    try:
        code, _ = smtp.connect("relay.invalid", r.port)  # .invalid never resolves
        assert code == 220
        assert smtp.ehlo()[0] == 250
        assert smtp._host == "relay.invalid"
    finally:
        smtp.close()


# -- pure parts --------------------------------------------------------------------------------
def test_notify_validation_names_the_bad_entry() -> None:
    assert validate_notify([{"email": "Ops@PG.Example"}]) == [
        {"email": "Ops@pg.example", "severities": ["critical", "major", "minor"],
         "events": ["alarm.raised", "alarm.acknowledged", "alarm.resolved",
                    "alarm.escalated", "exception.created"]},
    ]  # fmt: skip
    bad = [
        ([{"email": "not-an-address"}], "notify[0].email"),
        ([{"email": "a@b.example\r\nBcc: x@y.example"}], "notify[0].email"),
        ([{"email": "ops@pg.example", "severities": ["urgent"]}], "'urgent'"),
        ([{"email": "ops@pg.example", "events": ["trip.milestone"]}], "'trip.milestone'"),
        ([{"email": "ops@pg.example", "events": []}], "notify[0].events"),
        ([{"email": "a@pg.example"}, {"email": "A@PG.example"}], "listed twice"),
        ([{"email": "ops@pg.example", "cc": "x"}], "unknown field"),
        ([{"email": f"u{i}@pg.example"} for i in range(21)], "more than 20"),
        ("ops@pg.example", "must be a list"),
    ]
    for value, text in bad:
        with pytest.raises(InvalidInput) as err:
            validate_notify(value)
        assert text in err.value.message, (value, err.value.message)


def test_recipients_match_event_and_severity() -> None:
    stored = validate_notify([
        {"email": "crit@x.example", "severities": ["critical"]},
        {"email": "esc@x.example", "events": ["alarm.escalated"]},
    ])  # fmt: skip
    assert recipients(stored, "alarm.raised", "critical") == ["crit@x.example"]
    assert recipients(stored, "alarm.escalated", "major") == ["esc@x.example"]
    assert recipients(stored, "alarm.escalated", "critical") == ["crit@x.example", "esc@x.example"]
    assert recipients(stored, "trip.milestone", None) == []
    assert recipients("garbage", "alarm.raised", "critical") == []


def test_the_smtp_url_keeps_its_password_out_of_logs() -> None:
    server = SmtpServer.from_url("smtp://mailer:s%40cret@relay.example.com:587")
    assert (server.host, server.port, server.user, server.password) == (
        "relay.example.com", 587, "mailer", "s@cret")  # fmt: skip
    assert "s@cret" not in repr(server)
    assert SmtpServer.from_url("smtp://relay.example.com").port == 25
    with pytest.raises(ValueError):
        SmtpServer.from_url("http://relay.example.com")
