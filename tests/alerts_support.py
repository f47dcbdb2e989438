"""Shared helpers of the alerts tests: a store, engine events, a raw HTTP webhook receiver."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rules.events import AlarmSignal, AlarmType
from telemetry.store.base import Store
from telemetry.store.sqlite import SqliteStore

T0 = 1_795_334_400_000  # ManualClock's default start


def make_store(tmp_path: Path) -> Store:
    """A migrated SQLite store in ``tmp_path``."""
    store = SqliteStore(str(tmp_path / "cargowatch.db"))
    store.migrate()
    return store


def put_trip(store: Store, trip_id: str = "T1", shipper: str = "pg", **extra: Any) -> None:
    store.put_trip(
        {
            "trip_id": trip_id,
            "shipper": shipper,
            "devices": [f"lock-{trip_id}"],
            "status": "active",
            "planned_start": T0,
            **extra,
        }
    )


def signal(
    type: AlarmType = AlarmType.LOCK_TAMPER,
    trip_id: str = "T1",
    shipper: str = "pg",
    episode: str = "e1",
    **extra: Any,
) -> AlarmSignal:
    return AlarmSignal(
        type=type,
        trip_id=trip_id,
        shipper=shipper,
        device_id=f"lock-{trip_id}",
        ts=T0 - 5_000,
        episode=episode,
        lat=31.23,
        lon=121.47,
        **extra,
    )


def check_signature(secret: str, body: bytes, header: str) -> bool:
    """An implementation of §6 independent of alerts.signing."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    mac = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), fields["v1"])


@dataclass
class Receiver:
    """A raw HTTP/1.1 server on 127.0.0.1 that answers each POST per ``plan``.

    ``plan`` is consumed one item per request: an int status, or ``"hang"`` (never answer);
    when empty, ``default`` applies. Every request is recorded; ``events`` keeps the first
    copy of each event id (what a de-duplicating receiver processes).
    """

    secret: str
    plan: list[int | str] = field(default_factory=list)
    default: int | str = 200
    requests: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    hanging: int = 0
    bad_signatures: int = 0

    async def start(self) -> Receiver:
        self._release = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        self._release.set()
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            envelope = json.loads(body)
            signed = check_signature(self.secret, body, headers.get("cargowatch-signature", ""))
            self.requests.append({"headers": headers, "body": body, "envelope": envelope})
            if not signed:
                self.bad_signatures += 1
            action = self.plan.pop(0) if self.plan else self.default
            if action == "hang":
                self.hanging += 1
                await self._release.wait()
                return
            if action == 200 and signed and envelope["id"] not in {e["id"] for e in self.events}:
                self.events.append(envelope)
            reply = f"HTTP/1.1 {action} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            writer.write(reply.encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
