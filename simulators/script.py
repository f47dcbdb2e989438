"""A truck's script and the messages it produces.

A :class:`TruckScript` is small (a drive plan, two device specs, a few lock actions and
transport quirks); :meth:`TruckScript.iter_messages` re-drives it and streams the messages
in publish order, five minutes of event time at a time, so a fleet of 10,000 trucks never
holds more than a window of messages per truck. The same script always yields the same
bytes: every random draw comes from a generator seeded by the script's entropy, in a fixed
order.

Transport quirks, applied per message:
- ``gps_outages``: no fixes (no reception); lock events then carry no position.
- ``blackouts``: no network: every message with ``ts`` inside is held and sent at the end of
  the blackout as JSON-array backlogs (≤ 50 elements each, per device and topic).
- ``redeliver_s``: every message is sent twice, each copy delayed by 0–``redeliver_s``
  seconds, so copies and neighbours arrive shuffled.
- ``jump``: one fix at or after a time is thrown kilometres off (multipath).
- ``extras``: raw messages (bad payloads) sent as they are.

GNSS errors (:mod:`simulators.gnss`), drawn from a generator of their own so that a script
without them yields exactly the bytes it always did:
- ``drift``: standing positions (fixes and lock events) wander; hdop rises, sats fall.
- ``bursts``: runs of fixes thrown tens to hundreds of metres off (multipath).
- ``duplicate_p`` / ``late_p``: a message is sent twice (the copy up to ``late_max_s``
  later) / sent up to ``late_max_s`` late, so it arrives out of order.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from simulators.elock import LockAction, heartbeat_times
from simulators.gnss import Burst, Drift, degrade, drift_at
from simulators.model import SimMessage
from simulators.payloads import DeviceSpec, encode, fix_bodies, lock_body
from simulators.truck import Drive, DrivePlan, drive, fix_columns, fix_times

WINDOW_MS = 300_000
BACKLOG_CHUNK = 50


@dataclass(frozen=True, slots=True)
class Jump:
    """The first fix at or after ``at_ms`` is displaced by ``dx_m`` east, ``dy_m`` north."""

    at_ms: int
    dx_m: float
    dy_m: float


@dataclass(frozen=True, eq=False)
class TruckScript:
    """Everything needed to regenerate one truck's messages."""

    entropy: tuple[int, ...]
    plan: DrivePlan
    on_ms: int  # devices power on (first message)
    off_ms: int  # devices stop reporting
    gps: DeviceSpec  # publishes positions
    lock: DeviceSpec  # publishes lock events (``gps`` itself for a combined unit)
    actions: tuple[LockAction, ...]
    gps_outages: tuple[tuple[int, int], ...] = ()
    blackouts: tuple[tuple[int, int], ...] = ()
    redeliver_s: float = 0.0
    jump: Jump | None = None
    extras: tuple[SimMessage, ...] = ()
    drift: Drift | None = None
    bursts: tuple[Burst, ...] = ()
    duplicate_p: float = 0.0
    late_p: float = 0.0
    late_max_s: float = 0.0

    @property
    def combined(self) -> bool:
        """One device publishes both topics."""
        return self.gps.device_id == self.lock.device_id

    def fix_times(self, drv: Drive, rng: np.random.Generator) -> np.ndarray:
        """The GPS fix times (first draws of the script's generator)."""
        return fix_times(drv, self.on_ms, self.off_ms, self.gps.reporting, rng, self.gps_outages)

    def iter_messages(self) -> Iterator[SimMessage]:
        """Messages in ``at_ms`` order (ties in generation order)."""
        return _Player(self).play()


class _Player:
    """Generates one script's messages window by window."""

    def __init__(self, script: TruckScript) -> None:
        sc = script
        self.sc = sc
        self.drv = drive(sc.plan)
        self.rng = np.random.default_rng(list(sc.entropy))
        self.fix_t = sc.fix_times(self.drv, self.rng)
        hb = heartbeat_times(sc.on_ms, sc.off_ms, sc.lock.heartbeat_s, self.rng)
        acts = [*sc.actions, *(LockAction(int(t), "heartbeat") for t in hb)]
        acts = [a for a in acts if sc.on_ms <= a.ts_ms <= sc.off_ms]
        acts.sort(key=lambda a: a.ts_ms)
        self.acts = acts
        self.act_t = np.array([a.ts_ms for a in acts], dtype=np.int64)
        # seq: monotonic per device over its messages in event-time order
        if sc.combined:
            both = np.concatenate([self.fix_t, self.act_t])
            order = np.argsort(both, kind="stable")
            rank = np.empty(len(both), dtype=np.int64)
            rank[order] = np.arange(len(both))
            self.fix_seq = sc.gps.seq0 + rank[: len(self.fix_t)]
            self.act_seq = sc.lock.seq0 + rank[len(self.fix_t) :]
        else:
            self.fix_seq = sc.gps.seq0 + np.arange(len(self.fix_t))
            self.act_seq = sc.lock.seq0 + np.arange(len(self.act_t))
        self.jump_index = -1
        if sc.jump is not None:
            self.jump_index = int(np.searchsorted(self.fix_t, sc.jump.at_ms))
        # GNSS errors draw from their own generator (a clean script's bytes stay the same)
        self.err = np.random.default_rng([*sc.entropy, 0xE770])
        self.burst_off: dict[int, tuple[float, float]] = {}
        for b in sc.bursts:
            i0 = int(np.searchsorted(self.fix_t, b.at_ms))
            for i in range(i0, min(i0 + b.n, len(self.fix_t))):
                k = float(self.err.uniform(0.8, 1.2))
                self.burst_off[i] = (b.dx_m * k, b.dy_m * k)
        self.counter = itertools.count()
        self.heap: list[tuple[int, int, SimMessage]] = []
        self.held: dict[tuple[int, str, str], list[bytes]] = {}

    # -- records of one window -------------------------------------------------------------

    def _fix_records(self, lo: int, hi: int) -> list[tuple[int, str, str, dict]]:
        i0, i1 = np.searchsorted(self.fix_t, [lo, hi])
        if i1 <= i0:
            return []
        sc = self.sc
        t = self.fix_t[i0:i1]
        cols = fix_columns(self.drv, t, sc.gps.reporting, self.rng)
        if i0 <= self.jump_index < i1 and sc.jump is not None:
            j = self.jump_index - i0
            lat = cols["lat"][j]
            cols["lat"][j] = lat + sc.jump.dy_m / 111_000.0
            cols["lon"][j] += sc.jump.dx_m / (111_000.0 * np.cos(np.radians(lat)))
            cols["hdop"][j] = 9.9
            cols["sats"][j] = 4
        self._gnss(t, i0, cols)
        battery = sc.gps.battery_at(sc.on_ms, t)
        bodies = fix_bodies(sc.gps, t, cols, battery, self.fix_seq[i0:i1])
        return [(int(ts), sc.gps.device_id, "position", b) for ts, b in zip(t, bodies, strict=True)]

    def _lock_records(self, lo: int, hi: int) -> list[tuple[int, str, str, dict]]:
        i0, i1 = np.searchsorted(self.act_t, [lo, hi])
        if i1 <= i0:
            return []
        sc = self.sc
        t = self.act_t[i0:i1]
        s, _ = self.drv.at(t)
        lon, lat, _ = self.drv.path.locate(s)
        noise = self.rng.normal(0.0, 3.0, (2, len(t)))
        if sc.drift is not None:
            # the lock stands where the truck stands: the same sky, the same drift
            dx, dy, _, _ = drift_at(sc.drift, t)
            noise = noise + np.vstack([dx, dy])
        lat = lat + noise[1] / 111_000.0
        lon = lon + noise[0] / (111_000.0 * np.cos(np.radians(lat)))
        battery = sc.lock.battery_at(sc.on_ms, t)
        out = []
        for k in range(len(t)):
            a = self.acts[i0 + k]
            ts = int(t[k])
            positioned = a.positioned and not any(x <= ts < y for x, y in sc.gps_outages)
            body = lock_body(
                sc.lock,
                ts,
                a.event,
                a.method,
                float(lat[k]) if positioned else None,
                float(lon[k]) if positioned else None,
                int(battery[k]),
                int(self.act_seq[i0 + k]),
            )
            out.append((ts, sc.lock.device_id, "lock", body))
        return out

    def _gnss(self, t: np.ndarray, i0: int, cols: dict[str, np.ndarray]) -> None:
        """Drift and multipath on one window's fix columns (in place)."""
        sc = self.sc
        k_lat = 111_000.0
        if sc.drift is not None:
            dx, dy, since, standing = drift_at(sc.drift, t)
            if standing.any():
                lat = cols["lat"]
                cols["lat"] = lat + dy / k_lat
                cols["lon"] = cols["lon"] + dx / (k_lat * np.cos(np.radians(lat)))
                cols["hdop"], cols["sats"] = degrade(
                    cols["hdop"], cols["sats"], since, standing, self.err
                )
                # a standing receiver's Doppler speed is not quite zero
                jitter = np.round(self.err.uniform(0.0, 2.5, len(t)), 1)
                cols["speed_kmh"] = np.where(
                    standing & (cols["speed_kmh"] == 0.0), jitter, cols["speed_kmh"]
                )
        for j in range(len(t)):
            off = self.burst_off.get(i0 + j)
            if off is None:
                continue
            lat = cols["lat"][j]
            cols["lat"][j] = lat + off[1] / k_lat
            cols["lon"][j] += off[0] / (k_lat * np.cos(np.radians(lat)))
            cols["hdop"][j] = round(float(self.err.uniform(3.0, 8.0)), 1)
            cols["sats"][j] = int(self.err.integers(4, 7))

    # -- delivery --------------------------------------------------------------------------

    def _push(self, msg: SimMessage) -> None:
        heapq.heappush(self.heap, (msg.at_ms, next(self.counter), msg))

    def _release(self, upto_ts: int) -> None:
        """Send the backlogs of blackouts that ended at or before ``upto_ts``."""
        if not self.held:
            return
        for key in sorted(k for k in self.held if k[0] <= upto_ts):
            end, device_id, suffix = key
            items = self.held.pop(key)
            for c in range(0, len(items), BACKLOG_CHUNK):
                payload = b"[" + b",".join(items[c : c + BACKLOG_CHUNK]) + b"]"
                # chunks go out a little apart, as a device drains its store
                at = end + 200 * (c // BACKLOG_CHUNK) + (0 if suffix == "position" else 1000)
                self._push(SimMessage(suffix, device_id, payload, at))

    def _deliver(self, ts: int, device_id: str, suffix: str, body: dict) -> None:
        sc = self.sc
        self._release(ts)
        payload = encode(body)
        for a, b in sc.blackouts:
            if a <= ts < b:
                self.held.setdefault((b, device_id, suffix), []).append(payload)
                return
        if sc.redeliver_s > 0:
            for delay in self.rng.uniform(0.0, sc.redeliver_s * 1000.0, 2):
                self._push(SimMessage(suffix, device_id, payload, ts + int(delay)))
            return
        at = ts
        if sc.duplicate_p > 0 or sc.late_p > 0:
            u = self.err.random(3)
            if u[0] < sc.late_p:
                at = ts + int(u[1] * sc.late_max_s * 1000)
            if u[2] < sc.duplicate_p:
                again = ts + int(self.err.uniform(1.0, max(sc.late_max_s, 1.0)) * 1000)
                self._push(SimMessage(suffix, device_id, payload, again))
        self._push(SimMessage(suffix, device_id, payload, at))

    def _fill(self, lo: int, hi: int) -> None:
        """Queue the messages of records with ``lo <= ts < hi`` (the bodies die here)."""
        records = self._fix_records(lo, hi) + self._lock_records(lo, hi)
        records.sort(key=lambda r: r[0])
        for ts, device_id, suffix, body in records:
            self._deliver(ts, device_id, suffix, body)

    def play(self) -> Iterator[SimMessage]:
        sc = self.sc
        extras = sorted(sc.extras, key=lambda m: m.at_ms)
        e = 0
        lo = sc.on_ms
        while lo <= sc.off_ms:
            hi = lo + WINDOW_MS
            self._fill(lo, hi)
            # all records with ts < hi are in: backlogs of blackouts ended by then are complete
            self._release(hi)
            while e < len(extras) and extras[e].at_ms < hi:
                self._push(extras[e])
                e += 1
            # every later record has ts >= hi, hence at_ms >= hi: all below hi are final
            while self.heap and self.heap[0][0] < hi:
                yield heapq.heappop(self.heap)[2]
            lo = hi
        self._release(2**62)
        for m in extras[e:]:
            self._push(m)
        while self.heap:
            yield heapq.heappop(self.heap)[2]
