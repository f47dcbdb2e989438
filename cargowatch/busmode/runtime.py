"""``serve --bus``: the API, alarm handling (escalation), webhooks and e-mail, plus
``--workers N`` engine workers in the same process; any number of these may run.

The differences from ``serve --mqtt`` (``cargowatch.runtime.Runtime``):

- no MQTT ingest, no pipeline and no tick loop of its own: telemetry is the workers' (local
  ones here, or ``cargowatch worker`` processes);
- its engine gate holds no trips (``apigate``): API changes load the trip they name from the
  store and tell the workers after the commit (``control``);
- its live hub is relayed over NATS (``live``), so ``/v1/live`` shows every process's events;
- escalations and webhook deliveries are claimed with leases in the store, so several serve
  processes share them without doing anything twice;
- both stages' lag (``lag``) — device messages not yet re-keyed, re-keyed ones not yet
  evaluated — is read every second for ``/healthz`` (``reasons``) and the metrics
  (``cargowatch_bus_pending_messages``, ``cargowatch_bus_partitions_behind``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from cargowatch.busmode.apigate import ApiGate
from cargowatch.busmode.control import ControlPublisher
from cargowatch.busmode.lag import LagMonitor
from cargowatch.busmode.live import LiveRelay
from cargowatch.runtime import Runtime
from cargowatch.services import EngineGate
from cargowatch.settings import Settings
from cargowatch.worker import BusWorker, connect, stream_limits
from core.clock import Clock
from telemetry.bus.streams import discover_layout, ensure_streams
from telemetry.store import Store


class BusRuntime(Runtime):
    def __init__(self, settings: Settings, *, store: Store, clock: Clock | None = None) -> None:
        self.control = ControlPublisher()
        self.workers: list[BusWorker] = []
        self.relay: LiveRelay | None = None
        self.lag = LagMonitor()
        super().__init__(settings, store=store, clock=clock)
        self.lag.bind(self.metrics.registry)

    def _make_gate(self) -> EngineGate:
        return ApiGate(self.store, self.alarms, self.clock, notify=self.control)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Runtime]:
        assert self.settings.bus_url
        nc = await connect(self.settings.bus_url, "cargowatch-serve")
        relay = self.relay = LiveRelay(self.hub, nc, receive=True)
        await relay.start()
        self.control.attach(nc)
        self.workers = [
            BusWorker(
                self.settings,
                store=self.store,
                clock=self.clock,
                hub=self.hub,
                metrics=self.metrics,
            )
            for _ in range(self.settings.workers)
        ]
        try:
            layout = await discover_layout(nc)
            # serve may start before any worker: the devices' messages need their streams
            await ensure_streams(
                nc.jetstream(),
                *stream_limits(self.settings),
                replicas=self.settings.bus_replicas,
                layout=layout,
            )
            async with asyncio.TaskGroup() as tg:
                loops = [
                    tg.create_task(self.alarms.run(), name="escalation"),
                    tg.create_task(self.webhooks.run(), name="webhooks"),
                    tg.create_task(
                        self.lag.run(nc.jetstream(), layout.partitions, layout.trip_partitions),
                        name="bus-lag",
                    ),
                ]
                workers = [
                    tg.create_task(w.run(), name=f"worker-{i}") for i, w in enumerate(self.workers)
                ]
                self.started = True
                try:
                    yield self
                finally:
                    self.started = False
                    # Workers first: each hands its partitions over (leases released).
                    for t in workers:
                        t.cancel()
                    for t in workers:
                        with contextlib.suppress(asyncio.CancelledError):
                            await t
                    for t in loops:
                        t.cancel()
        finally:
            self.control.detach()
            await relay.stop()
            with contextlib.suppress(Exception):
                await nc.drain()

    def health(self) -> dict[str, Any]:
        doc = super().health()
        reasons = self.lag.reasons()
        if reasons:
            doc["reasons"] = [*doc["reasons"], *reasons]
            doc["status"] = "degraded"
        doc["bus"] = {
            "workers": [
                {
                    "owner": w.owner,
                    "device_partitions": sorted(w.owned[0]),
                    "trip_partitions": sorted(w.owned[1]),
                }
                for w in self.workers
            ],
            "live_relay": self.relay is not None,
            "pending": {
                stage: {"waiting": self.lag.waiting(stage), "in_flight": self.lag.in_flight(stage)}
                for stage in ("devices", "trips")
            },
        }
        return doc
