"""Late data: a journal of processed messages plus state checkpoints, and the rewind.

When a batch brings a message older than what its device already processed (a
store-and-forward backlog after a live fix), or older than its trip's state by more than
``CROSS_DEVICE_SKEW_MS`` (one device's backlog while another device of the truck kept
reporting), the trip is re-run in event-time order from the newest snapshot taken before
that time: its state row (and its devices' rows and stop progress) is restored, the
journal's messages of the trip since the snapshot are merged with the late ones, and the
merge is run again. Events already emitted are suppressed by their keys; every new alarm
is ``detected_late``; episodes that were open before and no longer exist are ended with
``details.superseded``. All late trips of a batch are re-run together in one run (rounds
keep each trip in its own event-time order), and the journal is read in one pass.

Snapshots come from periodic whole-table checkpoints (a memcpy of the state matrices every
``interval_ms`` of wall clock) and from the trip's own (re)configuration or restore. The
journal keeps the messages since the oldest checkpoint, bounded by ``max_rows`` and
``max_checkpoints``. Data older than the window is re-run from stored history when the
engine has a ``history`` callback (rules/backfill.py); without one it falls back to being
applied on the current state in its own event-time order (still per-device ordered, as
CONTRACT §4 requires), logged as a warning.

A late lock event that changes no event-time state (``state_free``: a tamper and the like
on a trip active before its ts) needs no rewind: it is applied directly, its alarm marked
``detected_late`` like a rewind's. Its position is the trip's last valid fix when within
``unlock_fix_max_age_s`` of its ts (either side), as for any lock event on current state.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rules.backfill import History, Start, start_state
from rules.batch import FixCols, LockCols, duplicate_mask
from rules.context import Ctx, Outcome
from rules.events import AlarmType
from rules.lifecycle import end_signal_lost, open_episodes
from rules.runner import run
from rules.state import (
    ACTIVE,
    DC,
    DEVICE_ROW,
    PLANNED,
    RC,
    TC,
    DeviceTable,
    StopProgress,
    TripTable,
)
from telemetry.models import LockEventType

__all__ = ["CROSS_DEVICE_SKEW_MS", "Journal", "Snapshot", "rewind_trips", "state_free"]

logger = logging.getLogger(__name__)

CROSS_DEVICE_SKEW_MS = 60_000
"""A message up to this much older than its trip's state (but in order for its own device)
is applied directly: two devices of one truck report with some skew, which is not late data."""

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass(slots=True)
class Chunk:
    """The messages one engine call applied (those of trips), with their trip slots."""

    seq: int
    fixes: FixCols
    ftrip: I64
    locks: LockCols
    ltrip: I64


@dataclass(slots=True)
class Snapshot:
    """A trip's event-time state before journal chunk ``chunk_seq``."""

    chunk_seq: int
    trip_row: F64
    device_rows: dict[int, F64]
    progress: StopProgress


@dataclass(slots=True)
class Checkpoint:
    chunk_seq: int
    now_ms: int
    tm: F64
    dm: F64
    gen: I64
    progress: list[StopProgress | None]


class Journal:
    """Recent messages and checkpoints of the engine state, for rewinds."""

    def __init__(
        self, interval_ms: int = 120_000, max_checkpoints: int = 16, max_rows: int = 2_000_000
    ) -> None:
        self.interval_ms = interval_ms
        self.max_checkpoints = max(1, max_checkpoints)
        self.max_rows = max_rows
        self.chunks: deque[Chunk] = deque()
        self.checkpoints: deque[Checkpoint] = deque()
        self.next_seq = 0
        self._rows = 0
        self._rows_since_checkpoint = 0

    @property
    def first_seq(self) -> int:
        """Oldest chunk still held."""
        return self.chunks[0].seq if self.chunks else self.next_seq

    def maybe_checkpoint(self, trips: TripTable, devices: DeviceTable, now_ms: int) -> None:
        """Copy the state tables when the last checkpoint is old enough (call before a batch)."""
        last = self.checkpoints[-1] if self.checkpoints else None
        due = (
            last is None
            or now_ms - last.now_ms >= self.interval_ms
            or self._rows_since_checkpoint >= self.max_rows // (2 * self.max_checkpoints)
        )
        if not due:
            return
        if last is not None and last.chunk_seq == self.next_seq:
            return  # nothing happened since
        self.checkpoints.append(
            Checkpoint(
                self.next_seq,
                now_ms,
                trips.m.copy(),
                devices.m.copy(),
                trips.gen.copy(),
                list(trips.progress),
            )
        )
        self._rows_since_checkpoint = 0
        self._trim()

    def _trim(self) -> None:
        while len(self.checkpoints) > self.max_checkpoints or (
            self._rows > self.max_rows and len(self.checkpoints) > 1
        ):
            self.checkpoints.popleft()
        oldest = self.checkpoints[0].chunk_seq if self.checkpoints else self.next_seq
        while self.chunks and self.chunks[0].seq < oldest:
            c = self.chunks.popleft()
            self._rows -= len(c.fixes) + len(c.locks)

    def append(self, fixes: FixCols, ftrip: I64, locks: LockCols, ltrip: I64) -> None:
        """Record messages applied by this call (only those of trips are kept)."""
        fk, lk = ftrip >= 0, ltrip >= 0
        if not fk.all():
            fixes, ftrip = fixes.take(fk), ftrip[fk]
        if not lk.all():
            locks, ltrip = locks.take(lk), ltrip[lk]
        n = len(fixes) + len(locks)
        if n == 0:
            return
        self.chunks.append(Chunk(self.next_seq, fixes, ftrip, locks, ltrip))
        self.next_seq += 1
        self._rows += n
        self._rows_since_checkpoint += n
        if self._rows > self.max_rows:
            self._trim()

    def snapshot_now(self, trips: TripTable, devices: DeviceTable, slot: int) -> Snapshot:
        """The trip's current state as a snapshot (taken when a trip is (re)configured)."""
        info = trips.info[slot]
        assert info is not None
        prog = trips.progress[slot]
        assert prog is not None
        return Snapshot(
            self.next_seq,
            trips.m[slot].copy(),
            {d: devices.m[d].copy() for d in info.device_slots},
            prog,
        )

    def snapshots_for(
        self, trips: TripTable, devices: DeviceTable, slots: list[int], late_ts: I64
    ) -> list[Snapshot | None]:
        """Per trip slot: the newest snapshot from before any of its messages later than its
        ``late_ts`` was applied, whose journal is still complete; None if there is none.
        One pass over the checkpoints for all slots."""
        first = self.first_seq
        sl = np.asarray(slots, dtype=np.int64)
        gens = trips.gen[sl]
        found = np.full(sl.size, -1, dtype=np.int64)
        cks = list(self.checkpoints)
        for k in range(len(cks) - 1, -1, -1):
            ck = cks[k]
            pending = np.flatnonzero((found < 0) & (sl < ck.gen.shape[0]))
            if ck.chunk_seq < first or pending.size == 0:
                break
            s = sl[pending]
            ok = (ck.gen[s] == gens[pending]) & ~(ck.tm[s, TC.LAST_TS] > late_ts[pending])
            found[pending[ok]] = k
        out: list[Snapshot | None] = []
        for i, slot in enumerate(slots):
            info = trips.info[slot]
            assert info is not None
            best: Snapshot | None = None
            created = info.created
            if (
                isinstance(created, Snapshot)
                and created.chunk_seq >= first
                and not created.trip_row[TC.LAST_TS] > late_ts[i]
            ):
                best = created
            k = int(found[i])
            if k >= 0 and (best is None or cks[k].chunk_seq > best.chunk_seq):
                ck = cks[k]
                prog = ck.progress[slot]
                if prog is not None:
                    rows = {
                        d: (ck.dm[d].copy() if d < ck.dm.shape[0] else DEVICE_ROW.copy())
                        for d in info.device_slots
                    }
                    best = Snapshot(ck.chunk_seq, ck.tm[slot].copy(), rows, prog)
            out.append(best)
        return out

    def messages_for(self, start: dict[int, int]) -> tuple[FixCols, I64, LockCols, I64]:
        """The journal's messages of the trips ``start`` maps (slot -> first chunk), with
        their slots: one pass over the chunks for all trips."""
        if not start:
            return FixCols.empty(), np.zeros(0, np.int64), LockCols.empty(), np.zeros(0, np.int64)
        cap = max(start) + 1
        seq_of = np.full(cap + 1, np.iinfo(np.int64).max)  # slots beyond cap: never
        seq_of[list(start)] = list(start.values())
        lo = min(start.values())
        fparts, ftrips, lparts, ltrips = [], [], [], []
        for c in self.chunks:
            if c.seq < lo:
                continue
            fm = c.seq >= seq_of[np.minimum(c.ftrip, cap)]
            if fm.any():
                fparts.append(c.fixes.take(fm))
                ftrips.append(c.ftrip[fm])
            lm = c.seq >= seq_of[np.minimum(c.ltrip, cap)]
            if lm.any():
                lparts.append(c.locks.take(lm))
                ltrips.append(c.ltrip[lm])
        cat = np.concatenate
        return (
            FixCols.concat(fparts),
            cat(ftrips) if ftrips else np.zeros(0, np.int64),
            LockCols.concat(lparts),
            cat(ltrips) if ltrips else np.zeros(0, np.int64),
        )


def _restore(trips: TripTable, devices: DeviceTable, slot: int, snap: Snapshot | Start) -> None:
    trips.m[slot] = snap.trip_row
    for d, row in snap.device_rows.items():
        devices.m[d] = row
    trips.progress[slot] = snap.progress


def rewind_trips(
    ctx: Ctx,
    journal: Journal,
    slots: I64,
    fixes: FixCols,
    ftrip: I64,
    locks: LockCols,
    ltrip: I64,
    history: History | None = None,
) -> tuple[Outcome, npt.NDArray[np.bool_], npt.NDArray[np.bool_], list[int]]:
    """Re-run the late trips ``slots`` with this batch's messages of theirs (``fixes`` /
    ``locks``, trip slot per message) merged in event-time order -- all trips in one run.

    Returns the outcome for the given messages, masks of those that were new (not
    duplicates of journal messages) and the slots re-run from stored history.
    """
    trips, devices = ctx.trips, ctx.devices
    late = np.full(trips.capacity, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(late, ftrip, fixes.ts)
    np.minimum.at(late, ltrip, locks.ts)
    slot_list = slots.tolist()
    late_ts = late[slots]
    snaps = journal.snapshots_for(trips, devices, slot_list, late_ts)
    before = {
        slot: (
            open_episodes(trips, devices.m, slot),
            trips.m[slot, TC.STATUS],
            trips.m[slot, TC.ACTIVE_SINCE],
        )
        for slot in slot_list
    }
    start_seq: dict[int, int] = {}
    durable: list[int] = []
    hist_f, hist_ft, hist_l, hist_lt = [], [], [], []
    for slot, snap, lts in zip(slot_list, snaps, late_ts.tolist(), strict=True):
        if snap is not None:
            start_seq[slot] = snap.chunk_seq
            _restore(trips, devices, slot, snap)
            continue
        start = None if history is None else start_state(trips, devices, slot, lts, history)
        if start is None:
            info = trips.info[slot]
            assert info is not None
            logger.warning(
                "late data for trip %s older than the rewind window (ts %s); applied in "
                "its own order on the current state",
                info.trip_id,
                lts,
            )
            continue
        _restore(trips, devices, slot, start)
        durable.append(slot)
        hist_f.append(start.fixes)
        hist_ft.append(np.full(len(start.fixes), slot, dtype=np.int64))
        hist_l.append(start.locks)
        hist_lt.append(np.full(len(start.locks), slot, dtype=np.int64))
    jf, jft, jl, jlt = journal.messages_for(start_seq)
    # Journal first (a resent message is a duplicate), then the batch, then stored history
    # (the batch's copy of a message the store already holds counts as new).
    all_f = FixCols.concat([jf, fixes, *hist_f])
    all_ft = np.concatenate([jft, ftrip, *hist_ft])
    all_l = LockCols.concat([jl, locks, *hist_l])
    all_lt = np.concatenate([jlt, ltrip, *hist_lt])
    width = len(devices.ids) + 1
    fdup = duplicate_mask(all_ft * width + all_f.dev, all_f.ts, all_f.seq)
    ldup = duplicate_mask(all_lt * width + all_l.dev, all_l.ts, all_l.seq)
    keep_f, keep_l = np.flatnonzero(~fdup), np.flatnonzero(~ldup)
    was_rewind = ctx.emit.rewind
    ctx.emit.rewind = True
    ended_before = set(ctx.emit.ended_keys)
    try:
        out = run(ctx, all_f.take(keep_f), all_ft[keep_f], all_l.take(keep_l), all_lt[keep_l])
    finally:
        ctx.emit.rewind = was_rewind
    ended_now = ctx.emit.ended_keys - ended_before
    for slot in slot_list:
        _after_rewind(ctx, slot, int(late[slot]), before[slot], ended_now)
    # Map the run's outcome back onto the given (batch) messages.
    res = Outcome.new(len(fixes), len(locks))
    pos_f = np.full(len(all_f), -1, dtype=np.int64)
    pos_f[keep_f] = np.arange(keep_f.size)
    mine_f = pos_f[len(jf) : len(jf) + len(fixes)]
    sel = np.flatnonzero(mine_f >= 0)
    src = mine_f[sel]
    new_f = np.zeros(len(fixes), dtype=bool)
    new_f[sel] = ~out.dup[src]
    res.dup[:] = ~new_f
    res.valid[sel] = out.valid[src]
    res.state[sel] = out.state[src]
    res.dist[sel] = out.dist[src]
    pos_l = np.full(len(all_l), -1, dtype=np.int64)
    pos_l[keep_l] = np.arange(keep_l.size)
    mine_l = pos_l[len(jl) : len(jl) + len(locks)]
    sel_l = np.flatnonzero(mine_l >= 0)
    new_l = np.zeros(len(locks), dtype=bool)
    new_l[sel_l] = ~out.lock_dup[mine_l[sel_l]]
    res.lock_dup[:] = ~new_l
    return res, new_f, new_l, durable


def _after_rewind(
    ctx: Ctx,
    slot: int,
    late_ts: int,
    before: tuple[dict[str, AlarmType], float, float],
    ended_now: set[str],
) -> None:
    """Clock activation kept, signal loss ended, episodes the re-run no longer sees open
    (nor ended itself) superseded."""
    trips = ctx.trips
    info = trips.info[slot]
    assert info is not None
    episodes, status_before, active_since = before
    m = trips.m[slot]
    if status_before == ACTIVE and m[TC.STATUS] == PLANNED:
        m[TC.STATUS] = ACTIVE  # activated by the clock, which a re-run does not replay
        m[TC.ACTIVE_SINCE] = active_since
    if trips.signal_open[slot]:
        end_signal_lost(ctx, slot, late_ts)
    if m[TC.STATUS] == ACTIVE:
        after = open_episodes(trips, ctx.devices.m, slot)
        for key, kind in episodes.items():
            if key not in after and key not in ended_now:
                ctx.emit.ended(
                    info, kind, key, late_ts, {"superseded": True, "reason": "late data"}
                )


_STATE_FREE = {
    LockEventType.TAMPER,
    LockEventType.ROPE_CUT,
    LockEventType.FORCED_OPEN,
    LockEventType.HEARTBEAT,
    LockEventType.LOW_BATTERY,
}


def state_free(
    trips: TripTable, devices: DeviceTable, locks: LockCols, ltrip: I64, rows: I64
) -> npt.NDArray[np.bool_]:
    """Which late lock events ``rows`` change no event-time state, so that they can be
    applied directly instead of rewinding their trip (rules/lockrules.py): a tamper /
    rope_cut / forced_open / heartbeat / low_battery event of a trip active since before
    it (or planned and before its start) only raises its own alarm; its battery report
    changes nothing when a LOW_BATTERY episode was open at its ts and it does not clear
    it, or when it is neither low nor clearing."""
    out = np.zeros(rows.size, dtype=bool)
    for k, j in enumerate(rows.tolist()):
        event = locks.events[j]
        if event.event not in _STATE_FREE:
            continue
        slot, ts, battery = int(ltrip[j]), int(locks.ts[j]), float(locks.battery[j])
        m = trips.m[slot]
        low_event = event.event == LockEventType.LOW_BATTERY
        if m[TC.STATUS] == ACTIVE and m[TC.ACTIVE_SINCE] <= ts:
            row = devices.m[int(locks.dev[j])]
            low = trips.rules[slot, RC.LOW_BATTERY_PCT]
            clear = trips.rules[slot, RC.LOW_BATTERY_CLEAR_PCT]
            open_at_ts = row[DC.BAT_TRIP] == slot and row[DC.BAT_OPEN] <= ts
            out[k] = (open_at_ts and not battery > clear) or (
                not low_event and (math.isnan(battery) or low < battery <= clear)
            )
        elif m[TC.STATUS] == PLANNED and ts < trips.planned_start[slot]:
            out[k] = not low_event and math.isnan(battery)
    return out
