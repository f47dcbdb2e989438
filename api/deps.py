"""What the API needs from the running system, and how routes get it.

``RuntimeLike`` is the slice of ``cargowatch.runtime.Runtime`` the routers use; the app keeps
the one instance in ``app.state.runtime`` (no global), and routes receive it through the
``RuntimeDep`` dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request

from alerts import AlarmService, LiveHub
from alerts.targets import TargetGuard
from core.clock import Clock
from telemetry.store.base import Store


class RuntimeLike(Protocol):
    """The runtime as the API sees it (see ``cargowatch.runtime.Runtime``)."""

    store: Store
    clock: Clock
    clock_speed: float  # 1.0, or how much faster than real time the clock runs (the desk)
    tiles: str | None  # the desk's base map (XYZ URL template), if any
    alarms: AlarmService
    hub: LiveHub
    targets: TargetGuard  # the SSRF guard of webhook targets

    def running(self) -> AbstractAsyncContextManager[Any]: ...

    def register_device(self, doc: dict[str, Any]) -> dict[str, Any]: ...

    def device_credentials(self, device_id: str) -> dict[str, Any]: ...

    def revoke_device(self, device_id: str) -> None: ...

    def create_trip(self, doc: dict[str, Any]) -> dict[str, Any]: ...

    def end_trip(self, trip_id: str, status: str, by: str) -> dict[str, Any]: ...

    def put_shipper(self, doc: dict[str, Any]) -> dict[str, Any]: ...

    def put_geofence(self, feature: dict[str, Any]) -> dict[str, Any]: ...

    def trip_state(self, trip_id: str) -> dict[str, Any] | None: ...

    def replay(
        self,
        trip_ids: Sequence[str] | None,
        device_ids: Sequence[str] | None,
        since_ms: int | None,
        until_ms: int | None,
        overrides: dict[str, Any] | None,
    ) -> list[dict[str, Any]]: ...

    def metrics_text(self) -> bytes: ...

    def health(self) -> dict[str, Any]: ...

    def create_api_key(
        self, role: str, shipper: str | None, name: str | None
    ) -> dict[str, Any]: ...

    def lookup_api_key(self, secret: str) -> dict[str, Any] | None: ...

    def list_api_keys(self) -> list[dict[str, Any]]: ...

    def revoke_api_key(self, key_id: str) -> None: ...

    def assignable_names(self) -> set[str]: ...

    def put_carrier(
        self, carrier_id: str, name: str, contacts: list[dict[str, Any]]
    ) -> dict[str, Any]: ...

    def report_exception(self, trip_id: str, **fields: Any) -> dict[str, Any]: ...


def get_runtime(request: Request) -> RuntimeLike:
    """The runtime the app was created with."""
    runtime: RuntimeLike = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[RuntimeLike, Depends(get_runtime)]
