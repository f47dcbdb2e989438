"""Property test against the OpenAPI schema (schemathesis): no request makes a 5xx.

The app runs in a real uvicorn on a free port with its lifespan off, so the engine's loops
(and the webhook sender) never start: fuzzed webhook URLs are never called. Bounded:
a few examples per operation, for an admin key and a shipper key.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import response_schema_conformance

from api import create_app
from core.clock import ManualClock
from tests.api_world import ADMIN_KEY, OWN, make_runtime, trip_doc

MAX_EXAMPLES = 10
# An endless stream and a probe that is 503 by design while the engine does not run.
SKIPPED_PATHS = ("/v1/live", "/healthz")


class _Server:
    """uvicorn in a thread, serving one app without lifespan on a free port."""

    def __init__(self, app: Any) -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    runtime = make_runtime(Path(tmp_path_factory.mktemp("api-schema")), ManualClock())
    shipper_key = runtime.create_api_key("shipper", OWN, "schema test")["key"]
    runtime.create_trip(trip_doc("PG-SCHEMA-1", OWN, ["pg-schema-gps"]))
    app = create_app(runtime)
    try:
        with _Server(app) as server:
            yield server.url, {"admin": ADMIN_KEY, "shipper": shipper_key}
    finally:
        runtime.close()


# The schema does not depend on the runtime: build it from an app around none.
schema = schemathesis.openapi.from_dict(create_app(cast(Any, None)).openapi()).exclude(
    path=list(SKIPPED_PATHS)
)
# The coverage phase (every boundary of every parameter) takes most of a minute; it found
# nothing in runs of 200 examples per operation. The fuzzing phase stays.
schema.config.phases.coverage.enabled = False


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any, served: tuple[str, dict[str, str]]) -> None:
    url, keys = served
    for role, key in keys.items():
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        where = f"{role}: {case.method} {case.formatted_path} -> {response.status_code}"
        assert response.status_code < 500, f"{where}: {response.text[:300]}"
        if response.status_code >= 400:
            body = response.json()
            assert isinstance(body, dict) and set(body) == {"error"}, where
        case.validate_response(response, checks=[response_schema_conformance])
