"""What the alerts package counts, as a Protocol the composition root implements.

``alerts`` must not import ``cargowatch`` (the dependency runs the other way), so the alarm
service and the webhook sender report through this small interface; ``cargowatch.metrics``
turns the calls into Prometheus counters. Label values are the strings listed below, so the
exporter can create every series up front (a fresh scrape shows them at 0).
"""

from __future__ import annotations

import collections
from typing import Final, Protocol

# ``alarm_transition`` kinds: one per recorded state change made by the desk or a deadline.
TRANSITIONS: Final = ("acknowledged", "resolved", "escalated")
# ``alarm_event_skipped`` reasons: an engine event that changed nothing, on purpose.
SKIP_REASONS: Final = (
    "duplicate_alarm",  # the episode already has its alarm (restart, replayed backlog)
    "unmatched_episode_end",  # an episode ended that never raised an alarm
    "duplicate_milestone",  # the milestone was recorded before
    "unknown_trip",  # a status change for a trip the store does not have
    "trip_already_ended",  # the API completed or cancelled the trip first
    "duplicate_geofence_event",  # the geofence entry/exit was recorded before
    "unmatched_withdrawal",  # a withdrawn alarm that was never raised
)
# ``alerts_error`` stages: something failed and was logged; the rest carried on.
ERROR_STAGES: Final = (
    "event",  # one engine event could not be applied (skipped, the batch went on)
    "escalation",  # one alarm could not be escalated this pass
    "escalation_loop",  # a whole escalation pass failed (retried with back-off)
    "conflict",  # an alarm changed concurrently twice in a row (409 to the caller)
    "webhook_enqueue",  # the change is stored but its webhook was not queued
    "webhook_loop",  # a webhook dispatch pass or an outcome could not be stored
)
# ``webhook_result`` results: the outcome of one outbox row in one pass.
WEBHOOK_RESULTS: Final = (
    "delivered",  # 2xx
    "failed",  # an attempt failed; retried later with back-off
    "dead",  # failed past the retry window (or the webhook was deleted): given up
    "deferred",  # the receiver is paused (circuit breaker): moved on without an attempt
)


class AlertMetrics(Protocol):
    """Receives the counts of ``AlarmService`` and ``WebhookSender``."""

    def alarm_raised(self, alarm_type: str) -> None: ...

    def alarm_transition(self, kind: str) -> None: ...

    def alarm_event_skipped(self, reason: str) -> None: ...

    def alerts_error(self, stage: str) -> None: ...

    def webhook_result(self, result: str) -> None: ...


class NullAlertMetrics:
    """Counts nothing: the default when no exporter is wired in."""

    def alarm_raised(self, alarm_type: str) -> None:
        pass

    def alarm_transition(self, kind: str) -> None:
        pass

    def alarm_event_skipped(self, reason: str) -> None:
        pass

    def alerts_error(self, stage: str) -> None:
        pass

    def webhook_result(self, result: str) -> None:
        pass


class CountingAlertMetrics:
    """Counts in memory by (method, label): for tests, benchmarks and embedding without
    Prometheus. ``count("alarm_raised", "LOCK_TAMPER")``."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def count(self, method: str, label: str) -> int:
        return self.counts[(method, label)]

    def alarm_raised(self, alarm_type: str) -> None:
        self.counts[("alarm_raised", alarm_type)] += 1

    def alarm_transition(self, kind: str) -> None:
        self.counts[("alarm_transition", kind)] += 1

    def alarm_event_skipped(self, reason: str) -> None:
        self.counts[("alarm_event_skipped", reason)] += 1

    def alerts_error(self, stage: str) -> None:
        self.counts[("alerts_error", stage)] += 1

    def webhook_result(self, result: str) -> None:
        self.counts[("webhook_result", result)] += 1
