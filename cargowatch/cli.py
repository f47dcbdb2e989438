"""``cargowatch`` command line: serve, demo, simulate (contract §8)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from core.errors import CargowatchError


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api import ApiServer, create_app
    from cargowatch.runtime import Runtime
    from cargowatch.settings import Settings

    overrides = {
        k: v
        for k, v in {"mqtt_url": args.mqtt, "db_url": args.db, "http": args.http}.items()
        if v is not None
    }
    settings = Settings(**overrides)
    runtime = Runtime.open(settings)
    app = create_app(runtime)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
    )
    # uvicorn turns SIGTERM/SIGINT into a graceful shutdown: the app's lifespan then stops
    # ingest, drains the in-flight batch into the store and stops the other loops. Then it
    # raises the signal again for the handler it found; ours ends the process with 0 after
    # closing the store, instead of dying of the signal before that.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        asyncio.run(ApiServer(config).serve())
    except _Stopped:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        runtime.close()
    return 0


class _Stopped(Exception):
    """SIGTERM, after uvicorn's graceful shutdown."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stopped


def _demo(args: argparse.Namespace) -> int:
    from cargowatch.demo import run_demo

    return asyncio.run(
        run_demo(
            http=args.http,
            trucks=args.trucks,
            speed=args.speed,
            db_path=args.db_path,
            duration_s=args.duration,
            seed=args.seed,
        )
    )


def _simulate(args: argparse.Namespace) -> int:
    from cargowatch.settings import Settings
    from core.clock import ScaledClock
    from simulators import run_cli

    # The engine's accelerated clock, when set (CARGOWATCH_CLOCK_*, as for `serve`): event
    # times then follow it, so the two processes agree on "now".
    settings = Settings()
    clock = settings.make_clock() if settings.clock_speed != 1.0 else None
    speed = clock.speed if isinstance(clock, ScaledClock) else args.speed
    return asyncio.run(
        run_cli(
            mqtt_url=args.mqtt,
            trucks=args.trucks,
            scenario=args.scenario,
            speed=speed,
            rate=args.rate,
            seed=args.seed,
            trips_out=args.trips_out,
            api_url=args.api,
            api_key=args.api_key,
            start_ms=args.start_ms,
            clock=clock,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cargowatch", description=__doc__)
    p.add_argument("--log-level", default=os.environ.get("CARGOWATCH_LOG_LEVEL", "info"))
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="engine and API against a real broker and database")
    s.add_argument("--mqtt", help="mqtt://HOST:PORT (env CARGOWATCH_MQTT)")
    s.add_argument("--db", help="postgresql://... or sqlite:///PATH (env CARGOWATCH_DB)")
    s.add_argument("--http", help="HOST:PORT to listen on (env CARGOWATCH_HTTP)")
    s.set_defaults(func=_serve)

    d = sub.add_parser("demo", help="embedded broker + SQLite + simulated fleet + engine + API")
    d.add_argument("--http", default=os.environ.get("CARGOWATCH_HTTP", "127.0.0.1:8080"))
    d.add_argument("--trucks", type=int, default=24)
    d.add_argument("--speed", type=float, default=30.0, help="simulated seconds per real second")
    d.add_argument("--db-path", default="cargowatch-demo.sqlite")
    d.add_argument("--duration", type=float, default=None, help="stop after N real seconds")
    d.add_argument("--seed", type=int, default=7)
    d.set_defaults(func=_demo)

    m = sub.add_parser("simulate", help="simulated trucks and e-locks publishing over MQTT")
    m.add_argument("--mqtt", default=os.environ.get("CARGOWATCH_MQTT", "mqtt://127.0.0.1:1883"))
    m.add_argument("--trucks", type=int, default=10)
    m.add_argument("--scenario", default="mixed")
    m.add_argument("--speed", type=float, default=60.0)
    m.add_argument("--rate", type=float, default=None, help="target messages per second")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--trips-out", help="write the trips and their expected alarms (JSON lines)")
    m.add_argument("--api", help="register devices, geofences and trips here first (API URL)")
    m.add_argument(
        "--api-key",
        default=os.environ.get("CARGOWATCH_ADMIN_KEY"),
        help="admin API key for --api (env CARGOWATCH_ADMIN_KEY)",
    )
    m.add_argument("--start-ms", type=int, default=None, help="first event time, epoch ms")
    m.set_defaults(func=_simulate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 0
    except CargowatchError as exc:
        # a database that is down, a bad URL, ...: say what, not where in the code
        print(f"cargowatch {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
