"""The fault benchmark's publishers: paho-mqtt at QoS 1, each in its own process, recording
which messages the broker acknowledged (PUBACK) — the ground truth every count starts from.

Two modes, started by ``bench.faults`` as ``python -m bench._fault_pub SPEC.json``:

- ``fleet``: a pickled list of simulated trips plus extra messages (the tamper triggers),
  published when the shared accelerated clock reaches each message's ``at_ms``;
- ``flood``: fixes of registered idle devices at a fixed real-time rate (overload).

Progress goes to stdout as JSON lines about twice a second; at the end (source exhausted, or
SIGTERM) the acknowledged keys are written to ``SPEC["out"]`` as JSON.
paho re-sends unacknowledged QoS 1 messages itself after a reconnect; packet ids are 16-bit,
so at most ``MAX_OUTSTANDING`` messages are left unacknowledged at once.
"""

from __future__ import annotations

import collections
import heapq
import json
import pickle
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import paho.mqtt.client as paho

MAX_OUTSTANDING = 30_000  # well under 65,535 packet ids
Key = tuple[str, int, int]  # device_id, ts (epoch ms), seq
NO_SEQ = -(2**63)  # how the store writes a missing seq


def message_key(device_id: str, payload: bytes) -> Key:
    """(device, ts, seq) of a payload, as the store keys it (ts in epoch ms)."""
    body = orjson.loads(payload)
    ts = body["ts"]
    if isinstance(ts, str):
        ts = round(datetime.fromisoformat(ts).timestamp() * 1000)
    seq = body.get("seq")
    return device_id, int(ts), NO_SEQ if seq is None else int(seq)


class AckingPublisher:
    """A paho client (own network thread) that remembers what was acknowledged."""

    def __init__(self, port: int, client_id: str) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_publish = self._on_publish
        self._acks: collections.deque[int] = collections.deque()
        self._early: set[int] = set()
        self.pending: dict[int, tuple[str, Key]] = {}
        self.acked: dict[str, list[Key]] = {"position": [], "lock": []}
        self.sent = 0
        self.refused = 0
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._acks.append(mid)  # the network thread only appends: mapping is done by the caller

    def settle(self) -> None:
        while self._acks:
            mid = self._acks.popleft()
            item = self.pending.pop(mid, None)
            if item is None:
                self._early.add(mid)  # PUBACK processed before publish() returned its mid
            else:
                self.acked[item[0]].append(item[1])

    def publish(self, topic: str, kind: str, key: Key, payload: bytes) -> None:
        while len(self.pending) >= MAX_OUTSTANDING:
            time.sleep(0.005)
            self.settle()
        info = self.client.publish(topic, payload, qos=1)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            self.refused += 1  # not queued by paho: never sent, never acknowledged
            return
        self.sent += 1
        if info.mid in self._early:
            self._early.discard(info.mid)
            self.acked[kind].append(key)
        else:
            self.pending[info.mid] = (kind, key)
        self.settle()

    def wait_all(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.02)
            self.settle()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def progress(self, **extra: Any) -> dict[str, Any]:
        self.settle()
        return {
            "t": time.time(),
            "acked_fixes": len(self.acked["position"]),
            "acked_locks": len(self.acked["lock"]),
            "sent": self.sent,
            "pending": len(self.pending),
            **extra,
        }


def _fleet_messages(spec: dict[str, Any]) -> Iterator[tuple[int, str, str, bytes]]:
    """(at_ms, device_id, topic_suffix, payload) of the trips and the extras, in time order."""
    from simulators import iter_fleet_messages

    with open(spec["fleet"], "rb") as fh:
        trips, extras = pickle.load(fh)
    a = ((m.at_ms, m.device_id, m.topic_suffix, m.payload) for m in iter_fleet_messages(trips))
    b = ((m.at_ms, m.device_id, m.topic_suffix, m.payload) for m in extras)
    end = spec["end_ms"]
    for item in heapq.merge(a, b, key=lambda m: m[0]):
        if item[0] > end:
            return
        yield item


def run_fleet(spec: dict[str, Any], pub: AckingPublisher, stop: threading.Event) -> None:
    from core.clock import ScaledClock

    clock = ScaledClock(spec["speed"], start_ms=spec["start_ms"], anchor_ms=spec["anchor_ms"])
    last = 0.0
    for at_ms, device, kind, payload in _fleet_messages(spec):
        while not stop.is_set() and (ahead := at_ms - clock.now_ms()) > 0:
            time.sleep(min(ahead / 1000 / spec["speed"], 0.05))
            pub.settle()
        if stop.is_set():
            return
        pub.publish(f"devices/{device}/{kind}", kind, message_key(device, payload), payload)
        if time.monotonic() - last > 0.5:
            last = time.monotonic()
            _report(pub.progress(event_ms=at_ms, lag_ms=max(0, clock.now_ms() - at_ms)))


def run_flood(spec: dict[str, Any], pub: AckingPublisher, stop: threading.Event) -> None:
    """``rate`` fixes per real second (0: as fast as possible) for ``seconds``, round-robin over
    ``devices``; event time follows the shared clock, one ms apart at least per device."""
    from core.clock import ScaledClock

    clock = ScaledClock(spec["speed"], start_ms=spec["start_ms"], anchor_ms=spec["anchor_ms"])
    devices: list[str] = spec["devices"]
    last_ts = dict.fromkeys(devices, 0)
    rate, t0 = float(spec["rate"]), time.monotonic()
    end = t0 + float(spec["seconds"])
    n, last = 0, 0.0
    while not stop.is_set() and (now := time.monotonic()) < end:
        if rate > 0 and (due := t0 + n / rate) > now:
            time.sleep(min(due - now, 0.05))
            continue
        dev = devices[n % len(devices)]
        ts = last_ts[dev] = max(last_ts[dev] + 1, clock.now_ms() - 1000)
        k = n // len(devices)
        body = {
            "ts": ts,
            "lat": -17.0 - (n % len(devices)) * 1e-3 - k * 1e-6,
            "lon": 145.7 + k * 1e-6,
            "speed_kmh": 40.0,
            "heading_deg": 180,
            "hdop": 0.9,
            "sats": 10,
            "battery_pct": 90,
            "seq": k,
        }
        pub.publish(f"devices/{dev}/position", "position", (dev, ts, k), orjson.dumps(body))
        n += 1
        if now - last > 0.5:
            last = now
            _report(pub.progress(rate=round(n / max(now - t0, 1e-3), 1)))


def _report(progress: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(progress) + "\n")
    sys.stdout.flush()


def main(path: str) -> int:
    with open(path) as fh:
        spec = json.load(fh)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pub = AckingPublisher(spec["port"], spec["client_id"])
    t0 = time.monotonic()
    try:
        (run_fleet if spec["mode"] == "fleet" else run_flood)(spec, pub, stop)
        pub.wait_all(0 if stop.is_set() else float(spec.get("ack_wait_s", 120)))
    finally:
        pub.settle()
        _report(pub.progress(done=True, seconds=round(time.monotonic() - t0, 3)))
        with open(spec["out"], "w") as fh:
            json.dump(
                {
                    "fixes": pub.acked["position"],
                    "locks": pub.acked["lock"],
                    "sent": pub.sent,
                    "refused": pub.refused,
                    "unacked": len(pub.pending),
                    "seconds": round(time.monotonic() - t0, 3),
                },
                fh,
            )
        pub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
