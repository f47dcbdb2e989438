"""The engine's Prometheus metrics: one ``prometheus_client`` registry per ``Metrics``.

Every metric is a typed attribute, so a misspelt name is an ``AttributeError`` rather than a
new, silently empty series. Labelled counters are created for every known label value up
front: a fresh scrape already shows each series at 0 (alerting on ``rate()`` needs that).
Gauges that describe current state (open alarms, active trips, queue depth, broker link) are
read at scrape time through ``bind_gauges``; the open-alarm counts come from one GROUP BY, so a
scrape costs a constant number of store queries however many alarms there are.

``Metrics`` implements ``alerts.metrics.AlertMetrics`` (the alerts package reports through it
without importing this module). The table in docs/operations.md lists every metric; a test
checks that a scrape exports each one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from alerts.lifecycle import AlarmStatus
from alerts.metrics import ERROR_STAGES, SKIP_REASONS, TRANSITIONS, WEBHOOK_RESULTS
from rules.events import AlarmType
from telemetry.models import DeadLetterReason

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
# Seconds from receipt to evaluation: the detection deadline is 2 s, a backlog is minutes.
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000)  # batch_max is 5,000
# The statuses ``cargowatch_open_alarms`` reports: alarms still waiting for the desk.
UNRESOLVED = (AlarmStatus.OPEN.value, AlarmStatus.ACKNOWLEDGED.value)

_T = TypeVar("_T")
OpenAlarms = Callable[[], Mapping[tuple[str, str], int]]


class Metrics:
    """Counters and histograms fed by the pipeline, the alarm service, the webhook sender and
    the runtime's loops; state gauges bound with :meth:`bind_gauges`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # -- ingest ---------------------------------------------------------------------------
        self.messages_in = Counter(
            "cargowatch_messages_in", "MQTT messages taken from the broker", registry=r
        )
        self.dead_letters = Counter(
            "cargowatch_dead_letters",
            "Rejected messages, by reason",
            ["reason"],
            registry=r,
        )
        self.fixes_stored = Counter("cargowatch_fixes_stored", "New fixes stored", registry=r)
        self.lock_events_stored = Counter(
            "cargowatch_lock_events_stored", "New lock events stored", registry=r
        )
        self.duplicates = Counter(
            "cargowatch_duplicates", "Duplicate fixes and lock events skipped", registry=r
        )
        self.batch_size = Histogram(
            "cargowatch_batch_size", "Messages per ingest batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.parse_seconds = Histogram(
            "cargowatch_parse_seconds",
            "Validation time per batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_write_seconds = Histogram(
            "cargowatch_store_write_seconds",
            "Store write time per batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rules_seconds = Histogram(
            "cargowatch_rules_seconds",
            "Rule evaluation and alarm handling time per batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ingest_lag_seconds = Histogram(
            "cargowatch_ingest_lag_seconds",
            "Receipt to evaluation, oldest message of each batch",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.last_batch_lag_seconds = Gauge(
            "cargowatch_last_batch_lag_seconds",
            "Receipt to evaluation, oldest message of the last batch",
            registry=r,
        )
        # -- failures that were logged and survived -------------------------------------------
        self.store_errors = Counter(
            "cargowatch_store_errors",
            "Batches the store refused (kept unacknowledged and retried)",
            registry=r,
        )
        self.rule_errors = Counter(
            "cargowatch_rule_errors",
            "Batches the rule engine failed on (telemetry stored, not evaluated)",
            registry=r,
        )
        self.tick_errors = Counter(
            "cargowatch_tick_errors", "Failed wall-clock rule passes", registry=r
        )
        # -- alarms and webhooks (alerts.metrics.AlertMetrics) --------------------------------
        self.alarms_raised = Counter(
            "cargowatch_alarms_raised", "Alarms raised, by type", ["type"], registry=r
        )
        self.alarm_transitions = Counter(
            "cargowatch_alarm_transitions",
            "Alarm state changes by the desk or a missed deadline, by kind",
            ["kind"],
            registry=r,
        )
        self.alarm_events_skipped = Counter(
            "cargowatch_alarm_events_skipped",
            "Engine events that changed nothing on purpose, by reason",
            ["reason"],
            registry=r,
        )
        self.alerts_errors = Counter(
            "cargowatch_alerts_errors",
            "Failures in alarm handling, escalation and webhook delivery, by stage",
            ["stage"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "cargowatch_webhook_deliveries",
            "Outcomes of webhook deliveries, by result",
            ["result"],
            registry=r,
        )
        for counter, values in (
            (self.dead_letters, [str(v) for v in DeadLetterReason]),
            (self.alarms_raised, [str(v) for v in AlarmType]),
            (self.alarm_transitions, TRANSITIONS),
            (self.alarm_events_skipped, SKIP_REASONS),
            (self.alerts_errors, ERROR_STAGES),
            (self.webhook_deliveries, WEBHOOK_RESULTS),
        ):
            for value in values:
                counter.labels(value)
        self._state: _StateCollector | None = None

    # -- alerts.metrics.AlertMetrics ----------------------------------------------------------
    def alarm_raised(self, alarm_type: str) -> None:
        self.alarms_raised.labels(alarm_type).inc()

    def alarm_transition(self, kind: str) -> None:
        self.alarm_transitions.labels(kind).inc()

    def alarm_event_skipped(self, reason: str) -> None:
        self.alarm_events_skipped.labels(reason).inc()

    def alerts_error(self, stage: str) -> None:
        self.alerts_errors.labels(stage).inc()

    def webhook_result(self, result: str) -> None:
        self.webhook_deliveries.labels(result).inc()

    # -- state read at scrape time ------------------------------------------------------------
    def bind_gauges(
        self,
        *,
        open_alarms: OpenAlarms,
        active_trips: Callable[[], int],
        queue_batches: Callable[[], int],
        mqtt_connected: Callable[[], bool],
    ) -> None:
        """Report these at every scrape. ``open_alarms`` returns alarm counts by
        (type, status) — one grouped store query; statuses other than open and
        acknowledged are ignored. Binding again replaces the previous functions."""
        if self._state is not None:
            self.registry.unregister(self._state)
        self._state = _StateCollector(open_alarms, active_trips, queue_batches, mqtt_connected)
        self.registry.register(self._state)

    # -- output -------------------------------------------------------------------------------
    def render(self) -> bytes:
        """The Prometheus text exposition (serve with ``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value, 0 when absent (``cargowatch_messages_in_total``)."""
        return self.registry.get_sample_value(name, labels) or 0.0


class _StateCollector(Collector):
    """Gauges computed when scraped. A failing source is logged and left out of that scrape:
    a store outage must not take the ingest metrics down with it."""

    def __init__(
        self,
        open_alarms: OpenAlarms,
        active_trips: Callable[[], int],
        queue_batches: Callable[[], int],
        mqtt_connected: Callable[[], bool],
    ) -> None:
        self._open_alarms = open_alarms
        self._active_trips = active_trips
        self._queue_batches = queue_batches
        self._mqtt_connected = mqtt_connected

    def describe(self) -> Iterable[Metric]:
        return []  # the families depend on the sources; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        open_alarms = _read("cargowatch_open_alarms", self._open_alarms)
        if open_alarms is not None:
            family = GaugeMetricFamily(
                "cargowatch_open_alarms",
                "Alarms waiting for the desk, by type and status",
                labels=["type", "status"],
            )
            counts = {(str(t), str(s)): n for (t, s), n in open_alarms.items() if s in UNRESOLVED}
            for known in AlarmType:
                for status in UNRESOLVED:
                    counts.setdefault((str(known), status), 0)
            for labels, n in sorted(counts.items()):
                family.add_metric(list(labels), float(n))
            yield family
        for name, help_text, source in (
            ("cargowatch_active_trips", "Trips the engine is watching", self._active_trips),
            (
                "cargowatch_ingest_queue_batches",
                "Received batches waiting for the pipeline",
                self._queue_batches,
            ),
            (
                "cargowatch_mqtt_connected",
                "1 while connected to the broker, else 0",
                self._mqtt_connected,
            ),
        ):
            value = _read(name, source)
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=float(value))


def _read(name: str, source: Callable[[], _T]) -> _T | None:
    try:
        return source()
    except Exception:
        log.exception("metric %s could not be read", name)
        return None
