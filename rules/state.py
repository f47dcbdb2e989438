"""Per-trip and per-device rule state, kept as numpy arrays indexed by int slots.

Two float64 matrices hold everything a rule needs to continue from one message to the next:
``trips.m[slot, TC.X]`` and ``devices.m[slot, DC.X]``. Times are epoch ms stored as float64
(exact below 2**53); "none" is NaN so comparisons with it are simply False. These matrices
are what the journal checkpoints and what a rewind restores (rules/rewind.py), so any state
that must follow event time lives here or in the copy-on-write ``StopProgress``; state that
follows the wall clock (last heard, signal-lost episode, late-arrival deadlines) is kept in
separate arrays that a rewind never touches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from rules.plan import TripPlan
from rules.thresholds import RULE_NAMES

__all__ = [
    "DC",
    "GEOFENCE_SLOTS",
    "GF_OUT",
    "GF_OUT_TS",
    "GF_SINCE",
    "GF_SLOT",
    "MAX_ENDED_SPANS",
    "RC",
    "STATUS_CODE",
    "STATUS_NAME",
    "TC",
    "DeviceTable",
    "StopProgress",
    "TripInfo",
    "TripTable",
]

NAN = float("nan")


class TC(IntEnum):
    """Columns of the per-trip event-time state."""

    STATUS = 0  # STATUS_CODE
    ACTIVE_SINCE = 1  # event time of activation
    LAST_TS = 2  # greatest ts of any message of the trip processed so far
    VALID_TS = 3  # last valid fix of any of the trip's devices
    VALID_LON = 4
    VALID_LAT = 5
    VALID_DEV = 6  # device slot of that fix
    VALID_SPEED = 7
    HINT = 8  # last matched route segment (-1 unknown)
    DIST = 9  # distance of the last valid fix to the route line
    OFF_COUNT = 10  # consecutive off-route fixes
    OFF_SINCE = 11  # ts of the first of them
    OFF_MAX = 12  # greatest distance among them
    OFF_OPEN = 13  # ROUTE_DEVIATION episode start (NaN: none open)
    BACK_COUNT = 14  # consecutive fixes back within the corridor while an episode is open
    ANCHOR_TS = 15  # first fix of the current stationary candidate (NaN: moving)
    ANCHOR_LON = 16
    ANCHOR_LAT = 17
    STOP_OPEN = 18  # LONG_STOP episode (anchor ts) or NaN
    SPEED_SINCE = 19  # first fix over the limit in the current run
    SPEED_MAX = 20
    SPEED_OPEN = 21  # SPEEDING episode start or NaN
    IN_ORIGIN = 22  # 0/1: inside the origin fence (membership with hysteresis)
    SEEN_ORIGIN = 23  # 0/1: the trip has been inside its origin
    DEPARTED = 24  # 0/1
    SEALED = 25  # 0/1
    CUR_STOP = 26  # plan index of the stop the truck is in (membership), -1 none
    VISIT_START = 27  # ts the current stop visit began
    DWELL_OPEN = 28  # DWELL_OVERTIME episode (visit start) or NaN
    NEXT_STOP = 29  # first stop not yet arrived at (plan index; n_stops when all)
    LOCK_STATE = 30  # 0 unknown, 1 locked, 2 unlocked
    OFF_NOW = 31  # 0/1: the last valid fix was off route
    STOPPED_SINCE = 32  # anchor ts while stationary (for the UI's "stopped")
    ORIGIN_OUT = 33  # consecutive fixes beyond the origin's exit margin while inside it
    STOP_OUT = 34  # the same for CUR_STOP
    # Global geofence memberships (rules/membership.py): up to GEOFENCE_SLOTS at a time,
    # each a fence slot of TripGeometry.geofences (-1 free), its count of consecutive fixes
    # beyond the exit margin, and the event time it was entered.
    GF_SLOT_0 = 35
    GF_SLOT_1 = 36
    GF_SLOT_2 = 37
    GF_SLOT_3 = 38
    GF_OUT_0 = 39
    GF_OUT_1 = 40
    GF_OUT_2 = 41
    GF_OUT_3 = 42
    GF_SINCE_0 = 43
    GF_SINCE_1 = 44
    GF_SINCE_2 = 45
    GF_SINCE_3 = 46
    ORIGIN_OUT_TS = 47  # ts of the first of the run of fixes counted by ORIGIN_OUT
    STOP_OUT_TS = 48
    GF_OUT_TS_0 = 49
    GF_OUT_TS_1 = 50
    GF_OUT_TS_2 = 51
    GF_OUT_TS_3 = 52


GEOFENCE_SLOTS = 4
"""Global geofences a trip can be inside at once (overlapping depot, custom and risk zones);
an entry beyond that is ignored until a membership ends."""
GF_SLOT = np.arange(TC.GF_SLOT_0, TC.GF_SLOT_0 + GEOFENCE_SLOTS)
GF_OUT = np.arange(TC.GF_OUT_0, TC.GF_OUT_0 + GEOFENCE_SLOTS)
GF_SINCE = np.arange(TC.GF_SINCE_0, TC.GF_SINCE_0 + GEOFENCE_SLOTS)
GF_OUT_TS = np.arange(TC.GF_OUT_TS_0, TC.GF_OUT_TS_0 + GEOFENCE_SLOTS)


class DC(IntEnum):
    """Columns of the per-device event-time state."""

    LAST_TS = 0  # last processed message (duplicate check)
    LAST_SEQ = 1
    VALID_TS = 2  # previous valid fix (GPS-jump filter)
    VALID_LON = 3
    VALID_LAT = 4
    JUMP_RUN = 5  # consecutive mutually consistent rejected fixes
    JUMP_TS = 6  # the last rejected fix
    JUMP_LON = 7
    JUMP_LAT = 8
    BAT_OPEN = 9  # LOW_BATTERY episode start or NaN
    BAT_TRIP = 10  # trip slot the episode belongs to
    BATTERY = 11  # last reported battery_pct


class RC(IntEnum):
    """Columns of the per-trip threshold table, in ``RULE_NAMES`` order.

    Spelled out (not built from RULE_NAMES) so the type checker knows the members; the check
    below keeps the two in step.
    """

    CORRIDOR_M = 0
    OFF_ROUTE_MIN_S = 1
    OFF_ROUTE_MIN_FIXES = 2
    BACK_ON_ROUTE_FIXES = 3
    STOP_RADIUS_M = 4
    STOP_SPEED_KMH = 5
    STOP_MAX_MIN = 6
    SIGNAL_LOST_S = 7
    SPEED_LIMIT_KMH = 8
    SPEEDING_MIN_S = 9
    LATE_TOLERANCE_MIN = 10
    LOW_BATTERY_PCT = 11
    LOW_BATTERY_CLEAR_PCT = 12
    MAX_DWELL_MIN = 13
    MAX_JUMP_KMH = 14
    UNLOCK_FIX_MAX_AGE_S = 15
    FENCE_EXIT_MARGIN_M = 16
    LOCK_GPS_DISAGREE_M = 17
    UNLOCK_GPS_WAIT_S = 18


if tuple(m.name.lower() for m in RC) != RULE_NAMES:
    raise RuntimeError("rules.state.RC is out of step with rules.thresholds.RULE_NAMES")

STATUS_CODE = {"planned": 0, "active": 1, "completed": 2, "cancelled": 3}
STATUS_NAME = {v: k for k, v in STATUS_CODE.items()}
PLANNED, ACTIVE, COMPLETED, CANCELLED, FREE = 0, 1, 2, 3, -1
LOCK_NAMES = {0: "unknown", 1: "locked", 2: "unlocked"}

# Columns reset when a trip becomes active: counters started before activation do not count.
RESET_ON_ACTIVATION: dict[TC, float] = {
    TC.OFF_COUNT: 0.0,
    TC.OFF_SINCE: NAN,
    TC.OFF_MAX: NAN,
    TC.OFF_OPEN: NAN,
    TC.BACK_COUNT: 0.0,
    TC.ANCHOR_TS: NAN,
    TC.ANCHOR_LON: NAN,
    TC.ANCHOR_LAT: NAN,
    TC.STOP_OPEN: NAN,
    TC.SPEED_SINCE: NAN,
    TC.SPEED_MAX: NAN,
    TC.SPEED_OPEN: NAN,
    TC.DWELL_OPEN: NAN,
    TC.OFF_NOW: 0.0,
    TC.STOPPED_SINCE: NAN,
}


def _initial_trip_row() -> npt.NDArray[np.float64]:
    row = np.full(len(TC), NAN)
    for col in (
        TC.OFF_COUNT,
        TC.BACK_COUNT,
        TC.IN_ORIGIN,
        TC.SEEN_ORIGIN,
        TC.DEPARTED,
        TC.SEALED,
        TC.NEXT_STOP,
        TC.LOCK_STATE,
        TC.OFF_NOW,
        TC.ORIGIN_OUT,
        TC.STOP_OUT,
        *GF_OUT.tolist(),
    ):
        row[col] = 0.0
    row[GF_SLOT] = -1.0
    row[TC.HINT] = -1.0
    row[TC.CUR_STOP] = -1.0
    row[TC.STATUS] = FREE
    return row


def _initial_device_row() -> npt.NDArray[np.float64]:
    row = np.full(len(DC), NAN)
    row[DC.JUMP_RUN] = 0.0
    row[DC.BAT_TRIP] = -1.0
    return row


TRIP_ROW = _initial_trip_row()
DEVICE_ROW = _initial_device_row()


@dataclass(frozen=True, slots=True)
class StopProgress:
    """Per stop, in plan order: event time of arrival, unsealing and leaving (-1: not yet).

    Immutable and replaced on change, so a checkpoint is a shallow copy of a list.
    """

    arrived: tuple[int, ...]
    unsealed: tuple[int, ...]
    left: tuple[int, ...]

    @classmethod
    def empty(cls, n: int) -> StopProgress:
        none = (-1,) * n
        return cls(none, none, none)

    def with_(self, what: str, index: int, ts: int) -> StopProgress:
        """A copy with ``what`` (arrived / unsealed / left) of stop ``index`` set to ``ts``."""
        values = list(getattr(self, what))
        values[index] = ts
        kw = {"arrived": self.arrived, "unsealed": self.unsealed, "left": self.left}
        kw[what] = tuple(values)
        return StopProgress(**kw)

    def visited(self, index: int) -> bool:
        """A stop counts as visited once unsealed there, or once left after arrival."""
        return self.unsealed[index] >= 0 or (self.arrived[index] >= 0 and self.left[index] >= 0)

    def next_arrival(self) -> int:
        """Plan index of the first stop not yet arrived at (len when all were)."""
        for i, ts in enumerate(self.arrived):
            if ts < 0:
                return i
        return len(self.arrived)


@dataclass(slots=True)
class TripInfo:
    """The Python side of a trip slot: plan (its route lives in the geometry kernel only),
    identity, emitted keys, timers."""

    slot: int
    gen: int
    plan: TripPlan
    device_slots: tuple[int, ...]
    emitted: set[str] = field(default_factory=set)
    late_done: set[int] = field(default_factory=set)
    signal_episode: str | None = None
    created: object | None = None  # rewind snapshot taken at (re)configuration
    route_digest: bytes = b""
    doc_digest: bytes = b""
    # (plan, route digest, plan_digest of them): a checkpoint of an unchanged plan reuses it
    plan_digest_memo: tuple[TripPlan, bytes, str] | None = None

    @property
    def trip_id(self) -> str:
        return self.plan.trip_id

    @property
    def shipper(self) -> str:
        return self.plan.shipper


class TripTable:
    """Trip slots: event-time state, thresholds, static plan arrays and wall-clock timers."""

    def __init__(self, capacity: int = 64) -> None:
        self.m = np.tile(TRIP_ROW, (capacity, 1))
        self.rules = np.zeros((capacity, len(RULE_NAMES)))
        self.route_slot = np.full(capacity, -1, dtype=np.int64)
        self.planned_start = np.full(capacity, np.inf)
        self.fence_base = np.zeros(capacity, dtype=np.int64)  # into TripTable.tf_*
        self.fence_count = np.zeros(capacity, dtype=np.int64)
        self.stop_base = np.zeros(capacity, dtype=np.int64)  # into TripTable.st_*
        self.n_stops = np.zeros(capacity, dtype=np.int64)
        self.heard = np.full(capacity, NAN)  # wall clock of the last message (arrival)
        self.signal_open = np.zeros(capacity, dtype=bool)
        self.next_late = np.full(capacity, np.inf)  # earliest pending LATE_ARRIVAL deadline
        self.gen = np.full(capacity, -1, dtype=np.int64)
        # Slots whose durable state changed since ``Engine.take_dirty`` last looked.
        self.dirty = np.zeros(capacity, dtype=bool)
        self.info: list[TripInfo | None] = [None] * capacity
        self.progress: list[StopProgress | None] = [None] * capacity
        # trip_id and shipper per slot as object arrays, one extra None at the end so that
        # slot -1 (no trip) gathers None: position batches are built without a Python loop.
        self.names = np.full(capacity + 1, None, dtype=object)
        self.shippers = np.full(capacity + 1, None, dtype=object)
        # Flattened per-trip fences (origin + stops) and per-stop plan values.
        self.tf_slot = np.zeros(0, dtype=np.int64)
        self.tf_stop = np.zeros(0, dtype=np.int64)  # -1 origin, else plan index
        self.tf_box = np.zeros((0, 4))  # lon_min, lat_min, lon_max, lat_max (pre-filter)
        self.st_unlock = np.zeros(0, dtype=bool)
        self.st_dwell_ms = np.zeros(0)
        self.st_eta = np.zeros(0)
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self._garbage = 0

    @property
    def capacity(self) -> int:
        return int(self.m.shape[0])

    def allocate(self) -> int:
        """A free slot (the table grows by doubling)."""
        if not self._free:
            old = self.capacity
            new = old * 2
            self.m = np.vstack([self.m, np.tile(TRIP_ROW, (new - old, 1))])
            self.rules = np.vstack([self.rules, np.zeros((new - old, self.rules.shape[1]))])
            for name, fill in (
                ("route_slot", -1),
                ("planned_start", np.inf),
                ("fence_base", 0),
                ("fence_count", 0),
                ("stop_base", 0),
                ("n_stops", 0),
                ("heard", NAN),
                ("signal_open", False),
                ("next_late", np.inf),
                ("gen", -1),
                ("dirty", False),
            ):
                arr = getattr(self, name)
                setattr(self, name, np.concatenate([arr, np.full(new - old, fill, arr.dtype)]))
            self.info.extend([None] * (new - old))
            self.progress.extend([None] * (new - old))
            for name in ("names", "shippers"):
                arr = np.full(new + 1, None, dtype=object)
                arr[:old] = getattr(self, name)[:old]
                setattr(self, name, arr)
            self._free = list(range(new - 1, old - 1, -1))
        return self._free.pop()

    def release(self, slot: int) -> None:
        """Return a slot to the free list and reset its arrays."""
        self.m[slot] = TRIP_ROW
        self.route_slot[slot] = -1
        self.planned_start[slot] = np.inf
        self._garbage += int(self.fence_count[slot]) + int(self.n_stops[slot])
        self.fence_count[slot] = 0
        self.n_stops[slot] = 0
        self.heard[slot] = NAN
        self.signal_open[slot] = False
        self.next_late[slot] = np.inf
        self.gen[slot] = -1
        self.dirty[slot] = False
        self.info[slot] = None
        self.progress[slot] = None
        self.names[slot] = None
        self.shippers[slot] = None
        self._free.append(slot)

    def set_stops(
        self,
        slot: int,
        fence_slots: npt.NDArray[np.int64],
        fence_stops: npt.NDArray[np.int64],
        fence_boxes: npt.NDArray[np.float64],
        unlock: npt.NDArray[np.bool_],
        dwell_ms: npt.NDArray[np.float64],
        eta: npt.NDArray[np.float64],
    ) -> None:
        """Append the trip's fences and stop values to the flattened arrays (old ones become
        garbage, compacted once garbage outweighs live entries)."""
        self._garbage += int(self.fence_count[slot]) + int(self.n_stops[slot])
        self.fence_base[slot] = self.tf_slot.size
        self.fence_count[slot] = fence_slots.size
        self.tf_slot = np.concatenate([self.tf_slot, fence_slots])
        self.tf_stop = np.concatenate([self.tf_stop, fence_stops])
        self.tf_box = np.concatenate([self.tf_box, fence_boxes.reshape(-1, 4)])
        self.stop_base[slot] = self.st_unlock.size
        self.n_stops[slot] = unlock.size
        self.st_unlock = np.concatenate([self.st_unlock, unlock])
        self.st_dwell_ms = np.concatenate([self.st_dwell_ms, dwell_ms])
        self.st_eta = np.concatenate([self.st_eta, eta])
        if self._garbage > 1024 and self._garbage > self.tf_slot.size:
            self._compact()

    def _compact(self) -> None:
        live = [i for i, info in enumerate(self.info) if info is not None]
        tf_parts, tfs_parts, box, un, dw, et = [], [], [], [], [], []
        fpos = spos = 0
        for i in live:
            fb, fc = int(self.fence_base[i]), int(self.fence_count[i])
            sb, sc = int(self.stop_base[i]), int(self.n_stops[i])
            tf_parts.append(self.tf_slot[fb : fb + fc])
            tfs_parts.append(self.tf_stop[fb : fb + fc])
            box.append(self.tf_box[fb : fb + fc])
            un.append(self.st_unlock[sb : sb + sc])
            dw.append(self.st_dwell_ms[sb : sb + sc])
            et.append(self.st_eta[sb : sb + sc])
            self.fence_base[i], self.stop_base[i] = fpos, spos
            fpos += fc
            spos += sc
        cat = np.concatenate
        self.tf_slot = cat(tf_parts) if tf_parts else np.zeros(0, np.int64)
        self.tf_stop = cat(tfs_parts) if tfs_parts else np.zeros(0, np.int64)
        self.tf_box = cat(box) if box else np.zeros((0, 4))
        self.st_unlock = cat(un) if un else np.zeros(0, bool)
        self.st_dwell_ms = cat(dw) if dw else np.zeros(0)
        self.st_eta = cat(et) if et else np.zeros(0)
        self._garbage = 0

    def live_slots(self) -> npt.NDArray[np.int64]:
        """Slots holding a trip."""
        return np.flatnonzero(self.gen >= 0)


#: ended trips' spans kept per device (DeviceTable.note_ended)
MAX_ENDED_SPANS = 8


class DeviceTable:
    """Device slots: event-time state and the trip each device currently reports for."""

    def __init__(self, capacity: int = 64) -> None:
        self.m = np.tile(DEVICE_ROW, (capacity, 1))
        self.trip = np.full(capacity, -1, dtype=np.int64)
        self.id_array = np.full(capacity, None, dtype=object)
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        # Event-time spans of trips the device served that have ended: its late data from
        # them is theirs, not the next trip's (another shipper's). ``ended_to`` (latest end)
        # lets a batch skip the exact span test for every message newer than all of them.
        self.ended_to = np.full(capacity, -np.inf)
        self.ended: dict[int, list[tuple[float, float]]] = {}

    def slot(self, device_id: str) -> int:
        """The slot of ``device_id``, allocated on first sight."""
        slot = self.index.get(device_id)
        if slot is None:
            slot = len(self.ids)
            if slot >= self.m.shape[0]:
                grow = self.m.shape[0]
                self.m = np.vstack([self.m, np.tile(DEVICE_ROW, (grow, 1))])
                self.trip = np.concatenate([self.trip, np.full(grow, -1, np.int64)])
                self.ended_to = np.concatenate([self.ended_to, np.full(grow, -np.inf)])
                self.id_array = np.concatenate([self.id_array, np.full(grow, None, object)])
            self.id_array[slot] = device_id
            self.ids.append(device_id)
            self.index[device_id] = slot
        return slot

    def note_ended(self, slot: int, start_ms: float, end_ms: float) -> None:
        """Record that the device served a trip from ``start_ms`` to ``end_ms`` (event time,
        inclusive) which has ended. The newest ``MAX_ENDED_SPANS`` are kept: a backlog older
        than that many trips of one device is not expected."""
        if not (start_ms == start_ms and end_ms == end_ms):  # NaN: no span
            return
        spans = self.ended.setdefault(slot, [])
        if (start_ms, end_ms) in spans:
            return
        spans.append((start_ms, max(start_ms, end_ms)))
        spans.sort(key=lambda s: s[1])
        del spans[:-MAX_ENDED_SPANS]
        self.ended_to[slot] = spans[-1][1]

    def in_ended(
        self, dev: npt.NDArray[np.int64], ts: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.bool_]:
        """Per message: whether its ts lies in an ended trip's span of its device."""
        out = np.zeros(dev.shape[0], dtype=bool)
        for i, (d, t) in enumerate(zip(dev.tolist(), ts.tolist(), strict=True)):
            out[i] = any(a <= t <= b for a, b in self.ended.get(d, ()))
        return out

    def slots(self, device_ids: list[str]) -> npt.NDArray[np.int64]:
        """Slots of many ids (allocating unknown ones)."""
        get = self.index.get
        found = list(map(get, device_ids))
        if None in found:
            pairs = zip(found, device_ids, strict=True)
            found = [s if s is not None else self.slot(d) for s, d in pairs]
        return np.fromiter(found, dtype=np.int64, count=len(found))
