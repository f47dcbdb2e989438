"""AlarmService: engine events in; stored alarms, trip events, live events and webhooks out.

One object is shared by the engine thread (``handle``), the API threads (``ack``,
``resolve``, ``get``) and the escalation loop (``run``). Alarm changes are optimistic
(``version``) in the store and serialised by a lock in the process, so the webhooks and
live events of one alarm are enqueued in the order of its transitions.

Everything the service decides later (deadlines, escalations) is derived from stored
documents, so a restarted service carries on where the previous one stopped.

About 630 lines on purpose: every alarm transition and the lock that orders them in one class;
the rules of a transition live in ``alerts.lifecycle``, deadlines in ``alerts.deadlines``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from alerts import escalation, lifecycle
from alerts.deadlines import Deadline, merge_sla, validate_sla
from alerts.errors import AlarmNotFound, ConflictError
from alerts.live import LiveHub
from alerts.metrics import AlertMetrics, NullAlertMetrics
from alerts.outbox import WEBHOOK_EVENTS, enqueue_event, jsonable, stable_event_id
from alerts.positions import position_events
from alerts.render import iso, render_alarm
from core.clock import Clock
from core.errors import Unavailable
from rules import PositionBatch
from rules.events import (
    AlarmSignal,
    AlarmWithdrawn,
    EngineEvent,
    EpisodeEnded,
    GeofenceTransition,
    Milestone,
    PositionUpdate,
    TripStatus,
    TripStatusChanged,
)
from telemetry.errors import Conflict
from telemetry.store.base import Doc, Store

logger = logging.getLogger(__name__)

_TERMINAL = {TripStatus.COMPLETED.value, TripStatus.CANCELLED.value}
_STATUS_TIME = {
    TripStatus.ACTIVE.value: "activated_at",
    TripStatus.COMPLETED.value: "completed_at",
    TripStatus.CANCELLED.value: "cancelled_at",
}
_LOOP_BACKOFF_CAP_S = 30.0

Live = list[dict[str, Any]]


class AlarmService:
    """Raises, transitions and escalates alarms; records milestones and trip status."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        hub: LiveHub,
        *,
        default_sla: Mapping[str, Any] | None = None,
        metrics: AlertMetrics | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._hub = hub
        self._default_sla = validate_sla(default_sla) if default_sla else None
        self._lock = threading.RLock()
        self.metrics: AlertMetrics = metrics or NullAlertMetrics()

    # -- engine events ------------------------------------------------------------------------
    def handle(self, events: Sequence[EngineEvent]) -> list[Doc]:
        """Apply one batch of engine events; returns the stored documents of new alarms.

        A bad event is logged and counted (``alerts_error("event")``); the rest of the
        batch goes on. Live events are published once, after the batch's commit.
        """
        with self.locked(), self._store.unit_of_work():
            created, live = self.stage(events)
        self.publish(live)
        return created

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the service's lock: a caller that wraps ``stage`` in a wider transaction
        takes it before opening that transaction (the order every path uses)."""
        with self._lock:
            yield

    def stage(
        self, events: Sequence[EngineEvent], positions: PositionBatch | None = None
    ) -> tuple[list[Doc], Live]:
        """Record engine events in the caller's unit of work, publishing nothing: returns
        the new alarms and the live events to :meth:`publish` once that work committed.
        ``positions``: a batch's positions in columns (an engine built with
        ``position_events=False``), for the live feed like PositionUpdates.
        Each event is a savepoint, all of the event or none, so a bad one is skipped and
        the rest kept; an unavailable store fails the whole call (the caller retries)."""
        created: list[Doc] = []
        live: Live = []
        batch = _BatchLookups(self._store, self._default_sla)
        if self._hub.subscriber_count > 0:
            live.extend(_position_event(e) for e in events if isinstance(e, PositionUpdate))
            if positions is not None:
                live.extend(position_events(positions))
        stored = [e for e in events if not isinstance(e, PositionUpdate)]
        if not stored:
            # most of a busy stage's batches raise nothing: no savepoint (two round trips)
            return created, live
        with self._lock, self._store.unit_of_work():
            for event in stored:
                try:
                    with self._store.unit_of_work():
                        self._apply(event, batch, live, created)
                except Unavailable:
                    raise  # the database failed, not the event: the whole batch is retried
                except Exception:
                    self.metrics.alerts_error("event")
                    logger.exception("could not handle engine event %r", event)
        return created, live

    def publish(self, live: Live) -> None:
        """Publish live events of work that committed."""
        self._publish(live)

    def _apply(
        self, event: EngineEvent, batch: _BatchLookups, live: Live, created: list[Doc]
    ) -> None:
        if isinstance(event, AlarmSignal):
            doc = self._raise(event, batch, live)
            if doc is not None:
                created.append(doc)
        elif isinstance(event, EpisodeEnded):
            self._end_episode(event, live)
        elif isinstance(event, Milestone):
            self._milestone(event, batch, live)
        elif isinstance(event, GeofenceTransition):
            self._geofence(event, batch, live)
        elif isinstance(event, AlarmWithdrawn):
            self._withdraw(event, live)
        elif isinstance(event, TripStatusChanged):
            self._trip_status(event, live)
        else:
            raise TypeError(f"not an engine event: {type(event).__name__}")

    def _raise(self, signal: AlarmSignal, batch: _BatchLookups, live: Live) -> Doc | None:
        now = self._clock.now_ms()
        deadline = batch.deadline(signal.shipper, signal.trip_id, signal.severity.value)
        doc = lifecycle.new_alarm(
            signal, raised_at=now, deadline=deadline, details=jsonable(signal.details)
        )
        try:
            self._store.insert_alarm(doc)
        except Conflict:
            # The episode was seen before (engine restart, replayed backlog): one alarm only.
            self.metrics.alarm_event_skipped("duplicate_alarm")
            return None
        entry = lifecycle.raised_entry(doc)
        self._store.add_alarm_history(doc["alarm_id"], entry)
        self.metrics.alarm_raised(str(doc["type"]))
        self._emit(
            "alarm.raised",
            doc,
            render_alarm(doc, [entry]),
            live,
            hooks=batch.hooks(signal.shipper),
        )
        return doc

    def _end_episode(self, event: EpisodeEnded, live: Live) -> None:
        alarm_id = lifecycle.alarm_id_for(event.trip_id, event.type.value, event.episode)
        details = jsonable(event.details)
        entries: list[Doc] = []

        def apply(doc: Doc) -> Doc | None:
            if "episode_ended_at" in (doc.get("details") or {}):
                return None  # re-emitted end: already recorded
            new, entry = lifecycle.end_episode(
                doc, event, details=details, now=self._clock.now_ms()
            )
            entries[:] = [entry]
            return new

        try:
            new = self._update(alarm_id, apply)
        except AlarmNotFound:
            self.metrics.alarm_event_skipped("unmatched_episode_end")
            logger.debug("episode end without an alarm: %s", alarm_id)
            return
        if new is None:
            return
        self._store.add_alarm_history(alarm_id, entries[0])
        view = render_alarm(new, self._store.alarm_history(alarm_id))
        self._emit("alarm.episode_ended", new, view, live)

    def _milestone(self, event: Milestone, batch: _BatchLookups, live: Live) -> None:
        event_id = stable_event_id(
            event.trip_id, "milestone", event.kind.value, event.stop_id, event.ts
        )
        # A trip has a handful of milestones: reading them is cheap and makes a re-emitted
        # milestone (engine restart, replayed backlog) a no-op instead of a second record.
        if any(e.get("event_id") == event_id for e in self._store.trip_events(event.trip_id)):
            self.metrics.alarm_event_skipped("duplicate_milestone")
            return
        record = {
            "kind": "milestone",
            "milestone": event.kind.value,
            "ts": int(event.ts),
            "device_id": event.device_id,
            "stop_id": event.stop_id,
            "lat": event.lat,
            "lon": event.lon,
            "details": jsonable(event.details),
            "recorded_at": self._clock.now_ms(),
            "event_id": event_id,
        }
        self._store.add_trip_event(event.trip_id, record)
        data = {
            "trip_id": event.trip_id,
            "milestone": event.kind.value,
            "ts": iso(event.ts),
            "device_id": event.device_id,
            "stop_id": event.stop_id,
            "lat": event.lat,
            "lon": event.lon,
            "details": record["details"],
        }
        live.append({"type": "trip.milestone", "shipper": event.shipper, "data": data})
        self._enqueue(
            event.shipper,
            "trip.milestone",
            data,
            order_key=f"trip:{event.trip_id}",
            event_id=event_id,
            hooks=batch.hooks(event.shipper),
        )

    def _geofence(self, event: GeofenceTransition, batch: _BatchLookups, live: Live) -> None:
        """``geofence.entered`` / ``geofence.exited``: a trip event (replay, track), the live
        feed and the shipper's webhooks, once per event id (a re-emission after a restart or
        a rewind is recognised by its id)."""
        change = event.change.value
        event_id = stable_event_id(
            event.trip_id, "geofence", event.geofence_id, change, event.device_id, event.ts
        )
        if any(e.get("event_id") == event_id for e in self._store.trip_events(event.trip_id)):
            self.metrics.alarm_event_skipped("duplicate_geofence_event")
            return
        geofence = {"geofence_id": event.geofence_id, "name": event.name, "kind": event.kind}
        self._store.add_trip_event(
            event.trip_id,
            {
                "kind": "geofence",
                "change": change,
                "ts": int(event.ts),
                "device_id": event.device_id,
                "geofence_id": event.geofence_id,
                "name": event.name,
                "geofence_kind": event.kind,
                "lat": event.lat,
                "lon": event.lon,
                "recorded_at": self._clock.now_ms(),
                "event_id": event_id,
            },
        )
        data = {
            "trip_id": event.trip_id,
            "device_id": event.device_id,
            "geofence": geofence,
            "ts": iso(event.ts),
            "lat": event.lat,
            "lon": event.lon,
        }
        event_type = f"geofence.{change}"
        live.append({"type": event_type, "shipper": event.shipper, "data": data})
        self._enqueue(
            event.shipper,
            event_type,
            data,
            order_key=f"trip:{event.trip_id}",
            event_id=event_id,
            hooks=batch.hooks(event.shipper),
        )

    def _withdraw(self, event: AlarmWithdrawn, live: Live) -> None:
        """Late data showed the alarm false (a LATE_ARRIVAL whose stop was entered in time):
        resolved by ``engine`` as ``false_alarm`` with ``details.withdrawn``, history and
        webhooks as for a desk's resolve. An alarm already resolved stays as the desk left it."""
        alarm_id = lifecycle.alarm_id_for(event.trip_id, event.type.value, event.episode)
        entries: list[Doc] = []

        def apply(doc: Doc) -> Doc | None:
            if doc["status"] == lifecycle.AlarmStatus.RESOLVED:
                return None
            new, made = lifecycle.resolve(
                doc,
                by=lifecycle.ENGINE,
                cause=lifecycle.Cause.FALSE_ALARM.value,
                action="withdrawn: late data shows the condition did not occur",
                feedback=None,
                now=self._clock.now_ms(),
            )
            new["details"] = {
                **(doc.get("details") or {}),
                "withdrawn": True,
                "withdrawal": jsonable(event.details),
            }
            entries[:] = made
            return new

        try:
            new = self._update(alarm_id, apply)
        except AlarmNotFound:
            self.metrics.alarm_event_skipped("unmatched_withdrawal")
            return
        if new is None:
            return
        for entry in entries:
            self._store.add_alarm_history(alarm_id, entry)
            self.metrics.alarm_transition(str(entry["action"]))
        history = self._store.alarm_history(alarm_id)
        if len(entries) == 2:  # resolved straight from open: the implied acknowledge first
            mid = {**new, "status": entries[0]["to"], "resolved_at": None}
            mid.update(resolved_by=None, resolution=None)
            self._emit("alarm.acknowledged", mid, render_alarm(mid, history[:-1]), live)
        self._emit("alarm.resolved", new, render_alarm(new, history), live)

    def _trip_status(self, event: TripStatusChanged, live: Live) -> None:
        status = event.status.value
        trip = self._store.get_trip(event.trip_id)
        if trip is None:
            self.metrics.alarm_event_skipped("unknown_trip")
            logger.warning("status %s for unknown trip %s", status, event.trip_id)
            return
        old = trip.get("status")
        if old == status:
            return  # re-emitted change
        if old in _TERMINAL:
            # The API completed or cancelled the trip first; the desk's word stands.
            self.metrics.alarm_event_skipped("trip_already_ended")
            logger.warning("trip %s is %s; ignoring %s", event.trip_id, old, status)
            return
        trip = dict(trip)
        trip["status"] = status
        if status in _STATUS_TIME:
            trip[_STATUS_TIME[status]] = int(event.ts)
        self._store.put_trip(trip)
        self._store.add_trip_event(
            event.trip_id,
            {
                "kind": "status",
                "status": status,
                "from": old,
                "ts": int(event.ts),
                "reason": event.reason,
                "recorded_at": self._clock.now_ms(),
            },
        )
        data = {
            "trip_id": event.trip_id,
            "status": status,
            "from": old,
            "ts": iso(event.ts),
            "reason": event.reason,
        }
        live.append({"type": "trip.status", "shipper": event.shipper, "data": data})

    # -- desk actions -------------------------------------------------------------------------
    # ``by`` is who acts (the API key's name), ``key_id`` the key: both in every entry.
    def ack(
        self, alarm_id: str, *, by: str, note: str | None = None, key_id: str | None = None
    ) -> Doc:
        """Acknowledge an open alarm; returns its view. ``ValidationError``,
        ``AlarmNotFound``, ``TransitionError`` (not open) or ``ConflictError``."""
        lifecycle.check_actor(by)
        lifecycle.check_text("note", note)
        return self._desk_action(
            alarm_id,
            lambda doc, now: lifecycle.acknowledge(doc, by=by, note=note, now=now, key_id=key_id),
        )

    def assign(self, alarm_id: str, *, to: str | None, by: str, key_id: str | None = None) -> Doc:
        """Make the alarm ``to``'s (None: nobody's); the status does not change."""
        return self._desk_action(
            alarm_id,
            lambda doc, now: lifecycle.assign(doc, to=to, by=by, now=now, key_id=key_id),
        )

    def add_note(
        self,
        alarm_id: str,
        *,
        text: str,
        contact: str | None,
        outcome: str | None,
        by: str,
        key_id: str | None = None,
    ) -> Doc:
        """Log a call (history only; any status); returns the alarm's view."""
        live: Live = []
        with self._lock, self._store.unit_of_work():
            doc = self._store.get_alarm(alarm_id)
            if doc is None:
                raise AlarmNotFound("no such alarm", alarm_id=alarm_id)
            entry = lifecycle.note_entry(
                doc,
                text=text,
                contact=contact,
                outcome=outcome,
                by=by,
                now=self._clock.now_ms(),
                key_id=key_id,
            )
            self._store.add_alarm_history(alarm_id, entry)
            view = render_alarm(doc, self._store.alarm_history(alarm_id))
            self._emit(f"{lifecycle.kind_of(doc)}.note", doc, view, live)
        self._publish(live)
        return view

    def feedback(
        self,
        alarm_id: str,
        *,
        verdict: str,
        comment: str | None,
        by: str,
        key_id: str | None = None,
    ) -> Doc:
        """The shipper's verdict on a resolved alarm (``TransitionError`` before)."""
        return self._desk_action(
            alarm_id,
            lambda doc, now: lifecycle.give_feedback(
                doc, verdict=verdict, comment=comment, by=by, now=now, key_id=key_id
            ),
        )

    def report_exception(
        self,
        trip: Doc,
        *,
        type: str,
        description: str,
        stop_id: str | None = None,
        severity: str = "major",
        by: str,
        key_id: str | None = None,
    ) -> Doc:
        """Record an exception reported by people on ``trip`` (a stored trip document):
        deadlines of the shipper's SLA for ``severity``, ``exception.created`` to the live
        feed and the shipper's webhooks; returns its view."""
        live: Live = []
        batch = _BatchLookups(self._store, self._default_sla)
        shipper = str(trip.get("shipper") or "")
        deadline = batch.deadline(shipper, str(trip["trip_id"]), severity)
        doc, entry = lifecycle.new_exception(
            trip,
            type=type,
            description=description,
            stop_id=stop_id,
            severity=severity,
            by=by,
            key_id=key_id,
            now=self._clock.now_ms(),
            deadline=deadline,
        )
        with self._lock, self._store.unit_of_work():
            self._store.insert_alarm(doc)
            self._store.add_alarm_history(doc["alarm_id"], entry)
            view = render_alarm(doc, [entry])
            self._emit("exception.created", doc, view, live)
        self._publish(live)
        return view

    def resolve(
        self,
        alarm_id: str,
        *,
        by: str,
        cause: str,
        action: str | None = None,
        feedback: str | None = None,
        key_id: str | None = None,
    ) -> Doc:
        """Resolve an open or acknowledged alarm (an open one is acknowledged implicitly,
        recorded as its own transition); returns its view."""
        lifecycle.check_actor(by)
        lifecycle.check_cause(cause)
        lifecycle.check_text("action", action)
        lifecycle.check_text("feedback", feedback)
        return self._desk_action(
            alarm_id,
            lambda doc, now: lifecycle.resolve(
                doc,
                by=by,
                cause=cause,
                action=action,
                feedback=feedback,
                now=now,
                key_id=key_id,
            ),
        )

    def _desk_action(self, alarm_id: str, step: Callable[[Doc, int], tuple[Doc, list[Doc]]]) -> Doc:
        live: Live = []
        entries: list[Doc] = []

        def apply(doc: Doc) -> Doc:
            new, made = step(doc, self._clock.now_ms())
            entries[:] = made
            return new

        # One unit of work: the transition, its history and its webhooks are kept together
        # or not at all (a desk retrying after a 503 then finds the alarm as it was).
        with self._lock, self._store.unit_of_work():
            new = self._update(alarm_id, apply)
            assert new is not None
            for entry in entries:
                self._store.add_alarm_history(alarm_id, entry)
                self.metrics.alarm_transition(str(entry["action"]))
            history = self._store.alarm_history(alarm_id)
            view = render_alarm(new, history)
            # an exception's handling is on the live feed as exception.*; its webhook is
            # exception.created only (contract v2 §6)
            kind = lifecycle.kind_of(new)
            if len(entries) == 2:
                # Resolved straight from open: receivers first see the implied acknowledge.
                mid = {**new, "status": entries[0]["to"], "resolved_at": None}
                mid.update(resolved_by=None, resolution=None)
                self._emit(f"{kind}.acknowledged", mid, render_alarm(mid, history[:-1]), live)
            self._emit(f"{kind}.{entries[-1]['action']}", new, view, live)
        self._publish(live)
        return view

    # -- deadlines ----------------------------------------------------------------------------
    def escalate_due(self) -> list[Doc]:
        """Escalate every alarm with a missed, not yet escalated deadline; returns the
        updated documents. One alarm's failure does not stop the others.

        Safe with several processes on one database: the change is a compare-and-set on
        the alarm's ``version``, so of two passes racing for a deadline one writes and the
        other re-reads it as escalated and does nothing. Each alarm's new document, history
        and outbox rows are one unit of work: a failure stores none of them (the next pass
        escalates it) rather than a flag without its event."""
        now = self._clock.now_ms()
        live: Live = []
        escalated: list[Doc] = []
        for doc in self._store.alarms_due(now):
            mine: Live = []
            try:
                with self._lock, self._store.unit_of_work():
                    new = self._escalate(doc, now, mine)
            except Exception:
                self.metrics.alerts_error("escalation")
                logger.exception("could not escalate alarm %s", doc.get("alarm_id"))
                continue
            live.extend(mine)  # published only once the escalation is committed
            if new is not None:
                escalated.append(new)
        self._publish(live)
        return escalated

    def _escalate(self, doc: Doc, now: int, live: Live) -> Doc | None:
        alarm_id = doc["alarm_id"]
        missed: list[str] = []
        entries: list[Doc] = []

        def apply(current: Doc) -> Doc | None:
            missed[:] = escalation.missed_deadlines(current, now)
            if not missed:
                return None
            new, made = escalation.escalate(current, missed, now=now)
            entries[:] = made
            return new

        new = self._update(alarm_id, apply, first=doc)
        if new is None:
            return None
        for entry in entries:
            self._store.add_alarm_history(alarm_id, entry)
        view = render_alarm(new, self._store.alarm_history(alarm_id))
        for deadline in missed:
            self.metrics.alarm_transition("escalated")
            self._emit(
                f"{lifecycle.kind_of(new)}.escalated",
                new,
                {**view, "deadline": deadline},
                live,
                event_key=f"escalated:{deadline}",
            )
        return new

    async def run(self, interval_s: float = 1.0) -> None:
        """Escalate on the injected clock every ``interval_s`` until cancelled; store errors
        are logged and retried with a back-off."""
        delay = interval_s
        while True:
            try:
                await asyncio.to_thread(self.escalate_due)
                delay = interval_s
            except Exception:
                delay = min(max(delay, interval_s) * 2, _LOOP_BACKOFF_CAP_S)
                self.metrics.alerts_error("escalation_loop")
                logger.exception("escalation pass failed; retrying in %.3gs", delay)
            await self._clock.sleep(delay)

    # -- reads --------------------------------------------------------------------------------
    def get(self, alarm_id: str) -> Doc:
        """The view of one alarm with its history; ``AlarmNotFound`` when missing."""
        doc = self._store.get_alarm(alarm_id)
        if doc is None:
            raise AlarmNotFound("no such alarm", alarm_id=alarm_id)
        return render_alarm(doc, self._store.alarm_history(alarm_id))

    # -- plumbing -----------------------------------------------------------------------------
    def _update(
        self, alarm_id: str, apply: Callable[[Doc], Doc | None], *, first: Doc | None = None
    ) -> Doc | None:
        """Read, change (``apply`` returns the next document or None for "nothing to do")
        and write with the optimistic version; re-read and retry once on a conflict."""
        doc = first
        for _ in range(2):
            if doc is None:
                doc = self._store.get_alarm(alarm_id)
                if doc is None:
                    raise AlarmNotFound("no such alarm", alarm_id=alarm_id)
            new = apply(doc)
            if new is None:
                return None
            if self._store.update_alarm(new, int(doc["version"])):
                return new
            doc = None
        self.metrics.alerts_error("conflict")
        raise ConflictError("the alarm was changed concurrently; try again", alarm_id=alarm_id)

    def _emit(
        self,
        event_type: str,
        doc: Doc,
        data: Doc,
        live: Live,
        *,
        hooks: Sequence[Doc] | None = None,
        event_key: str | None = None,
    ) -> None:
        """Queue the live event and, for webhook event types, the outbox rows."""
        shipper = doc.get("shipper")
        live.append({"type": event_type, "shipper": shipper, "data": data})
        if event_type in WEBHOOK_EVENTS and shipper:
            self._enqueue(
                shipper,
                event_type,
                data,
                order_key=f"alarm:{doc['alarm_id']}",
                event_id=stable_event_id(doc["alarm_id"], event_key or event_type),
                hooks=hooks,
            )

    def _enqueue(
        self,
        shipper: str,
        event_type: str,
        data: Doc,
        *,
        order_key: str,
        event_id: str,
        hooks: Sequence[Doc] | None,
    ) -> None:
        try:
            enqueue_event(
                self._store,
                self._clock,
                shipper=shipper,
                type=event_type,
                data=data,
                order_key=order_key,
                event_id=event_id,
                hooks=hooks,
            )
        except Conflict:
            pass  # the same event (same id) was enqueued before: nothing to add
        except Unavailable:
            raise  # the database failed: the caller's unit of work is retried as a whole
        except Exception:
            # A bad event (a bug) must not turn an ack into an error for the desk; counted
            # so an operator sees it.
            self.metrics.alerts_error("webhook_enqueue")
            logger.exception("could not enqueue %s %s", event_type, event_id)

    def _publish(self, live: Live) -> None:
        if not live:
            return
        try:
            self._hub.publish_many(live)
        except Exception:
            logger.exception("live publish failed")


class _BatchLookups:
    """Per-batch cache of shipper SLAs, trip SLAs and webhook subscriptions."""

    def __init__(self, store: Store, default_sla: Mapping[str, Any] | None) -> None:
        self._store = store
        self._default_sla = default_sla
        self._deadlines: dict[tuple[str, str], dict[str, Deadline]] = {}
        self._hooks: dict[str, list[Doc]] = {}

    def deadline(self, shipper: str, trip_id: str, severity: str) -> Deadline:
        key = (shipper, trip_id)
        if key not in self._deadlines:
            shipper_doc = self._store.get_shipper(shipper) or {}
            trip_doc = self._store.get_trip(trip_id) or {}
            self._deadlines[key] = merge_sla(
                self._default_sla, shipper_doc.get("sla"), trip_doc.get("sla")
            )
        return self._deadlines[key][severity]

    def hooks(self, shipper: str) -> list[Doc]:
        if shipper not in self._hooks:
            self._hooks[shipper] = self._store.list_webhooks(shipper)
        return self._hooks[shipper]


def _position_event(event: PositionUpdate) -> dict[str, Any]:
    return {
        "type": "position",
        "shipper": event.shipper,
        "data": {
            "device_id": event.device_id,
            "trip_id": event.trip_id,
            "ts": iso(event.ts),
            "lat": event.lat,
            "lon": event.lon,
            "speed_kmh": event.speed_kmh,
            "state": event.state,
            "distance_to_route_m": event.distance_to_route_m,
        },
    }
