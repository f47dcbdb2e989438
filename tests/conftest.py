"""Shared fixtures: a private Mosquitto and a private TimescaleDB cluster on free ports (one
per session), and the API test world of ``tests/api_world.py``.

Set CARGOWATCH_TEST_MQTT / CARGOWATCH_TEST_PG (a server URL of a cluster you run) to reuse
running services instead; by default the session starts and stops its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from tests.services import MosquittoServer, PostgresServer

if TYPE_CHECKING:
    from tests.api_world import World


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mqtt_url(mosquitto: MosquittoServer) -> str:
    """URL of the private Mosquitto (mqtt://127.0.0.1:PORT)."""
    return os.environ.get("CARGOWATCH_TEST_MQTT") or mosquitto.url


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    # The cluster's Unix socket lives here: keep the path short (sockets allow ~100 bytes).
    tmp = os.environ.get("CARGOWATCH_TEST_TMP") or tempfile.gettempdir()
    workdir = Path(tmp) / f"cw-pg-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    server = PostgresServer(workdir).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A brand-new empty database in the private TimescaleDB cluster."""
    return pg_server.create_database()


@pytest_asyncio.fixture(loop_scope="session")
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """A fresh API world (runtime, app, client, two seeded tenants) for one test."""
    # imported here, so that tests which need no API do not load the whole application
    from tests.api_world import running_world

    async with running_world(tmp_path) as w:
        yield w


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def module_world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """One API world for a whole module: for tests that only read it or add objects of
    their own (a large matrix would otherwise seed a world per case)."""
    from tests.api_world import running_world

    async with running_world(tmp_path_factory.mktemp(request.module.__name__)) as w:
        yield w


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that touch the real services carry the marker, so `-m "not services"` is a quick run.
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & {"pg_url", "pg_server", "mqtt_url", "mosquitto"}:
            item.add_marker(pytest.mark.services)
