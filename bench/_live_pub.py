"""The live ladder's publisher: ``python -m bench._live_pub SPEC.json``, one process.

Publishes GPS fixes at a fixed rate (QoS 1, MQTT 3.1.1 over a raw socket: paho tops out near
5k msg/s in Python, this several times that) spread over the fleet's GPS units, each stamped
with the time it is sent, plus timed ``tamper`` triggers on given locks. Writes a JSON summary
to ``SPEC["out"]``: sent, acknowledged, achieved rate, and each trigger's (lock, ts).

SPEC: host, port, username?, password?, gps (device ids), rate, duration_s, first_seq,
triggers ([at_s, lock_id] pairs), out.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import uuid
from typing import Any

import orjson

from tests.services import _str, _varlen  # the MQTT framing of the fast test publisher

WINDOW = 20_000  # unacknowledged messages at most (packet ids are 16-bit)


class Publisher:
    def __init__(self, host: str, port: int, user: str | None, password: str | None) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flags = 0x02 | (0x80 if user else 0) | (0x40 if password else 0)
        cid = f"live-pub-{uuid.uuid4().hex[:10]}".encode()
        body = _str(b"MQTT") + b"\x04" + bytes([flags]) + (120).to_bytes(2, "big") + _str(cid)
        if user:
            body += _str(user.encode())
        if password:
            body += _str(password.encode())
        self.sock.sendall(b"\x10" + _varlen(len(body)) + body)
        ack = self.sock.recv(4)
        if ack[:2] != b"\x20\x02" or ack[3] != 0:
            raise SystemExit(f"CONNACK refused: {ack!r}")
        self.mid = 0
        self.sent = 0
        self.acked = 0
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        rest = 0
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            rest += len(data)  # only PUBACKs (4 bytes each) come back
            with self._cond:
                self.acked += rest // 4
                rest %= 4
                self._cond.notify_all()

    def publish(self, items: list[tuple[str, bytes]]) -> None:
        buf = bytearray()
        for topic, payload in items:
            self.mid = self.mid % 65535 + 1
            var = _str(topic.encode()) + self.mid.to_bytes(2, "big")
            buf += b"\x32" + _varlen(len(var) + len(payload)) + var + payload
        with self._cond:
            while self.sent + len(items) - self.acked > WINDOW:
                self._cond.wait(1.0)
        self.sock.sendall(buf)
        self.sent += len(items)

    def finish(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.acked < self.sent and time.monotonic() < deadline:
                self._cond.wait(0.5)
        self.sock.sendall(b"\xe0\x00")
        self.sock.close()


def run(spec: dict[str, Any]) -> dict[str, Any]:
    pub = Publisher(spec["host"], spec["port"], spec.get("username"), spec.get("password"))
    gps: list[str] = spec["gps"]
    rate = float(spec["rate"])
    duration = float(spec["duration_s"])
    triggers = sorted((float(at), lock) for at, lock in spec["triggers"])
    fired: list[tuple[str, int]] = []
    seq = int(spec.get("first_seq", 0))
    i = 0
    t0 = time.monotonic()
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= duration:
            break
        due = int(rate * elapsed) - i
        now_ms = int(time.time() * 1000)
        items: list[tuple[str, bytes]] = []
        for _ in range(max(0, min(due, 2000))):
            device = gps[i % len(gps)]
            k = i // len(gps)
            # A parked unit's GNSS noise, under a metre between fixes: at the quick
            # ladder's 6-7 fixes a second per unit, steps of 11 m (this publisher before
            # 2026-12-06) read as 250+ km/h jumps and made most fixes gps_jump rejects.
            body: dict[str, Any] = {
                "ts": now_ms,
                "lat": 31.45 - 0.000005 * (k % 7),
                "lon": 121.10 + 0.000005 * (k % 5),
                "speed_kmh": 0.0,
                "seq": seq + i,
            }
            items.append((f"devices/{device}/position", orjson.dumps(body)))
            i += 1
        while triggers and triggers[0][0] <= elapsed:
            _, lock = triggers.pop(0)
            ts = int(time.time() * 1000)
            trigger = {"ts": ts, "event": "tamper", "seq": seq + i}
            items.append((f"devices/{lock}/lock", orjson.dumps(trigger)))
            fired.append((lock, ts))
        if items:
            pub.publish(items)
        else:
            time.sleep(0.002)
    elapsed = time.monotonic() - t0
    pub.finish(30.0)
    return {
        "sent": pub.sent,
        "acked": pub.acked,
        "fixes": i,
        "elapsed_s": elapsed,
        "achieved_msg_per_s": i / elapsed if elapsed else 0.0,
        "triggers": fired,
        "cpu_s": time.process_time(),
    }


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    result = run(spec)
    with open(spec["out"], "w") as f:
        json.dump(result, f)
