"""Device credentials on a Mosquitto broker with the dynamic-security plugin.

``cargowatch broker-config mosquitto`` gives the engine's client the right to publish on
``$CONTROL/dynamic-security/v1``; ``Dynsec`` uses it to create, re-key and delete device
clients while the broker runs (no restart). Each device gets its own role allowing it to
publish only under ``<prefix>/<device_id>/…`` (Mosquitto 2.0's plugin does not expand
``%u`` in its ACLs, so the binding is written out per device).

Calls are synchronous (the API runs them in its thread pool): one short-lived connection
per call, with the engine's user name and a client id of its own (never the ingest's, which
the broker would disconnect), waiting for the plugin's answer.
"""

from __future__ import annotations

import json
import secrets
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from telemetry.errors import InvalidAddress, TelemetryError

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"


class CredentialsUnavailable(TelemetryError):
    """The broker could not be reached or refused a credentials command."""


def role_name(device_id: str) -> str:
    return f"cw-device-{device_id}"


def new_password() -> str:
    """A device password: 192 random bits, URL-safe."""
    return secrets.token_urlsafe(24)


class Dynsec:
    """Manages device clients on one broker (``address``: a parsed ``--mqtt`` URL)."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        client_id: str,
        prefix: str = "devices",
        tls: Any = None,
        timeout_s: float = 5.0,
    ) -> None:
        if not username:
            raise InvalidAddress("dynsec needs the engine's user name and password")
        self._host, self._port = host, port
        self._user, self._password = username, password
        self._client_id = client_id
        self._prefix = prefix
        self._tls = tls  # a callable(paho.Client) that sets TLS up, or None
        self._timeout_s = timeout_s
        self._lock = threading.Lock()

    # -- the three operations ---------------------------------------------------------------
    def create(self, device_id: str, password: str) -> None:
        """A client for the device (user name = ``device_id``), bound to its own topics; an
        existing one gets the new password instead."""
        acls = [
            {
                "acltype": "publishClientSend",
                "topic": f"{self._prefix}/{device_id}/#",
                "priority": 0,
                "allow": True,
            }
        ]
        role = role_name(device_id)
        answers = self._run(
            [
                {"command": "createRole", "rolename": role, "acls": acls},
                {
                    "command": "createClient",
                    "username": device_id,
                    "password": password,
                    "roles": [{"rolename": role}],
                },
            ],
            tolerate=("already exists",),
        )
        if any(a.get("command") == "createClient" and a.get("error") for a in answers):
            # It existed (registered again after a revoke that did not reach the broker):
            # its role back, this password, and no old sessions.
            self._run(
                [{"command": "addClientRole", "username": device_id, "rolename": role}],
                tolerate=("error", "already"),
            )
            self.rotate(device_id, password)

    def rotate(self, device_id: str, password: str) -> None:
        """A new password; sessions using the old one are disconnected (disable + enable)."""
        self._run(
            [
                {"command": "setClientPassword", "username": device_id, "password": password},
                {"command": "disableClient", "username": device_id},
                {"command": "enableClient", "username": device_id},
            ]
        )

    def delete(self, device_id: str) -> None:
        """Revoke: the client is deleted (and disconnected), its role with it."""
        self._run(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": role_name(device_id)},
            ],
            tolerate=("not found",),
        )

    # -- one exchange with the plugin -------------------------------------------------------
    def _run(
        self, commands: list[dict[str, Any]], tolerate: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        with self._lock:
            responses = self._exchange(commands)
        for response in responses:
            error = response.get("error")
            if error and not any(t in str(error).lower() for t in tolerate):
                raise CredentialsUnavailable(f"broker refused {response.get('command')}: {error}")
        return responses

    def _exchange(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        done = threading.Event()
        subscribed = threading.Event()
        connected: dict[str, Any] = {}
        answers: list[dict[str, Any]] = []
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{self._client_id}-ctl-{secrets.token_hex(4)}",
            protocol=paho.MQTTv5,
        )
        client.username_pw_set(self._user, self._password)
        if self._tls is not None:
            self._tls(client)

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            connected["reason"] = reason
            if not reason.is_failure:
                client.subscribe(RESPONSE_TOPIC, qos=1)
            else:
                done.set()

        def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
            try:
                answers.extend(json.loads(msg.payload).get("responses", []))
            except (ValueError, AttributeError):
                return
            if len(answers) >= len(commands):
                done.set()

        client.on_connect = on_connect
        client.on_subscribe = lambda *_a: subscribed.set()
        client.on_message = on_message
        try:
            client.connect(self._host, self._port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise CredentialsUnavailable(f"cannot reach the broker: {exc}") from exc
        client.loop_start()
        try:
            if not subscribed.wait(self._timeout_s):
                reason = connected.get("reason")
                raise CredentialsUnavailable(
                    f"the broker refused the engine's credentials: {reason}"
                    if reason is not None
                    else "no answer from the broker"
                )
            client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
            if not done.wait(self._timeout_s):
                raise CredentialsUnavailable("no answer from the dynamic-security plugin")
            return answers
        finally:
            client.disconnect()
            client.loop_stop()
