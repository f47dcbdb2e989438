"""``GET /metrics`` by value: the real runtime on SQLite, messages through the pipeline, the
scrape parsed with prometheus_client's own parser.

Each test moves one thing (a tamper event, a refused webhook, a bad message, an
acknowledgement) and reads the exact sample back; the table in docs/operations.md is checked
against what a fresh runtime exports.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cargowatch.runtime import Runtime
from cargowatch.settings import Settings
from core.clock import ManualClock
from telemetry.ingest import RawMessage
from telemetry.store import Store, open_store
from tests.alerts_support import Receiver
from tests.api_world import T0, trip_doc

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class CountingStore:
    """The real store, recording the name of every method called through it (every call
    still runs against SQLite: this counts queries, it fakes nothing)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attr(*args, **kwargs)

        return counted


def make_runtime(tmp_path: Path, clock: ManualClock, store: Any = None) -> Runtime:
    """The real runtime on SQLite in ``tmp_path`` (through ``store`` when given)."""
    # the test's webhook receiver listens on 127.0.0.1
    settings = Settings(db_url=sqlite_url(tmp_path), mqtt_url=None, allow_private_targets=True)
    return Runtime.open(settings, clock=clock, store=store)


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'metrics.sqlite'}"


@pytest.fixture
def counting(tmp_path: Path) -> CountingStore:
    return CountingStore(open_store(sqlite_url(tmp_path)))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def runtime(tmp_path: Path, clock: ManualClock, counting: CountingStore) -> Iterator[Runtime]:
    """A runtime watching trip T1 of shipper pg (a GPS unit and an e-lock), active."""
    runtime = make_runtime(tmp_path, clock, store=counting)
    runtime.register_device({"device_id": "gps-1", "kind": "gps", "shipper": "pg"})
    runtime.register_device({"device_id": "lock-1", "kind": "lock", "shipper": "pg"})
    runtime.create_trip(trip_doc("T1", "pg", ["gps-1", "lock-1"]))
    runtime.pipeline.process([position(T0)])  # at the origin at the planned start: active
    assert runtime.engine.trip_state("T1")["status"] == "active"
    yield runtime
    runtime.close()


def position(ts: int) -> RawMessage:
    body = {"ts": ts, "lat": 31.45, "lon": 121.10, "speed_kmh": 0.0}
    return RawMessage("devices/gps-1/position", orjson.dumps(body), ts)


def lock(event: str, ts: int) -> RawMessage:
    body = {"ts": ts, "event": event, "lat": 31.45, "lon": 121.10}
    return RawMessage("devices/lock-1/lock", orjson.dumps(body), ts)


def scrape(runtime: Runtime) -> Samples:
    """Every sample of one scrape by (sample name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(runtime.metrics_text().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def tamper(runtime: Runtime, clock: ManualClock, n: int = 1) -> list[str]:
    """``n`` tamper events through the pipeline; the ids of the alarms they raised."""
    before = {a["alarm_id"] for a in runtime.store.list_alarms(limit=1000)}
    for _ in range(n):
        clock.advance(10)
        runtime.pipeline.process([lock("tamper", clock.now_ms())])
    after = runtime.store.list_alarms(type="LOCK_TAMPER", limit=1000)
    return [a["alarm_id"] for a in after if a["alarm_id"] not in before]


def test_a_tamper_event_counts_one_lock_tamper_alarm(runtime: Runtime, clock: ManualClock) -> None:
    fresh = scrape(runtime)
    assert sample(fresh, "cargowatch_alarms_raised_total", type="LOCK_TAMPER") == 0
    assert len(tamper(runtime, clock)) == 1
    samples = scrape(runtime)
    assert sample(samples, "cargowatch_alarms_raised_total", type="LOCK_TAMPER") == 1
    assert sample(samples, "cargowatch_alarms_raised_total", type="ROUTE_DEVIATION") == 0
    assert sample(samples, "cargowatch_lock_events_stored_total") == 1
    assert sample(samples, "cargowatch_messages_in_total") == 2  # the position and the tamper
    # the same event again (a redelivery) is a duplicate, not a second alarm
    runtime.pipeline.process([lock("tamper", clock.now_ms())])
    samples = scrape(runtime)
    assert sample(samples, "cargowatch_alarms_raised_total", type="LOCK_TAMPER") == 1
    assert sample(samples, "cargowatch_duplicates_total") == 1
    assert runtime.metrics.value("cargowatch_alarms_raised_total", type="LOCK_TAMPER") == 1


def test_dead_letters_are_counted_by_reason(runtime: Runtime) -> None:
    runtime.pipeline.process(
        [
            RawMessage("devices/gps-1/position", b"{oops", T0),
            RawMessage("devices/gps-1/position", b"{oops", T0),
            RawMessage("devices/nobody/position", orjson.dumps({"ts": T0}), T0),
            RawMessage("devices/gps-1/lock", orjson.dumps({"ts": T0, "event": "boom"}), T0),
        ]
    )
    samples = scrape(runtime)
    assert sample(samples, "cargowatch_dead_letters_total", reason="bad_json") == 2
    assert sample(samples, "cargowatch_dead_letters_total", reason="unknown_device") == 1
    assert sample(samples, "cargowatch_dead_letters_total", reason="schema") == 1
    assert sample(samples, "cargowatch_dead_letters_total", reason="too_large") == 0
    assert sample(samples, "cargowatch_batch_size_count") == 2  # the fixture's batch and this
    assert sample(samples, "cargowatch_batch_size_sum") == 5


def test_open_alarms_by_type_and_status_follow_the_desk(
    runtime: Runtime, clock: ManualClock
) -> None:
    first, second = tamper(runtime, clock, n=2)
    samples = scrape(runtime)
    assert sample(samples, "cargowatch_open_alarms", type="LOCK_TAMPER", status="open") == 2
    assert sample(samples, "cargowatch_open_alarms", type="LOCK_TAMPER", status="acknowledged") == 0
    assert sample(samples, "cargowatch_active_trips") == 1
    runtime.alarms.ack(first, by="desk-1")
    samples = scrape(runtime)
    assert sample(samples, "cargowatch_open_alarms", type="LOCK_TAMPER", status="open") == 1
    assert sample(samples, "cargowatch_open_alarms", type="LOCK_TAMPER", status="acknowledged") == 1
    assert sample(samples, "cargowatch_alarm_transitions_total", kind="acknowledged") == 1
    # resolving an open alarm acknowledges it implicitly: two transitions
    runtime.alarms.resolve(second, by="desk-1", cause="other")
    runtime.alarms.resolve(first, by="desk-1", cause="other")
    samples = scrape(runtime)
    assert sample(samples, "cargowatch_open_alarms", type="LOCK_TAMPER", status="open") == 0
    assert sample(samples, "cargowatch_open_alarms", type="LOCK_TAMPER", status="acknowledged") == 0
    assert sample(samples, "cargowatch_alarm_transitions_total", kind="acknowledged") == 2
    assert sample(samples, "cargowatch_alarm_transitions_total", kind="resolved") == 2


def test_a_scrape_costs_one_store_query_however_many_alarms(
    runtime: Runtime, clock: ManualClock, counting: CountingStore
) -> None:
    def calls_of(scrape_once: Callable[[], object]) -> list[str]:
        counting.calls.clear()
        scrape_once()
        return list(counting.calls)

    tamper(runtime, clock, n=1)
    few = calls_of(lambda: scrape(runtime))
    tamper(runtime, clock, n=30)
    many = calls_of(lambda: scrape(runtime))
    assert few == many == ["alarm_counts"]
    samples = scrape(runtime)
    assert sample(samples, "cargowatch_open_alarms", type="LOCK_TAMPER", status="open") == 31


@pytest.mark.asyncio(loop_scope="session")
async def test_a_refused_webhook_moves_the_failure_counter(
    runtime: Runtime, clock: ManualClock
) -> None:
    rx = await Receiver("s3cret", plan=[500]).start()  # 500 once, then 200
    try:
        runtime.store.put_webhook(
            {
                "webhook_id": "wh-1",
                "shipper": "pg",
                "url": rx.url,
                "secret": "s3cret",
                "events": ["alarm.raised"],
            }
        )
        tamper(runtime, clock)
        assert await runtime.webhooks.deliver_due() == 1
        samples = scrape(runtime)
        assert sample(samples, "cargowatch_webhook_deliveries_total", result="failed") == 1
        assert sample(samples, "cargowatch_webhook_deliveries_total", result="delivered") == 0
        clock.advance(10)  # past the first back-off (5 s, jittered by at most 20 %)
        assert await runtime.webhooks.deliver_due() == 1
        samples = scrape(runtime)
        assert sample(samples, "cargowatch_webhook_deliveries_total", result="failed") == 1
        assert sample(samples, "cargowatch_webhook_deliveries_total", result="delivered") == 1
        assert len(rx.requests) == 2
    finally:
        await runtime.webhooks.aclose()
        await rx.stop()


def documented_metrics() -> list[tuple[str, str, str]]:
    """(name, type, labels) of each row of the metrics table in docs/operations.md."""
    rows = re.findall(r"^\| `(cargowatch_\w+)` \| (\w+) \| ([^|]*) \|", DOCS.read_text(), re.M)
    assert len(rows) >= 20, "the metrics table of docs/operations.md was not found"
    return [(name, kind, labels.strip()) for name, kind, labels in rows]


def test_every_documented_metric_is_exported_with_samples(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, ManualClock(T0))  # fresh: nothing has happened yet
    try:
        families = {
            f.name: f for f in text_string_to_metric_families(runtime.metrics_text().decode())
        }
    finally:
        runtime.close()
    documented = documented_metrics()
    for name, kind, labels in documented:
        family = families.get(name.removesuffix("_total"))
        assert family is not None, f"{name} is documented but not exported"
        assert family.type == kind, f"{name}: documented as {kind}, exported as {family.type}"
        assert family.samples, f"{name} has no samples in a fresh scrape"
        want = {x.strip("` ") for x in labels.split(",")} - {"", "-"}
        got = {k for s in family.samples for k in s.labels} - {"le"}
        assert got == want, f"{name}: documented labels {want}, exported {got}"
    names = {name.removesuffix("_total") for name, _, _ in documented}
    # the text parser reads prometheus_client's ``<counter>_created`` series as own families
    exported = {n.removesuffix("_created") for n in families if n.startswith("cargowatch_")}
    undocumented = exported - names
    assert not undocumented, f"exported but not in docs/operations.md: {sorted(undocumented)}"
