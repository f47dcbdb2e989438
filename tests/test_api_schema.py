"""Property test against the OpenAPI schema (schemathesis), positive and negative data, on
every route of the app, over the real TimescaleDB store.

For each operation schemathesis generates valid requests and requests that break the schema
(wrong types, missing fields, out-of-range values, odd strings: NUL and other control
characters included); each is sent with an admin key and with a shipper key. Every answer
must be below 500, an error must be the JSON ``{"error": {"code", "message"}}`` shape, and
the response must conform to the schema. Routes added later are picked up automatically.

The app runs in a real uvicorn on a free port with its lifespan off, so the engine's loops
(and the webhook sender) never start: fuzzed webhook URLs are never called. ``/healthz`` is
503 ("degraded", as documented) while the engine does not run; ``/v1/live`` is an endless
stream, so only its status and headers are read. Bounded and deterministic: a fixed number
of examples per operation, derandomized.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from api import create_app
from api.app import begin_shutdown
from api.limits import ApiLimits
from core.clock import ManualClock
from rules.events import AlarmSignal, AlarmType
from telemetry.store import open_store
from tests.api_world import ADMIN_KEY, OWN, T0, fence_feature, make_runtime, trip_doc
from tests.services import PostgresServer

MAX_EXAMPLES = 20
TRIP = "PG-SCHEMA-1"
LIVE = "/v1/live"
HEALTH = "/healthz"


class _Server:
    """uvicorn in a thread, serving one app without lifespan on a free port."""

    def __init__(self, app: Any) -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.app = app
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
        begin_shutdown(self.app)  # ends any live stream still open
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, pg_server: PostgresServer
) -> Iterator[tuple[str, dict[str, str]]]:
    store = open_store(pg_server.create_database())
    runtime = make_runtime(Path(tmp_path_factory.mktemp("api-schema")), ManualClock(), store)
    shipper_key = runtime.create_api_key("shipper", OWN, "schema test")["key"]
    runtime.create_trip(trip_doc(TRIP, OWN, ["pg-schema-gps"]))
    runtime.alarms.handle(
        [
            AlarmSignal(
                type=AlarmType.LOCK_TAMPER,
                trip_id=TRIP,
                shipper=OWN,
                device_id="pg-schema-gps",
                ts=T0,
                episode="schema-1",
            )
        ]
    )
    # every request comes from 127.0.0.1: the failed-key limit is not what is tested here
    app = create_app(runtime, heartbeat_s=0.2, limits=ApiLimits(key_failures_per_min=1_000_000))
    try:
        with _Server(app) as server:
            yield server.url, {"admin": ADMIN_KEY, "shipper": shipper_key}
    finally:
        runtime.close()


# The schema does not depend on the runtime: build it from an app around none.
schema = schemathesis.openapi.from_dict(create_app(cast(Any, None)).openapi())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
# The coverage phase (every boundary of every parameter) takes most of a minute; it found
# nothing in runs of 200 examples per operation. The fuzzing phase stays.
schema.config.phases.coverage.enabled = False


def _assert_error_shape(content_type: str, body: Any, where: str) -> None:
    assert content_type.startswith("application/json"), where
    assert isinstance(body, dict) and set(body) == {"error"}, f"{where}: {body!r}"
    error = body["error"]
    assert isinstance(error, dict), f"{where}: {body!r}"
    assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str), where


def _call_live(case: Any, url: str, headers: dict[str, str]) -> None:
    """An SSE stream never ends: read the status and the headers, then hang up."""
    kwargs = case.as_transport_kwargs(base_url=url, headers=headers)
    with requests.request(**kwargs, stream=True, timeout=10) as response:
        where = f"{case.method} {case.formatted_path} -> {response.status_code}"
        assert response.status_code < 500, where
        if response.status_code >= 400:
            _assert_error_shape(response.headers.get("content-type", ""), response.json(), where)
        else:
            assert response.status_code == 200, where
            ctype = response.headers.get("content-type", "")
            assert ctype.startswith("text/event-stream"), where


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
        headers = {"Authorization": f"Bearer {key}"}
        if case.path == LIVE:
            _call_live(case, url, headers)
            continue
        response = case.call(base_url=url, headers=headers, timeout=10)
        where = (
            f"{role}: {case.method} {case.formatted_path} query={case.query!r} "
            f"body={case.body!r} -> {response.status_code}: {response.text[:300]}"
        )
        if case.path == HEALTH:
            # degraded by design without the engine's loops; the 503 body is documented
            assert response.status_code in (200, 503), where
        else:
            assert response.status_code < 500, where
            if response.status_code >= 400:
                ctype = (response.headers.get("content-type") or [""])[0]
                _assert_error_shape(ctype, response.json(), where)
        case.validate_response(response, checks=[response_schema_conformance])


# -- bad text the store cannot keep --------------------------------------------------------

LONE_SURROGATE = "a\ud800b"


def _alarm_id(url: str) -> str:
    r = requests.get(f"{url}/v1/alarms?trip_id={TRIP}", headers=_admin(), timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()[0]["alarm_id"])


def _admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def _bodies(bad: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Requests that succeed with ordinary text in ``bad``'s place, each storing free text."""
    fence = fence_feature()
    fence["properties"]["name"] = bad
    trip = trip_doc("PG-SCHEMA-BAD", OWN, ["pg-schema-gps-2"], vehicle=bad)
    return [
        ("POST", "/v1/trips", trip),
        ("POST", "/v1/geofences", fence),
        ("POST", "/v1/keys", {"role": "shipper", "shipper": OWN, "name": bad}),
        ("POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/h", "secret": bad * 8}),
        ("POST", "/v1/alarms/{alarm}/ack", {"by": "desk-07", "note": bad}),
        ("POST", f"/v1/trips/{TRIP}/cancel", {"by": bad}),
    ]


NUL = "a\u0000b"


@pytest.mark.parametrize("bad", [NUL, LONE_SURROGATE], ids=["nul", "lone-surrogate"])
@pytest.mark.parametrize("index", range(len(_bodies("x"))))
def test_bad_text_in_a_json_body_is_refused(
    served: tuple[str, dict[str, str]], bad: str, index: int
) -> None:
    """A lone surrogate is not Unicode and PostgreSQL keeps no NUL in text: a 400/422 before
    the store sees it, never a 500/503 (nor stored on one store and refused by the other)."""
    url, _ = served
    method, path, body = _bodies(bad)[index]
    if "{alarm}" in path:
        path = path.replace("{alarm}", _alarm_id(url))
    raw = json.dumps(body, ensure_ascii=True)  # the escapes as a client sends them
    assert "\\u0000" in raw or "\\ud800" in raw
    headers = {**_admin(), "Content-Type": "application/json"}
    r = requests.request(method, url + path, data=raw, headers=headers, timeout=10)
    assert r.status_code in (400, 422), f"{method} {path}: {r.status_code} {r.text[:300]}"
    _assert_error_shape(r.headers.get("content-type", ""), r.json(), path)


@pytest.mark.parametrize(
    "path",
    ["/v1/alarms?since=%00", "/v1/trips?status=x%00", "/v1/trips/a%00b", "/v1/alarms?type=%C3%28"],
)
def test_bad_bytes_in_the_url_are_400(served: tuple[str, dict[str, str]], path: str) -> None:
    url, _ = served
    r = requests.get(url + path, headers=_admin(), timeout=10)
    assert r.status_code == 400, f"{path}: {r.status_code} {r.text[:300]}"
    _assert_error_shape(r.headers.get("content-type", ""), r.json(), path)
