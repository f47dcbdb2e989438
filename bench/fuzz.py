"""Fuzzing of device input: generated and mutated MQTT messages through the real parser and
the real pipeline (``telemetry.parse.parse_message``, ``cargowatch.pipeline.Pipeline.process``
on SQLite, with an active trip so the rules run on what is stored).

    python -m bench.fuzz            # 1,000,000 messages (the figure in docs/reliability.md)
    python -m bench.fuzz --quick    # 5,000 (the test suite runs this)

Messages start from real ones (fixes, lock events, backlogs) and are mutated: truncated,
fields swapped for other JSON types, huge and tiny numbers, NaN/Infinity, deep nesting, odd
unicode (lone surrogates, NUL, bidi and zero-width characters, invalid UTF-8), payloads at
the 64 KiB and 256 KiB edges, wrong and hostile topics, byte flips. Counted as a crash: an
exception out of the parser or the pipeline, the parser's last-resort "internal parser
error" dead letter, a rule-engine failure, or a message element that is neither stored nor
dead-lettered with a reason (a backlog array counts each element).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telemetry.ingest import RawMessage
from telemetry.parse import parse_message

T0 = 1_795_334_400_000
PREFIX = "devices"
# 40 trips of a GPS unit and an e-lock each: the rules' work per trip stays that of a truck
TRIPS = 40
DEVICES = tuple(f"fz-{kind}-{n}" for n in range(TRIPS) for kind in ("gps", "lock"))
KIB = 1024
QUICK = 5_000
FULL = 1_000_000
ODD_TEXT = [
    "\u0000",
    "\ud800",
    "\udfff",
    "\u202e",
    "\u200b",
    "\ufeff",
    "沪A12345",
    "🚚",
    "a" * 300,
    "\\",
    '"',
    "",
]
ODD_NUMBERS: list[Any] = [
    0,
    -0.0,
    1e308,
    -1e308,
    5e-324,
    2**63,
    -(2**63) - 1,
    10**30,
    1.7976931348623157e308,
    91,
    -181,
    360.5,
    0.1,
    True,
    False,
]
RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 400, "0x10", "01", "+1"]


def _fix(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "ts": T0 + i * 10_000 if rng.random() < 0.7 else _iso(T0 + i * 10_000),
        "lat": 31.45 - i * 1e-4,
        "lon": 121.10 + i * 1e-4,
        "speed_kmh": rng.uniform(0, 120),
        "heading_deg": rng.randrange(360),
        "hdop": 0.9,
        "sats": 11,
        "battery_pct": rng.randrange(101),
        "seq": i,
    }


def _lock(rng: random.Random, i: int) -> dict[str, Any]:
    event = rng.choice(["locked", "unlocked", "tamper", "heartbeat", "low_battery"])
    return {
        "ts": T0 + i * 10_000,
        "event": event,
        "method": rng.choice(["rfid", "password", "remote", None]),
        "lat": 31.45,
        "lon": 121.10,
        "battery_pct": 80,
        "seq": i,
    }


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _odd_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(7)
    if pick == 0:
        return rng.choice(ODD_TEXT)
    if pick == 1:
        return rng.choice(ODD_NUMBERS)
    if pick == 2:
        return None
    if pick == 3 and depth < 3:
        return [_odd_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if pick == 4 and depth < 3:
        return {rng.choice(ODD_TEXT): _odd_value(rng, depth + 1)}
    if pick == 5:
        return rng.choice(["2026-11-22T08:00:05+14:00", "2026-13-40T25:61:61Z", "yesterday"])
    return rng.randrange(-(10**15), 10**15)


def _nested(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else '{"a":' * depth + "1" + "}" * depth


def _padded(record: dict[str, Any], size: int) -> bytes:
    """``record`` with an extra field so that the payload is exactly ``size`` bytes."""
    base = json.dumps({**record, "pad": ""}).encode()
    return json.dumps({**record, "pad": "x" * max(0, size - len(base))}).encode()


def _topic(rng: random.Random, device: str, kind: str) -> str:
    r = rng.random()
    if r < 0.9:
        return f"{PREFIX}/{device}/{kind}"
    return rng.choice(
        [
            f"{PREFIX}/{device}/{'lock' if kind == 'position' else 'position'}",  # wrong kind
            f"{PREFIX}/unknown-dev/{kind}",
            f"{PREFIX}/{'x' * 65}/{kind}",
            f"{PREFIX}//{kind}",
            f"{PREFIX}/{device}/{kind}/extra",
            f"other/{device}/{kind}",
            f"{PREFIX}/dev ice/{kind}",
            f"{PREFIX}/🚚/{kind}",
            f"{PREFIX}/{device}",
            "",
            f"{PREFIX}/{device}/status",
        ]
    )


def _payload(rng: random.Random, i: int, kind: str) -> bytes:
    make = _fix if kind == "position" else _lock
    record = make(rng, i)
    choice = rng.randrange(14)
    if choice == 0:  # a valid message
        return json.dumps(record).encode()
    if choice == 1:  # a backlog mixing good and bad elements
        items: list[Any] = [make(rng, i * 100 + k) for k in range(rng.randrange(0, 8))]
        if items and rng.random() < 0.5:
            items[rng.randrange(len(items))] = _odd_value(rng)
        return json.dumps(items).encode()
    if choice == 2:  # a field swapped for another JSON type or value
        key = rng.choice(list(record))
        record[key] = _odd_value(rng)
        return json.dumps(record, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    if choice == 3:  # truncated
        raw = json.dumps(record).encode()
        return raw[: rng.randrange(len(raw))]
    if choice == 4:  # a raw number token the JSON standard does not have, or a huge one
        key = rng.choice(["lat", "lon", "ts", "speed_kmh", "seq", "battery_pct"])
        raw = json.dumps({**record, key: "@@"}).encode()
        return raw.replace(b'"@@"', rng.choice(RAW_NUMBERS).encode())
    if choice == 5:  # deep nesting, in a field or as the whole payload
        depth = rng.choice([10, 100, 1000, 100_000])
        nested = _nested(depth, rng.choice(["list", "dict"]))
        if rng.random() < 0.5:
            return nested.encode()
        return json.dumps({**record, "extra": "@@"}).encode().replace(b'"@@"', nested.encode())
    if choice == 6:  # the size edges: 64 KiB (dead letter truncation), 256 KiB (too_large)
        size = rng.choice([64 * KIB - 1, 64 * KIB, 64 * KIB + 1, 256 * KIB, 256 * KIB + 1])
        return _padded(record, size)
    if choice == 7:  # byte flips, invalid UTF-8
        flipped = bytearray(json.dumps(record).encode())
        for _ in range(rng.randrange(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        return bytes(flipped)
    if choice == 8:  # odd unicode in text fields (escaped or raw)
        record[rng.choice(["method", "event", "note", "device_id"])] = rng.choice(ODD_TEXT)
        if rng.random() < 0.5:
            return json.dumps(record).encode()
        return json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if choice == 9:  # not an object at all
        return rng.choice([b"null", b"true", b"42", b'"text"', b"", b" ", b"\x00", b"\xff\xfe"])
    if choice == 10:  # times: future, negative, odd formats
        record["ts"] = rng.choice(
            [T0 + 10**9, -1, 0, 2**53, "2026-11-22T08:00:60Z", "2026-11-22 08:00:05", 1e12]
        )
        return json.dumps(record).encode()
    if choice == 11:  # a payload device_id that is not the topic's
        record["device_id"] = rng.choice(DEVICES)
        return json.dumps(record).encode()
    if choice == 12:  # a duplicate of a recent message (a redelivery)
        j = max(0, i - rng.randrange(1, 50))
        return json.dumps(make(random.Random(j), j)).encode()
    del record[rng.choice(list(record))]  # a field missing
    return json.dumps(record).encode()


def messages(seed: int, count: int) -> Iterator[RawMessage]:
    """``count`` generated messages, reproducible from ``seed``."""
    rng = random.Random(seed)
    for i in range(count):
        device = rng.choice(DEVICES)
        kind = "position" if "gps" in device else "lock"
        if rng.random() < 0.1:
            kind = "lock" if kind == "position" else "position"
        # received just after the time its (unmutated) record carries
        yield RawMessage(_topic(rng, device, kind), _payload(rng, i, kind), T0 + i * 10_000 + 500)


@dataclass
class Report:
    messages: int = 0
    elements: int = 0
    stored: int = 0
    dead_letters: int = 0
    crashes: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    parse_s: float = 0.0
    pipeline_s: float = 0.0

    def crash(self, what: str) -> None:
        self.crashes += 1
        if len(self.examples) < 10:
            self.examples.append(what[:300])


def _elements(payload: bytes) -> int | None:
    """How many records a payload holds when it is a JSON array, else None (one message)."""
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return len(value) if isinstance(value, list) else None


def run(count: int, *, seed: int = 15, batch: int = 2_000, workdir: Path | None = None) -> Report:
    """Fuzz ``count`` messages through the parser and the pipeline."""
    from cargowatch.runtime import Runtime
    from cargowatch.settings import Settings

    report = Report()
    with tempfile.TemporaryDirectory(prefix="cw-fuzz-") as tmp:
        db = (workdir or Path(tmp)) / "fuzz.sqlite"
        runtime = Runtime.open(Settings(db_url=f"sqlite:///{db}", mqtt_url=None))
        try:
            for device in DEVICES:
                kind = "gps" if "gps" in device else "lock"
                runtime.register_device({"device_id": device, "kind": kind})
            for n in range(TRIPS):
                runtime.create_trip(_trip(n))
            pipeline = runtime.pipeline
            rule_errors = pipeline.metrics.rule_errors
            pending: list[RawMessage] = []
            for message in messages(seed, count):
                _check_parse(message, report)
                pending.append(message)
                if len(pending) >= batch:
                    _process(pipeline, pending, report)
                    pending = []
            if pending:
                _process(pipeline, pending, report)
            if rule_errors._value.get():
                report.crash(f"rule engine failed on {rule_errors._value.get():g} batches")
            counts = runtime.store.count_telemetry()
            report.stored = counts["fixes"] + counts["lock_events"]
            report.dead_letters = counts["dead_letters"]
        finally:
            runtime.close()
    return report


def _trip(n: int) -> dict[str, Any]:
    return {
        "trip_id": f"FUZZ-{n}",
        "shipper": "fuzz",
        "devices": [f"fz-gps-{n}", f"fz-lock-{n}"],
        "origin": {"geometry": {"type": "Point", "coordinates": [121.10, 31.45]}},
        "route": {"type": "LineString", "coordinates": [[121.10, 31.45], [121.47, 31.23]]},
        "stops": [{"stop_id": "S1", "geometry": {"type": "Point", "coordinates": [121.47, 31.23]}}],
        "planned_start": T0 - 3_600_000,
    }


def _check_parse(message: RawMessage, report: Report) -> None:
    t = time.perf_counter()
    try:
        parsed = parse_message(message.topic, message.payload, message.received_at, PREFIX)
    except Exception as exc:  # the parser promises never to raise
        report.crash(f"parse_message raised {exc!r} on {message.topic!r} {message.payload[:80]!r}")
        return
    finally:
        report.parse_s += time.perf_counter() - t
    report.messages += 1
    outcomes = len(parsed.fixes) + len(parsed.lock_events) + len(parsed.dead_letters)
    expected = _elements(message.payload) if len(message.payload) <= 256 * KIB else None
    if any("internal parser error" in (d.detail or "") for d in parsed.dead_letters):
        report.crash(f"internal parser error on {message.topic!r} {message.payload[:80]!r}")
    # an array: one outcome per element, or one dead letter for the whole message (its topic)
    whole = outcomes == 1 and len(parsed.dead_letters) == 1
    if not whole and outcomes != (1 if expected is None else expected):
        report.crash(f"{outcomes} outcomes for {expected} element(s): {message.payload[:80]!r}")
    report.elements += 1 if expected is None else expected
    for d in parsed.dead_letters:
        if not d.reason:
            report.crash(f"dead letter without a reason: {d}")
        report.reasons[str(d.reason)] += 1


def _process(pipeline: Any, pending: list[RawMessage], report: Report) -> None:
    t = time.perf_counter()
    try:
        pipeline.process(pending)
    except Exception as exc:
        report.crash(f"Pipeline.process raised {exc!r}")
    report.pipeline_s += time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK:,} messages")
    parser.add_argument("--count", type=int, default=None, help=f"messages (default {FULL:,})")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args(argv)
    count = args.count or (QUICK if args.quick else FULL)
    started = time.perf_counter()
    report = run(count, seed=args.seed)
    wall = time.perf_counter() - started
    print(
        f"{report.messages:,} messages ({report.elements:,} elements) in {wall:.1f} s: "
        f"parser {report.parse_s:.1f} s, pipeline {report.pipeline_s:.1f} s; "
        f"{report.stored:,} stored (new), {report.dead_letters:,} dead letters; "
        f"crashes: {report.crashes}"
    )
    print(
        "dead letters by reason: "
        + ", ".join(f"{k} {v:,}" for k, v in report.reasons.most_common())
    )
    for example in report.examples:
        print("  crash:", example, file=sys.stderr)
    return 1 if report.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
