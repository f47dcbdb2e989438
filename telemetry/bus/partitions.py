"""Subjects and partitions, computed exactly as the NATS server computes them.

A device publishes on the MQTT topic ``devices/{device_id}/{kind}``. The server's MQTT listener
turns the topic into the subject ``devices.{token}.{kind}``, where the token is the device id
with every ``.`` written as ``//`` (a ``.`` would otherwise split the subject). The account's
subject mapping ``partition(P,1)`` then hashes that *token* (FNV-1a, 32 bit, modulo P) and the
message is stored as ``part.{n}.devices.{token}.{kind}``. ``partition_of`` repeats that hash, so
any process knows which partition holds a device without asking the server (verified against a
real server in the tests, ids with ``.`` and ``:`` included).

Validated messages are re-keyed onto ``trip.{m}.{token}.{kind}``, where ``m`` is the trip's
partition (``trip_partition``), so that all of one trip's devices are read by one worker.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

DEVICE_PREFIX = "devices"
PART_PREFIX = "part"
TRIP_PREFIX = "trip"

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash (Go's ``hash/fnv.New32a``, which the server's mapping uses)."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def subject_token(device_id: str) -> str:
    """The subject token the server's MQTT listener makes of a device id (``.`` → ``//``)."""
    return device_id.replace(".", "//")


def device_of_token(token: str) -> str:
    """The device id back from its subject token."""
    return token.replace("//", ".")


def partition_of(device_id: str, partitions: int) -> int:
    """The device partition the server's ``partition(P,1)`` mapping puts ``device_id`` in."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return fnv1a_32(subject_token(device_id).encode()) % partitions


@functools.lru_cache(maxsize=1 << 16)  # per record in both stages: the hash is pure Python
def trip_partition(key: str, partitions: int) -> int:
    """The trip partition of a trip id (or, for a device on no trip, of its device id)."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return fnv1a_32(key.encode()) % partitions


def device_subject(device_id: str, kind: str, partition: int) -> str:
    """The subject a device's message is stored under in the device stream."""
    return f"{PART_PREFIX}.{partition}.{DEVICE_PREFIX}.{subject_token(device_id)}.{kind}"


def trip_subject(partition: int, device_id: str, kind: str) -> str:
    """The subject a re-keyed message is published on in the trip stream."""
    return f"{TRIP_PREFIX}.{partition}.{subject_token(device_id)}.{kind}"


@dataclass(frozen=True, slots=True)
class SubjectParts:
    partition: int
    device_id: str
    kind: str


@functools.lru_cache(maxsize=1 << 16)  # per delivered message; a device's subjects repeat
def parse_subject(subject: str) -> SubjectParts | None:
    """Partition, device id and kind of a device-stream or trip-stream subject, else None.

    ``part.3.devices.a//b.position`` → (3, "a.b", "position");
    ``trip.1.a//b.lock`` → (1, "a.b", "lock").
    """
    parts = subject.split(".")
    if len(parts) == 5 and parts[0] == PART_PREFIX and parts[2] == DEVICE_PREFIX:
        n, token, kind = parts[1], parts[3], parts[4]
    elif len(parts) == 4 and parts[0] == TRIP_PREFIX:
        n, token, kind = parts[1], parts[2], parts[3]
    else:
        return None
    if not n.isdigit() or not token:
        return None
    return SubjectParts(int(n), device_of_token(token), kind)
