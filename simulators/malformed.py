"""The ``malformed`` scenario's bad payloads: one of each dead-letter reason of contract §2,
mixed into a normal trip, plus two oddities that are *not* dead letters (a fix at 0,0 —
stored but not valid for rules — and a backlog array whose good elements must be kept
while its one bad element is dead-lettered).

Extra fixes carry no ``seq`` and a millisecond ``ts`` so they can never collide with (and be
de-duplicated against) the device's regular whole-second fixes.
"""

from __future__ import annotations

import numpy as np

from simulators.draft import Draft, iso_utc
from simulators.model import SimMessage
from simulators.payloads import encode
from simulators.truck import Drive

TOO_LARGE_BYTES = 300 * 1024


def add_malformed(d: Draft) -> None:
    """Schedule the bad messages once the drive is known."""
    d.after.append(_place)


def _place(d: Draft, drv: Drive) -> None:
    gps = d.gps.device_id
    lock = d.lock.device_id
    span = drv.end_ms - drv.depart_ms
    times = [drv.depart_ms + span * (k + 1) // 14 + 1000 * k + 377 for k in range(13)]
    s, v = drv.at(np.array(times))
    lon, lat, bearing = drv.path.locate(s)

    def fix(k: int, **over: object) -> dict:
        body: dict = {
            "ts": iso_utc(times[k])[:-1] + f".{times[k] % 1000:03d}Z",
            "lat": round(float(lat[k]), 6),
            "lon": round(float(lon[k]), 6),
            "speed_kmh": round(float(v[k]) * 3.6, 1),
            "heading_deg": round(float(bearing[k]), 1),
            "hdop": 1.0,
            "sats": 9,
        }
        body.update(over)
        return body

    def add(k: int, device_id: str, suffix: str, payload: bytes, reason: str | None) -> None:
        d.extras.append(SimMessage(suffix, device_id, payload, times[k]))
        if reason is not None:
            d.expected_dead_letters.append(
                {"device_id": device_id, "topic_suffix": suffix, "reason": reason}
            )

    add(0, gps, "position", encode(fix(0))[:-20], "bad_json")
    add(1, lock, "lock", b"\xff\xfe\x00garbage\x81", "bad_json")
    no_ts = fix(2)
    del no_ts["ts"]
    add(2, gps, "position", encode(no_ts), "schema")
    add(3, lock, "lock", encode({"ts": times[3], "event": "opened", "battery_pct": 50}), "schema")
    add(4, gps, "position", encode(fix(4, lat=95.5)), "out_of_range")
    add(5, gps, "position", encode(fix(5, device_id=f"{gps}-x")), "topic_mismatch")
    add(6, f"{gps}-ghost", "position", encode(fix(6)), "unknown_device")
    add(7, gps, "position", encode(fix(7, pad="x" * TOO_LARGE_BYTES)), "too_large")
    add(8, gps, "position", encode(fix(8, ts=times[8] + 2 * 3_600_000)), "future_ts")
    add(9, f"{gps}*bad", "position", encode(fix(9)), "bad_topic")
    # a backlog array: two good fixes kept, one out-of-range element dead-lettered
    good_a = fix(10)
    good_b = fix(10, ts=times[10] + 3_000, lat=round(float(lat[10]) + 1e-5, 6))
    bad = fix(10, ts=times[10] + 6_000, lon=222.0)
    add(10, gps, "position", encode([good_a, good_b, bad]), "out_of_range")
    # stored, flagged invalid for rules, not a dead letter
    add(11, gps, "position", encode(fix(11, lat=0.0, lon=0.0)), None)
    d.marks["incident"] = times[0]
