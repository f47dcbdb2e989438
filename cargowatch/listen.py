"""Sockets made before anything else is opened, so that a port in use or a broker that cannot
be reached is one clear line and no side effect (no database file, no embedded broker)."""

from __future__ import annotations

import errno
import socket

from core.errors import InvalidInput, Unavailable


class CannotListen(InvalidInput):
    """The HTTP address cannot be listened on (in use, not ours, unknown host)."""


class CannotReach(Unavailable):
    """Nothing answers at a TCP address."""


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening: uvicorn does that)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {where}: unknown host ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As uvicorn does: a restart may bind while old connections are in TIME_WAIT; a port
        # with a live listener is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise CannotListen(f"cannot listen on {where}: {why}") from None
    sock.set_inheritable(True)
    return sock


def check_reachable(host: str, port: int, timeout_s: float = 5.0) -> None:
    """Raise ``CannotReach`` unless a TCP connection to ``host:port`` opens within the time."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except socket.gaierror as exc:
        why = f"unknown host ({exc.strerror})"
    except TimeoutError:
        why = f"no answer within {timeout_s:g} s"
    except OSError as exc:
        why = exc.strerror or str(exc)
    raise CannotReach(f"cannot reach the broker at {host}:{port}: {why}")
