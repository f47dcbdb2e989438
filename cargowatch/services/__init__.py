"""What the API (and the demo) asks of the running system, one service per resource.

Each service validates through the engine's own checks — ``rules.validate_rules`` for rule
thresholds and ``alerts.validate_sla`` for alarm deadlines — before anything is stored, so a
value the engine would refuse never reaches the store.
"""

from cargowatch.services.devices import DeviceService
from cargowatch.services.engine import EngineGate, load_engine
from cargowatch.services.geofences import GeofenceService
from cargowatch.services.keys import KeyService, hash_key
from cargowatch.services.replay import ReplayService
from cargowatch.services.shippers import ShipperService
from cargowatch.services.trips import TripService

__all__ = [
    "DeviceService",
    "EngineGate",
    "GeofenceService",
    "KeyService",
    "ReplayService",
    "ShipperService",
    "TripService",
    "hash_key",
    "load_engine",
]
