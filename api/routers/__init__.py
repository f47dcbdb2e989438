"""One router per resource; ``ROUTERS`` is the order they are mounted in."""

from api.routers import (
    alarms,
    carriers,
    dead_letters,
    devices,
    exceptions,
    geofences,
    health,
    keys,
    live,
    replay,
    reports,
    shippers,
    track,
    trips,
    webhooks,
)

ROUTERS = (
    devices.router,
    geofences.router,
    trips.router,
    track.router,
    alarms.router,
    exceptions.router,
    carriers.router,
    replay.router,
    live.router,
    webhooks.router,
    reports.router,
    dead_letters.router,
    shippers.router,
    keys.router,
    health.router,
)

__all__ = ["ROUTERS"]
