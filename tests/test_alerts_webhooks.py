from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pytest

from alerts import AlarmService, CountingAlertMetrics, LiveHub, WebhookSender, backoff_s
from core.clock import ManualClock
from rules.events import AlarmType, Milestone, MilestoneKind
from telemetry.store import open_store
from tests.alerts_support import T0, Receiver, check_signature, make_store, put_trip, signal

ALL_EVENTS = ["alarm.raised", "alarm.acknowledged", "alarm.resolved", "alarm.escalated",
              "trip.milestone"]  # fmt: skip
HOUR_MS = 3_600_000


class TickingClock(ManualClock):
    """Manual time, but sleeping really yields for a moment (for run() loops)."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0.005)


@pytest.fixture
def store(tmp_path: Path):
    store = make_store(tmp_path)
    for trip, shipper in [("T1", "pg"), ("T2", "pg"), ("T3", "acme"), ("T4", "acme")]:
        put_trip(store, trip, shipper)
    yield store
    store.close()


def add_hook(store, webhook_id: str, shipper: str, url: str, secret: str) -> None:
    store.put_webhook({"webhook_id": webhook_id, "shipper": shipper, "url": url,
                       "secret": secret, "events": ALL_EVENTS})  # fmt: skip


def expected_events(store, webhook_id: str) -> dict[str, list[str]]:
    """Event ids per order key, in enqueue order, for one subscription."""
    rows = sorted(store.list_deliveries(limit=1000), key=lambda r: r["seq"])
    out: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r["webhook_id"] == webhook_id:
            out[r["order_key"]].append(r["event_id"])
    return out


def received_order(rx: Receiver) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for env in rx.events:
        data = env["data"]
        key = f"alarm:{data['alarm_id']}" if "alarm_id" in data else f"trip:{data['trip_id']}"
        out[key].append(env["id"])
    return out


# -- backoff maths (pure) ----------------------------------------------------------------------
def test_backoff_is_exponential_capped_and_jittered() -> None:
    rng = random.Random(7)
    for n in range(1, 30):
        expected = min(1800.0, 5.0 * 2 ** (n - 1))
        delays = [backoff_s(n, rng) for _ in range(50)]
        assert all(0.8 * expected <= d < 1.2 * expected for d in delays)
        assert max(delays) - min(delays) > 0.1 * expected  # really jittered
    assert backoff_s(1, random.Random(1)) == backoff_s(1, random.Random(1))


def test_max_age_below_24h_is_refused(store) -> None:
    with pytest.raises(ValueError):
        WebhookSender(store, ManualClock(), max_age_s=23 * 3600)


async def test_retries_with_backoff_for_48h_then_dead(store) -> None:
    clock = ManualClock()
    add_hook(store, "wh", "pg", "http://receiver.invalid/hook", "s")
    attempts_at: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts_at.append(clock.now_ms())
        return httpx.Response(500)

    AlarmService(store, clock, LiveHub()).handle([signal()])
    (row,) = store.list_deliveries()
    async with WebhookSender(
        store,
        clock,
        transport=httpx.MockTransport(handler),
        rng=random.Random(3),
        metrics=CountingAlertMetrics(),
    ) as sender:
        for _ in range(1000):
            (row,) = store.list_deliveries()
            if row["status"] != "pending":
                break
            clock.set(max(clock.now_ms(), row["next_attempt_at"]))
            await sender.deliver_due()
    assert row["status"] == "dead"
    assert row["attempts"] == len(attempts_at) and row["last_error"] == "HTTP 500"
    assert attempts_at[0] == T0
    assert attempts_at[-2] < T0 + 48 * HOUR_MS <= attempts_at[-1]
    gaps = [(b - a) / 1000 for a, b in itertools.pairwise(attempts_at)]
    for n, gap in enumerate(gaps, start=1):
        expected = min(1800.0, 5.0 * 2 ** (n - 1))
        assert gap >= 0.8 * expected
        # a paused receiver's delivery may wait up to the end of the pause (+1 s jitter)
        assert gap <= max(1.2 * expected, 1.2 * 1800 + 1)
    assert gaps[:5] == pytest.approx([5, 10, 20, 40, 80], rel=0.2)
    assert sender.metrics.count("webhook_result", "dead") == 1
    failed = sender.metrics.count("webhook_result", "failed")
    assert failed + sender.metrics.count("webhook_result", "dead") == len(attempts_at)


async def test_paused_receiver_deliveries_are_deferred_not_attempted(store) -> None:
    clock = ManualClock()
    add_hook(store, "wh-bad", "pg", "http://bad.invalid/", "s")
    add_hook(store, "wh-good", "acme", "http://good.invalid/", "s")
    calls: dict[str, int] = defaultdict(int)

    def handler(request: httpx.Request) -> httpx.Response:
        calls[request.url.host] += 1
        return httpx.Response(200 if request.url.host == "good.invalid" else 502)

    service = AlarmService(store, clock, LiveHub())
    service.handle([signal(episode=f"e{i}") for i in range(10)])
    service.handle([signal(trip_id="T3", shipper="acme")])
    counted = CountingAlertMetrics()
    transport = httpx.MockTransport(handler)
    async with WebhookSender(store, clock, transport=transport, metrics=counted) as sender:
        for _ in range(4):
            await sender.deliver_due()
    # pass 1: two failures; pass 2: two more (the third trips the breaker while the fourth is
    # already in flight); passes 3-4: the other six wait for the end of the pause unsent
    assert calls == {"bad.invalid": 4, "good.invalid": 1}
    assert counted.count("webhook_result", "deferred") == 6
    pending = store.list_deliveries(shipper="pg", status="pending")
    assert len(pending) == 10
    assert sorted(r["attempts"] for r in pending) == [0] * 6 + [1] * 4
    assert all(r["next_attempt_at"] > clock.now_ms() for r in pending)


async def test_deleted_subscription_makes_its_deliveries_dead(store) -> None:
    clock = ManualClock()
    add_hook(store, "wh", "pg", "http://x.invalid/", "s")
    AlarmService(store, clock, LiveHub()).handle([signal()])
    store.delete_webhook("wh")
    async with WebhookSender(
        store, clock, transport=httpx.MockTransport(lambda r: httpx.Response(200))
    ) as sender:
        assert await sender.deliver_due() == 0
    (row,) = store.list_deliveries()
    assert row["status"] == "dead" and row["last_error"] == "webhook deleted"


# -- against real local HTTP receivers ---------------------------------------------------------
async def test_flaky_receiver_gets_every_event_once_in_order_across_a_restart(store) -> None:
    clock = ManualClock()
    hub = LiveHub()
    pg_rx = await Receiver("pg-secret", plan=[500, "hang", 503, 500, "hang", 500, 502]).start()
    acme_rx = await Receiver("acme-secret").start()
    try:
        add_hook(store, "wh-pg", "pg", pg_rx.url, "pg-secret")
        add_hook(store, "wh-acme", "acme", acme_rx.url, "acme-secret")
        service = AlarmService(store, clock, hub)
        a1, a2, a3 = service.handle(
            [
                signal(AlarmType.LOCK_TAMPER, trip_id="T1"),
                signal(AlarmType.ROUTE_DEVIATION, trip_id="T2"),
                signal(AlarmType.LONG_STOP, trip_id="T3", shipper="acme"),
                Milestone("T1", "pg", MilestoneKind.SEALED, T0 - 60_000),
                Milestone("T1", "pg", MilestoneKind.DEPARTED, T0 - 30_000),
            ]
        )
        service.ack(a1["alarm_id"], by="desk-1", note="calling")
        service.resolve(a2["alarm_id"], by="desk-2", cause="traffic_detour")
        sender = WebhookSender(store, clock, timeout_s=0.3, rng=random.Random(5))
        for i in range(60):
            if i == 3:
                # restart in the middle of the retries: state is in the outbox only
                retrying = [r for r in store.list_deliveries(status="pending") if r["attempts"]]
                assert retrying
                await sender.aclose()
                sender = WebhookSender(store, clock, timeout_s=0.3, rng=random.Random(6))
            if i == 5:
                # events created while the receiver is failing queue up behind their alarm
                service.resolve(a1["alarm_id"], by="desk-1", cause="theft_suspected")
                clock.advance(11 * 60)
                service.escalate_due()
            await sender.deliver_due()
            if not store.list_deliveries(status="pending"):
                break
            clock.advance(10 * 60)
        await sender.aclose()

        assert store.list_deliveries(status="pending") == []
        assert store.list_deliveries(status="dead") == []
        for rx, hook, shipper in [(pg_rx, "wh-pg", "pg"), (acme_rx, "wh-acme", "acme")]:
            assert rx.bad_signatures == 0
            assert {e["shipper"] for e in rx.events} == {shipper}
            assert {e["data"].get("shipper", shipper) for e in rx.events} == {shipper}
            # every event, once per id after de-duplication, in order per alarm / trip
            assert received_order(rx) == expected_events(store, hook)
        assert len(pg_rx.requests) > len(pg_rx.events)  # there were failures and re-sends
        types = {e["data"].get("alarm_id"): [] for e in pg_rx.events}
        for e in pg_rx.events:
            types[e["data"].get("alarm_id")].append(e["type"])
        assert types[a1["alarm_id"]] == ["alarm.raised", "alarm.acknowledged", "alarm.resolved"]
        assert types[a2["alarm_id"]] == [
            "alarm.raised", "alarm.acknowledged", "alarm.resolved"
        ]  # fmt: skip
        assert [e["type"] for e in acme_rx.events] == ["alarm.raised", "alarm.escalated"]
        assert acme_rx.events[0]["data"]["alarm_id"] == a3["alarm_id"]
        # the body is byte-for-byte the stored one and the signature covers it
        for row in store.list_deliveries(shipper="acme"):
            raw = next(q for q in acme_rx.requests if q["envelope"]["id"] == row["event_id"])
            assert raw["body"] == row["body"].encode()
            signature = raw["headers"]["cargowatch-signature"]
            assert check_signature("acme-secret", raw["body"], signature)
            assert not check_signature("pg-secret", raw["body"], signature)
            assert raw["headers"]["content-type"] == "application/json"
            assert json.loads(raw["body"])["id"] == row["event_id"]
    finally:
        await pg_rx.stop()
        await acme_rx.stop()


async def test_dead_receiver_does_not_delay_a_healthy_one(store) -> None:
    clock = TickingClock()
    dead = await Receiver("d", default="hang").start()
    healthy = await Receiver("h").start()
    add_hook(store, "wh-dead", "pg", dead.url, "d")
    add_hook(store, "wh-ok", "acme", healthy.url, "h")
    service = AlarmService(store, clock, LiveHub())
    service.handle([signal(trip_id="T1", episode=f"p{i}") for i in range(6)])
    acme = service.handle([signal(trip_id="T3", shipper="acme", episode=f"a{i}") for i in range(3)])
    for doc in acme:
        service.ack(doc["alarm_id"], by="desk")
        service.resolve(doc["alarm_id"], by="desk", cause="rest_stop")
    # a 30 s timeout: the dead receiver's requests stay hung for the whole test
    sender = WebhookSender(store, clock, timeout_s=30, per_receiver=2, concurrency=8)
    task = asyncio.ensure_future(sender.run(poll_s=0.01))
    try:
        for _ in range(500):
            if len(healthy.events) == 9:
                break
            await asyncio.sleep(0.01)
        assert len(healthy.events) == 9
        assert received_order(healthy) == expected_events(store, "wh-ok")
        # meanwhile the dead receiver holds at most its own share of requests, all unanswered
        assert len(dead.requests) == dead.hanging <= 2 and dead.events == []
        for _ in range(500):  # and it really is being tried (the test is not vacuous)
            if dead.hanging == 2:
                break
            await asyncio.sleep(0.01)
        assert dead.hanging == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        await dead.stop()
        await healthy.stop()
    # cancelled attempts are not recorded: nothing is lost, all still pending
    pending = store.list_deliveries(shipper="pg", status="pending")
    assert len(pending) == 6 and all(r["attempts"] == 0 for r in pending)


async def test_run_survives_store_errors(store) -> None:
    class Flaky:
        def __init__(self, inner) -> None:
            self.inner, self.failures = inner, 2

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def claim_deliveries(self, *args, **kwargs):
            if self.failures:
                self.failures -= 1
                raise OSError("disk I/O error")
            return self.inner.claim_deliveries(*args, **kwargs)

    clock = TickingClock()
    rx = await Receiver("s").start()
    try:
        add_hook(store, "wh", "pg", rx.url, "s")
        AlarmService(store, clock, LiveHub()).handle([signal()])
        sender = WebhookSender(Flaky(store), clock, metrics=CountingAlertMetrics())  # type: ignore[arg-type]
        task = asyncio.ensure_future(sender.run(poll_s=0.01))
        try:
            for _ in range(500):
                if store.list_deliveries(status="delivered"):
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert sender.metrics.count("alerts_error", "webhook_loop") == 2
        (row,) = store.list_deliveries()
        assert row["status"] == "delivered" and row["attempts"] == 1
        assert [e["id"] for e in rx.events] == [row["event_id"]]
    finally:
        await rx.stop()


# -- one POST per event, within a process and across processes ------------------------------
class SlowReads:
    """A store whose reads of due deliveries return late: the rows are read, then the
    thread waits, as a busy database or a descheduled thread would (the double-POST race)."""

    def __init__(self, inner, delay_s: float = 0.05) -> None:
        self.inner, self.delay_s = inner, delay_s

    def __getattr__(self, name):
        method = getattr(self.inner, name)
        if name not in {"due_deliveries", "claim_deliveries"}:
            return method

        def slow(*args, **kwargs):
            rows = method(*args, **kwargs)
            time.sleep(self.delay_s)
            return rows

        return slow


def post_counts(rx: Receiver) -> Counter[str]:
    return Counter(q["envelope"]["id"] for q in rx.requests)


async def test_a_delivery_read_before_its_attempt_is_recorded_is_not_sent_again(store) -> None:
    """The measured double POST: a pass of run() read a delivery as pending, the attempt in
    flight finished meanwhile, and the pass sent it again."""
    clock = TickingClock()
    rx = await Receiver("s").start()
    try:
        add_hook(store, "wh", "pg", rx.url, "s")
        service = AlarmService(store, clock, LiveHub())
        service.handle([signal(episode=f"e{i}") for i in range(8)])
        sender = WebhookSender(SlowReads(store), clock)  # type: ignore[arg-type]
        task = asyncio.ensure_future(sender.run(poll_s=0.001))
        try:
            for _ in range(500):
                if len(store.list_deliveries(status="delivered")) == 8:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # a late duplicate would arrive now
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert len(store.list_deliveries(status="delivered")) == 8
        counts = post_counts(rx)
        assert len(counts) == 8 and set(counts.values()) == {1}, counts
    finally:
        await rx.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path):
    """Two stores on one database: what two processes sharing it would hold."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    stores = open_store(url), open_store(url)
    for trip, shipper in [("T1", "pg"), ("T2", "pg")]:
        put_trip(stores[0], trip, shipper)
    yield stores
    for s in stores:
        s.close()


async def test_two_senders_on_one_database_deliver_every_event_once_in_order(two_stores) -> None:
    first, second = two_stores
    clock = TickingClock()
    rx = await Receiver("s").start()
    try:
        add_hook(first, "wh", "pg", rx.url, "s")
        service = AlarmService(first, clock, LiveHub())
        raised = service.handle(
            [signal(trip_id=f"T{1 + i % 2}", episode=f"e{i}") for i in range(12)]
        )
        for doc in raised[::2]:
            service.ack(doc["alarm_id"], by="desk")
        for doc in raised[::3]:
            service.resolve(doc["alarm_id"], by="desk", cause="rest_stop")
        total = len(first.list_deliveries(limit=1000))
        senders = [
            WebhookSender(SlowReads(s, 0.01), clock, owner=name, metrics=CountingAlertMetrics())  # type: ignore[arg-type]
            for name, s in (("one", first), ("two", second))
        ]
        tasks = [asyncio.ensure_future(s.run(poll_s=0.001)) for s in senders]
        try:
            for _ in range(1000):
                if len(first.list_deliveries(status="delivered", limit=1000)) == total:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # a late duplicate would arrive now
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert len(first.list_deliveries(status="delivered", limit=1000)) == total
        counts = post_counts(rx)
        assert len(counts) == total and set(counts.values()) == {1}, counts
        assert received_order(rx) == expected_events(first, "wh")
        # both took part: the deliveries really were shared
        assert all(s.metrics.count("webhook_result", "delivered") > 0 for s in senders)
    finally:
        await rx.stop()


class Killed:
    """The store as a killed process leaves it: nothing more is written (no lease given
    back, no outcome recorded)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def release_deliveries(self, delivery_ids, owner):
        raise OSError("the process is gone")


async def test_a_sender_that_dies_holding_a_lease_is_replaced_after_expiry(store) -> None:
    clock = ManualClock()
    rx = await Receiver("s", plan=["hang"]).start()
    try:
        add_hook(store, "wh", "pg", rx.url, "s")
        AlarmService(store, clock, LiveHub()).handle([signal()])
        dying = WebhookSender(Killed(store), clock, owner="dying", lease_s=60)  # type: ignore[arg-type]
        attempt = asyncio.ensure_future(dying.deliver_due())
        for _ in range(500):
            if rx.hanging:
                break
            await asyncio.sleep(0.01)
        assert rx.hanging == 1
        await dying.aclose()  # dies mid-request: its outcome is never recorded
        await attempt
        (row,) = store.list_deliveries()
        assert row["status"] == "pending" and row["attempts"] == 0
        async with WebhookSender(store, clock, owner="heir") as heir:
            assert await heir.deliver_due() == 0  # the lease still holds
            clock.advance(59.999)
            assert await heir.deliver_due() == 0
            clock.advance(0.001)
            assert await heir.deliver_due() == 1
            assert await heir.deliver_due() == 0
        (row,) = store.list_deliveries()
        assert row["status"] == "delivered" and row["attempts"] == 1
        assert len(rx.requests) == 2 and [e["id"] for e in rx.events] == [row["event_id"]]
    finally:
        await rx.stop()


async def test_a_stale_senders_outcome_does_not_overwrite_the_new_owners(store) -> None:
    clock = ManualClock()
    add_hook(store, "wh", "pg", "http://receiver.invalid/hook", "s")
    AlarmService(store, clock, LiveHub()).handle([signal()])
    posts: list[str] = []
    resume = asyncio.Event()

    async def stalled(request: httpx.Request) -> httpx.Response:
        posts.append("stale")
        await resume.wait()
        return httpx.Response(500)

    def fine(request: httpx.Request) -> httpx.Response:
        posts.append("fresh")
        return httpx.Response(200)

    stale = WebhookSender(store, clock, transport=httpx.MockTransport(stalled), owner="stale")
    fresh = WebhookSender(store, clock, transport=httpx.MockTransport(fine), owner="fresh")
    async with stale, fresh:
        first = asyncio.ensure_future(stale.deliver_due())
        for _ in range(500):
            if posts:
                break
            await asyncio.sleep(0.01)
        assert await fresh.deliver_due() == 0  # held by the stale sender's lease
        clock.advance(60)  # the stale sender stalled past its lease
        assert await fresh.deliver_due() == 1
        resume.set()
        assert await first == 1  # its 500 arrives now, for a delivery it no longer holds
        (row,) = store.list_deliveries()
        assert row["status"] == "delivered" and row["attempts"] == 1
        assert row["last_error"] is None
        clock.advance(3600)
        assert await stale.deliver_due() == 0 and await fresh.deliver_due() == 0
    assert posts == ["stale", "fresh"]


def test_the_lease_must_cover_one_attempt(store) -> None:
    with pytest.raises(ValueError):
        WebhookSender(store, ManualClock(), timeout_s=10, lease_s=12)
    assert WebhookSender(store, ManualClock(), timeout_s=10, lease_s=15).owner
    one, two = WebhookSender(store, ManualClock()), WebhookSender(store, ManualClock())
    assert one.owner != two.owner


async def test_a_sender_closed_mid_request_gives_its_lease_back(store) -> None:
    clock = ManualClock()
    rx = await Receiver("s", plan=["hang"]).start()
    try:
        add_hook(store, "wh", "pg", rx.url, "s")
        AlarmService(store, clock, LiveHub()).handle([signal()])
        leaving = WebhookSender(store, clock, owner="leaving")
        attempt = asyncio.ensure_future(leaving.deliver_due())
        for _ in range(500):
            if rx.hanging:
                break
            await asyncio.sleep(0.01)
        assert rx.hanging == 1
        await leaving.aclose()  # shutdown: the request is cancelled, the lease given back
        await attempt
        async with WebhookSender(store, clock, owner="next") as successor:
            assert await successor.deliver_due() == 1  # at once, not after the lease
        (row,) = store.list_deliveries()
        assert row["status"] == "delivered" and row["attempts"] == 1
        assert len(rx.requests) == 2 and [e["id"] for e in rx.events] == [row["event_id"]]
    finally:
        await rx.stop()


def test_the_subscribable_events_include_geofences_and_exceptions() -> None:
    from alerts import WEBHOOK_EVENTS

    for event in ("geofence.entered", "geofence.exited", "exception.created"):
        assert event in WEBHOOK_EVENTS
    assert "alarm.feedback" not in WEBHOOK_EVENTS  # comes from shippers, not sent to them
