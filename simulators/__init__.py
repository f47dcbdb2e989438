"""Simulated trucks and e-locks publishing per contract §2 over MQTT.

Public API::

    build_scenario(name, *, seed=0, start_ms, trip_id=None, shipper="pg", device_prefix="",
                   noise="clean")
    build_fleet(n, *, seed, start_ms, incidents=(), shipper_cycle=("pg", "unilever"),
                noise="clean" | "mixed" | a kind of NOISE_KINDS)
    scenario_names(gnss=False)
    await publish(trips, mqtt_url, *, speed=60.0, rate_limit=None, clock=None, qos=1,
                  progress=None, prefix="devices")
    await run_cli(mqtt_url, trucks, scenario, speed, rate, seed)

See docs/simulators.md.
"""

from simulators.errors import PublishError, ScenarioError, SimulatorError
from simulators.fleet import build_fleet, iter_fleet_messages
from simulators.gnss import NOISE_KINDS, GnssErrors
from simulators.model import SimMessage, SimTrip
from simulators.publish import publish, register, run_cli
from simulators.scenarios import (
    GNSS_INCIDENTS,
    INCIDENTS,
    NEEDS_V2_ENGINE,
    build_scenario,
    scenario_names,
)

__all__ = [
    "GNSS_INCIDENTS",
    "INCIDENTS",
    "NEEDS_V2_ENGINE",
    "NOISE_KINDS",
    "GnssErrors",
    "PublishError",
    "ScenarioError",
    "SimMessage",
    "SimTrip",
    "SimulatorError",
    "build_fleet",
    "build_scenario",
    "iter_fleet_messages",
    "publish",
    "register",
    "run_cli",
    "scenario_names",
]
