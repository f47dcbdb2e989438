"""Errors of the simulators package.

CargowatchError
 └── SimulatorError            (anything the simulators raise)
      ├── ScenarioError        (unknown scenario, a road that cannot host it)
      └── PublishError         (broker unreachable for too long, bad MQTT URL)
"""

from __future__ import annotations

from core.errors import CargowatchError


class SimulatorError(CargowatchError):
    """The simulation could not be built or published."""


class ScenarioError(SimulatorError):
    """A scenario is unknown or could not be placed on any road."""


class PublishError(SimulatorError):
    """Publishing to the broker failed for good."""
