"""``cargowatch`` command line: serve, demo, simulate (contract §8).

Settings come from flags over ``CARGOWATCH_*`` variables, read and checked once by
``cargowatch.settings`` before anything is opened: a bad value, a port in use or an
unreachable broker is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from cargowatch.settings import (
    DEFAULT_BROKER,
    FLAGS,
    Settings,
    SettingsError,
    broker_address,
    env_name,
    load_settings,
)
from core.errors import CargowatchError

BAD_INPUT = 2  # bad flags or settings (as argparse); 1: a failure while running


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from api import ApiServer, create_app
    from api.limits import ApiLimits
    from cargowatch.listen import listen_socket
    from cargowatch.runtime import Runtime

    # The port first: in use or not ours is one line, before the database is opened.
    sock = listen_socket(settings.http_host, settings.http_port)
    try:
        if settings.bus_url:
            from cargowatch.busmode.runtime import BusRuntime

            runtime: Runtime = BusRuntime.open(settings)
        else:
            runtime = Runtime.open(settings)
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(
        create_app(runtime, limits=ApiLimits.of(settings)),
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
    )
    # uvicorn turns SIGTERM/SIGINT into a graceful shutdown: the app's lifespan then stops
    # ingest, drains the in-flight batch into the store and stops the other loops. Then it
    # raises the signal again for the handler it found; ours ends the process with 0 after
    # closing the store, instead of dying of the signal before that.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        asyncio.run(ApiServer(config).serve(sockets=[sock]))
    except _Stopped:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        runtime.close()
    return 0


class _Stopped(Exception):
    """SIGTERM, after uvicorn's graceful shutdown."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stopped


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from cargowatch.worker import run_worker

    if not settings.bus_url:
        print("cargowatch worker: --bus (or CARGOWATCH_BUS) is required", file=sys.stderr)
        return BAD_INPUT
    return asyncio.run(run_worker(settings))


def _broker_config_nats(args: argparse.Namespace, settings: Settings) -> int:
    from cargowatch import brokerconfig_nats

    return brokerconfig_nats.run(args)


def _broker_config_mosquitto(args: argparse.Namespace, settings: Settings) -> int:
    from cargowatch import brokerconfig_mosquitto

    return brokerconfig_mosquitto.run(args)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from cargowatch.demo import run_demo

    return asyncio.run(
        run_demo(
            http=settings.http,
            trucks=args.trucks,
            speed=args.speed,
            db_path=args.db_path,
            duration_s=args.duration,
            seed=args.seed,
        )
    )


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from cargowatch.listen import check_reachable
    from core.clock import ScaledClock
    from simulators import run_cli

    if args.scenario not in _scenarios():
        print(
            f"cargowatch simulate: unknown scenario {args.scenario!r}; "
            f"valid: {', '.join(_scenarios())}",
            file=sys.stderr,
        )
        return BAD_INPUT
    if args.trucks < 1:
        print("cargowatch simulate: --trucks must be at least 1", file=sys.stderr)
        return BAD_INPUT
    mqtt_url = settings.mqtt_url or DEFAULT_BROKER
    # The publisher would retry a broker that never answers for ever: check once, up front.
    check_reachable(*broker_address(mqtt_url))
    # The engine's accelerated clock, when set (CARGOWATCH_CLOCK_*, as for `serve`): event
    # times then follow it, so the two processes agree on "now".
    clock = settings.make_clock() if settings.clock_speed != 1.0 else None
    speed = clock.speed if isinstance(clock, ScaledClock) else args.speed
    return asyncio.run(
        run_cli(
            mqtt_url=mqtt_url,
            trucks=args.trucks,
            scenario=args.scenario,
            speed=speed,
            rate=args.rate,
            seed=args.seed,
            trips_out=args.trips_out,
            api_url=args.api,
            api_key=settings.admin_key,
            start_ms=args.start_ms,
            clock=clock,
        )
    )


def _scenarios() -> list[str]:
    from simulators import scenario_names

    return ["mixed", *scenario_names(gnss=True)]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: …)`` where there is one; settings flags say theirs themselves."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or "default" in text or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


METAVARS = {
    "mqtt_url": "URL",
    "db_url": "URL",
    "http": "HOST:PORT",
    "admin_key": "KEY",
    "bus_url": "URL",
    "workers": "N",
    "tiles": "URL|off",
}


def _setting(field: str, what: str | None = None, default: str | None = None) -> dict[str, Any]:
    """Keyword arguments of the flag of a ``Settings`` field: its help names the default and
    the environment variable; the value stays None when not given (the environment applies)."""
    info = Settings.model_fields[field]
    default = default or (str(info.default) if info.default is not None else "unset")
    return {
        "dest": field,
        "metavar": METAVARS.get(field, field.upper()),
        "default": None,
        "help": f"{what or info.description} (default: {default}; env {env_name(field)})",
    }


def build_parser() -> argparse.ArgumentParser:
    from cargowatch.demo import DEMO_INCIDENTS, DEMO_SPEED

    p = argparse.ArgumentParser(
        prog="cargowatch", description=__doc__, formatter_class=_HelpFormatter
    )
    p.add_argument(FLAGS["log_level"], **_setting("log_level"))
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "serve",
        help="engine and API against a real broker and database",
        formatter_class=_HelpFormatter,
        description="The engine and the API. Every setting: docs/operations.md.",
    )
    s.add_argument(FLAGS["mqtt_url"], **_setting("mqtt_url"))
    s.add_argument(FLAGS["db_url"], **_setting("db_url"))
    s.add_argument(FLAGS["http"], **_setting("http"))
    s.add_argument(FLAGS["bus_url"], **_setting("bus_url"))
    s.add_argument(FLAGS["workers"], type=int, **_setting("workers"))
    s.add_argument(FLAGS["tiles"], **_setting("tiles"))
    s.set_defaults(func=_serve)

    w = sub.add_parser(
        "worker",
        help="one engine worker of the partitioned engine (NATS JetStream)",
        formatter_class=_HelpFormatter,
        description="Claims a share of the bus partitions, validates, re-keys by trip, "
        "stores and evaluates. Start and stop any number at any time: docs/scaling.md.",
    )
    w.add_argument(FLAGS["bus_url"], **_setting("bus_url"))
    w.add_argument(FLAGS["db_url"], **_setting("db_url"))
    w.set_defaults(func=_worker)

    b = sub.add_parser(
        "broker-config",
        help="write a complete configuration for a real broker",
        formatter_class=_HelpFormatter,
        description="Writes the broker's configuration into DIR and prints two lines: the "
        "command that starts the broker, then the URL to pass as --mqtt or --bus.",
    )
    brokers = b.add_subparsers(dest="broker", required=True)
    bn = brokers.add_parser(
        "nats",
        help="NATS with JetStream and its MQTT listener (the partitioned engine)",
        formatter_class=_HelpFormatter,
    )
    from cargowatch import brokerconfig_nats

    brokerconfig_nats.add_arguments(bn)
    bn.set_defaults(func=_broker_config_nats)
    bm = brokers.add_parser(
        "mosquitto",
        help="Mosquitto 2 with device credentials (dynamic security), optionally TLS",
        formatter_class=_HelpFormatter,
    )
    from cargowatch import brokerconfig_mosquitto

    brokerconfig_mosquitto.add_arguments(bm)
    bm.set_defaults(func=_broker_config_mosquitto)

    d = sub.add_parser(
        "demo",
        help="embedded broker + SQLite + simulated fleet + engine + API",
        formatter_class=_HelpFormatter,
        description="Everything on embedded defaults; the fleet is kept going (new trips as "
        "trips complete) and shows these incidents: "
        + ", ".join(DEMO_INCIDENTS)
        + f". It runs at x{DEMO_SPEED:g}: a critical alarm's 10-minute acknowledge deadline "
        "lasts minutes of real time, so a person can act on it.",
    )
    d.add_argument(FLAGS["http"], **_setting("http"))
    d.add_argument(FLAGS["tiles"], **_setting("tiles"))
    d.add_argument("--trucks", type=int, default=24, help="simulated trucks kept on the road")
    d.add_argument(
        "--speed",
        type=float,
        default=DEMO_SPEED,
        help="simulated seconds per real second (higher: deadlines pass faster than people act)",
    )
    d.add_argument("--db-path", default="cargowatch-demo.sqlite", help="SQLite file (replaced)")
    d.add_argument("--duration", type=float, default=None, help="stop after N real seconds")
    d.add_argument("--seed", type=int, default=7, help="random seed of the fleet")
    d.set_defaults(func=_demo)

    m = sub.add_parser(
        "simulate",
        help="simulated trucks and e-locks publishing over MQTT",
        formatter_class=_HelpFormatter,
        description="Publishes a simulated fleet (scenarios: see --scenario).",
    )
    m.add_argument(
        FLAGS["mqtt_url"], **_setting("mqtt_url", "broker to publish to", DEFAULT_BROKER)
    )
    m.add_argument("--trucks", type=int, default=10, help="simulated trucks")
    m.add_argument(
        "--scenario",
        default="mixed",
        help="mixed (one of each incident), normal, or one incident for every truck: "
        + ", ".join(_scenarios()[1:]),
    )
    m.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second")
    m.add_argument("--rate", type=float, default=None, help="target messages per second")
    m.add_argument("--seed", type=int, default=0, help="random seed of the fleet")
    m.add_argument("--trips-out", help="write the trips and their expected alarms (JSON lines)")
    m.add_argument("--api", help="register devices, geofences and trips here first (API URL)")
    m.add_argument(FLAGS["admin_key"], **_setting("admin_key", "admin API key for --api"))
    m.add_argument("--start-ms", type=int, default=None, help="first event time, epoch ms")
    m.set_defaults(func=_simulate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(
            **{f: getattr(args, f) for f in Settings.model_fields if hasattr(args, f)}
        )
    except SettingsError as exc:
        print(f"cargowatch {args.command}: {exc}", file=sys.stderr)
        return BAD_INPUT
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # `kill -USR1 PID`: every thread's stack on stderr, for a process that will not stop
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        return 0
    except CargowatchError as exc:
        # a database that is down, a port in use, ...: say what, not where in the code
        print(f"cargowatch {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
