"""Device credentials in bus mode: the API's device passwords become users of the NATS server
(contract §2), without restarting it.

``cargowatch broker-config nats`` writes the server's users into ``DIR/users.conf`` (from
``DIR/devices.json``) and a mapping through which the server tells its clients where DIR is
(``telemetry.bus.config``). ``NatsDeviceUsers`` asks the server once, checks that DIR belongs to
this server (its ``engine.secret`` is the password in the ``--bus`` URL), then for every
issued, rotated or revoked password rewrites the users file under a file lock and signals the
server to reload: new passwords work at once; sessions and logins with an old or revoked one
are refused from that reload on. A device user may publish only on its own subjects.

A server configured without that mapping (a hand-written configuration) leaves device users
to its operator: passwords are still issued, reported as not applied. ``serve --bus`` must run
where DIR is readable (the server's host, or a shared file system).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nats
from nats.aio.msg import Msg

from cargowatch.settings import bus_servers
from telemetry.bus.config import CONFIG_SUBJECT, dir_of_token, reload, set_device
from telemetry.errors import BrokerUnavailable


async def discover_config_dir(url: str, timeout_s: float = 5.0) -> Path | None:
    """Where the server's configuration is, or None when it was not written to say so.

    Publishes on ``cargowatch.config``: with the mapping it arrives as
    ``cargowatch.config.{token}``, without it on the bare subject; both are listened to, so
    the answer comes at once either way.
    """
    nc = await nats.connect(
        servers=bus_servers(url),
        name="cargowatch-credentials",
        allow_reconnect=False,
        connect_timeout=timeout_s,
    )
    try:
        got: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def seen(msg: Msg) -> None:
            if not got.done():
                got.set_result(msg.subject)

        for subject in (CONFIG_SUBJECT, f"{CONFIG_SUBJECT}.*"):
            await nc.subscribe(subject, cb=seen)
        await nc.flush()
        await nc.publish(CONFIG_SUBJECT, b"")
        async with asyncio.timeout(timeout_s):
            subject = await got
    finally:
        await nc.close()
    if subject == CONFIG_SUBJECT:
        return None
    return dir_of_token(subject.rsplit(".", 1)[1])


def _run(coro_url: str, timeout_s: float) -> Path | None:
    """``discover_config_dir`` from synchronous code, even from inside a running event loop
    (its own loop in a short-lived thread)."""
    result: list[Path | None] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(discover_config_dir(coro_url, timeout_s)))
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    thread = threading.Thread(target=target, name="nats-credentials", daemon=True)
    thread.start()
    thread.join(timeout_s * 3)
    if error or not result:
        raise BrokerUnavailable(
            "the NATS server did not answer where its configuration is",
            error=repr(error[0]) if error else "timeout",
        )
    return result[0]


class NatsDeviceUsers:
    """Applies device passwords to the NATS server behind ``bus_url`` (``DeviceCredentials``)."""

    def __init__(self, bus_url: str, *, timeout_s: float = 5.0) -> None:
        self._url = bus_url
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._known = False
        self._dir: Path | None = None

    def config_dir(self) -> Path | None:
        """DIR, asked of the server once (None: it does not say; device users are not ours)."""
        with self._lock:
            if not self._known:
                found = _run(self._url, self._timeout_s)
                if found is not None:
                    self._check(found)
                self._dir, self._known = found, True
            return self._dir

    def _check(self, found: Path) -> None:
        secret = found / "engine.secret"
        try:
            expected = secret.read_text().strip()
        except OSError as exc:
            raise BrokerUnavailable(
                "the NATS server's configuration is not readable here: run serve --bus where "
                "the directory broker-config nats wrote is (the server's host)",
                dir=str(found),
            ) from exc
        first = bus_servers(self._url)[0]  # a cluster's nodes share the credentials
        if unquote(urlsplit(first).password or "") != expected:
            raise BrokerUnavailable(
                "the configuration the NATS server names is not the one of the --bus URL "
                "(its engine password differs)",
                dir=str(found),
            )

    def apply(self, device_id: str, password: str | None, *, new: bool) -> bool:
        """Set (``password``) or remove (``None``) the device's user and reload the server;
        False when the server's device users are not managed by cargowatch."""
        d = self.config_dir()
        if d is None:
            return False
        try:
            set_device(d, device_id, password)
            reload(d)
        except (OSError, ValueError) as exc:  # no pid file, server gone, unreadable users
            raise BrokerUnavailable(
                "could not update the NATS server's device users", dir=str(d), error=str(exc)
            ) from exc
        return True
