"""Late data: a journal of processed messages plus state checkpoints, and the rewind.

When a batch brings a message older than what its device already processed (a
store-and-forward backlog after a live fix), or older than its trip's state by more than
``CROSS_DEVICE_SKEW_MS`` (one device's backlog while another device of the truck kept
reporting), the trip is re-run in event-time order from the newest snapshot taken before
that time: its state row (and its devices' rows and stop progress) is restored, the
journal's messages of the trip since the snapshot are merged with the late ones, and the
merge is run again. Events already emitted are suppressed by their keys; every new alarm
is ``detected_late``; episodes that were open before and no longer exist are ended with
``details.superseded``.

Snapshots come from periodic whole-table checkpoints (a memcpy of the state matrices every
``interval_ms`` of wall clock) and from the trip's own (re)configuration. The journal keeps
the messages since the oldest checkpoint, bounded by ``max_rows`` and ``max_checkpoints``;
data older than the window falls back to being applied on the current state in its own
event-time order (still per-device ordered, as CONTRACT §4 requires), logged as a warning.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rules.batch import FixCols, LockCols, duplicate_mask
from rules.context import Ctx, Outcome
from rules.lifecycle import end_signal_lost, open_episodes
from rules.runner import run
from rules.state import ACTIVE, DEVICE_ROW, PLANNED, TC, DeviceTable, StopProgress, TripTable

__all__ = ["CROSS_DEVICE_SKEW_MS", "Journal", "Snapshot", "rewind_trip"]

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

    def snapshot_for(
        self, trips: TripTable, devices: DeviceTable, slot: int, late_ts: int
    ) -> Snapshot | None:
        """The newest snapshot of the trip from before any message later than ``late_ts``
        was applied, whose journal is still complete; None if there is none."""
        info = trips.info[slot]
        assert info is not None
        first = self.first_seq
        best: Snapshot | None = None
        created = info.created
        if (
            isinstance(created, Snapshot)
            and created.chunk_seq >= first
            and not created.trip_row[TC.LAST_TS] > late_ts
        ):
            best = created
        for ck in reversed(self.checkpoints):
            if best is not None and ck.chunk_seq <= best.chunk_seq:
                break
            if ck.chunk_seq < first or slot >= ck.gen.shape[0] or ck.gen[slot] != info.gen:
                continue
            if ck.tm[slot, TC.LAST_TS] > late_ts:
                continue
            prog = ck.progress[slot]
            if prog is None:
                continue
            rows = {
                d: (ck.dm[d].copy() if d < ck.dm.shape[0] else DEVICE_ROW.copy())
                for d in info.device_slots
            }
            return Snapshot(ck.chunk_seq, ck.tm[slot].copy(), rows, prog)
        return best

    def messages_since(self, chunk_seq: int, slot: int) -> tuple[FixCols, LockCols]:
        """The journal's messages of trip ``slot`` from chunk ``chunk_seq`` on."""
        fparts, lparts = [], []
        for c in self.chunks:
            if c.seq < chunk_seq:
                continue
            fm = c.ftrip == slot
            if fm.any():
                fparts.append(c.fixes.take(fm))
            lm = c.ltrip == slot
            if lm.any():
                lparts.append(c.locks.take(lm))
        return FixCols.concat(fparts), LockCols.concat(lparts)


def rewind_trip(
    ctx: Ctx, journal: Journal, slot: int, fixes: FixCols, locks: LockCols
) -> tuple[Outcome, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Re-run trip ``slot`` with late ``fixes`` / ``locks`` merged in event-time order.

    Returns the outcome for the given messages and masks of those that were new (not
    duplicates of journal messages).
    """
    trips, devices = ctx.trips, ctx.devices
    info = trips.info[slot]
    assert info is not None
    late_ts = int(min(fixes.ts.min(initial=2**62), locks.ts.min(initial=2**62)))
    snap = journal.snapshot_for(trips, devices, slot, late_ts)
    before = open_episodes(trips, devices.m, slot)
    status_before = trips.m[slot, TC.STATUS]
    active_since = trips.m[slot, TC.ACTIVE_SINCE]
    was_rewind = ctx.emit.rewind
    ctx.emit.rewind = True
    ended_before = set(ctx.emit.ended_keys)
    try:
        if snap is None:
            logger.warning(
                "late data for trip %s older than the rewind window (ts %s); applied in "
                "its own order on the current state",
                info.trip_id,
                late_ts,
            )
            hist_f, hist_l = FixCols.empty(), LockCols.empty()
        else:
            hist_f, hist_l = journal.messages_since(snap.chunk_seq, slot)
        nhf, nhl = len(hist_f), len(hist_l)
        all_f = FixCols.concat([hist_f, fixes])
        all_l = LockCols.concat([hist_l, locks])
        fdup = duplicate_mask(all_f.dev, all_f.ts, all_f.seq)
        ldup = duplicate_mask(all_l.dev, all_l.ts, all_l.seq)
        keep_f, keep_l = np.flatnonzero(~fdup), np.flatnonzero(~ldup)
        if snap is not None:
            trips.m[slot] = snap.trip_row
            for d, row in snap.device_rows.items():
                devices.m[d] = row
            trips.progress[slot] = snap.progress
        run_f, run_l = all_f.take(keep_f), all_l.take(keep_l)
        out = run(
            ctx,
            run_f,
            np.full(len(run_f), slot, dtype=np.int64),
            run_l,
            np.full(len(run_l), slot, dtype=np.int64),
        )
    finally:
        ctx.emit.rewind = was_rewind
    m = trips.m[slot]
    if status_before == ACTIVE and m[TC.STATUS] == PLANNED:
        m[TC.STATUS] = ACTIVE  # activated by the clock, which a re-run does not replay
        m[TC.ACTIVE_SINCE] = active_since
    if trips.signal_open[slot] and (len(fixes) or len(locks)):
        end_signal_lost(ctx, slot, late_ts)
    # Episodes the re-run no longer sees open (nor ended itself) are superseded.
    if m[TC.STATUS] == ACTIVE:
        after = open_episodes(trips, devices.m, slot)
        ended_now = ctx.emit.ended_keys - ended_before
        for key, kind in before.items():
            if key not in after and key not in ended_now:
                ctx.emit.ended(
                    info, kind, key, late_ts, {"superseded": True, "reason": "late data"}
                )
    # Map the run's outcome back onto the given (batch) messages.
    res = Outcome.new(len(fixes), len(locks))
    pos_f = np.full(len(all_f), -1, dtype=np.int64)
    pos_f[keep_f] = np.arange(keep_f.size)
    mine_f = pos_f[nhf:]
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
    mine_l = pos_l[nhl:]
    sel_l = np.flatnonzero(mine_l >= 0)
    new_l = np.zeros(len(locks), dtype=bool)
    new_l[sel_l] = ~out.lock_dup[mine_l[sel_l]]
    res.lock_dup[:] = ~new_l
    return res, new_f, new_l
