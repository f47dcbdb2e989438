"""One MQTT connection driven by the asyncio loop, whose reading can be paused.

paho-mqtt does the protocol's writing side (CONNECT, SUBSCRIBE, PINGREQ, PUBACK) and the rare
control packets; this module reads the socket itself: one ``recv`` of up to ``READ_BYTES`` per
readable event, PUBLISH packets (QoS 0 and 1, by far the most) decoded here, every other packet
handed to paho's own handler. paho reads a packet with three or more ``recv`` calls and builds a
message object, a properties object and a log line for each: at thousands of messages a second
that was most of the engine's receive cost. Acknowledgements go out as one block per batch
(``ack_many``) instead of one paho packet and one ``send`` each. Three more differences from the
way aiomqtt drives paho matter under a backlog:

- **Reading pauses.** Before every packet the owner is asked for room (``room()``); without room
  the socket leaves the selector. Unread data then fills the kernel buffers and TCP flow control
  stops the broker, so the backlog stays in the broker and nothing piles up in this process. The
  bytes already read stay in this connection's buffer (at most ``READ_BYTES`` plus one packet)
  and are decoded first when reading resumes, so the owner's bound is exact.
- **Our own keepalive.** paho's (``loop_misc``) sends PINGREQ and drops the connection when no
  PINGRESP comes back within the keepalive, but a paused reader does not read the PINGRESP: it
  waits behind the messages the broker pushed. So ``loop_misc`` is never called; instead a PINGREQ
  goes out every keepalive/2 (paused or not), which keeps the broker's 1.5 × keepalive timer happy,
  and a broker that stays silent for 1.5 × keepalive *while we read* is declared lost. While paused,
  a dead peer is found by TCP (``TCP_USER_TIMEOUT``: our PINGREQs stay unacknowledged).
- **CONNACK is the first packet read**, before any of the backlog: ``open()`` returns as soon as
  it arrives and never waits for SUBACK (a persistent session has its subscriptions already; the
  SUBACK is read whenever it comes, behind however many messages the broker resends).

Everything here runs on the event loop thread, except paho's blocking TCP connect (a worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from telemetry.errors import BrokerUnavailable

READ_BYTES = 256 * 1024
"""Bytes read per readable event at most: some 2,000 small messages, then other tasks run."""

PAUSED_PING_S = 1.0
"""While reading is paused, PINGREQ this often (it is how a closed connection shows)."""

SESSION_EXPIRY_S = 7 * 24 * 3600  # a persistent session outlives a week-end of downtime
DISCONNECT_PACKET = b"\xe0\x00"  # normal disconnection, in MQTT 3.1.1 and 5 alike
PUBACK = 0x40
PUBACK_WORD = PUBACK << 24 | 2 << 16  # PUBACK, remaining length 2, then the packet id

OnMessage = Callable[["MqttConnection", str, bytes, int, int], None]
"""``on_message(connection, topic, payload, mid, qos)``."""


class BrokerRefused(BrokerUnavailable):
    """The broker answered CONNECT with an error (bad credentials, not authorised, ...)."""


class MqttConnection:
    """One connection (one paho client) with a persistent session and QoS 1 subscriptions.

    ``on_message(connection, topic, payload, mid, qos)`` is called for each PUBLISH,
    synchronously, while reading; ``room()`` is asked before each packet and reading pauses when
    it says no (call ``resume_reading()`` when there is room again). ``manual_ack`` (MQTT 5):
    nothing is acknowledged until ``ack()`` / ``ack_many()``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        on_message: OnMessage,
        room: Callable[[], bool],
        username: str | None = None,
        password: str | None = None,
        protocol: str = "5",
        keepalive_s: int = 30,
        receive_maximum: int = 65_535,
        max_packet_bytes: int | None = None,
        connect_timeout_s: float = 10.0,
        tls: TlsSetup | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.protocol = protocol
        self.manual_ack = protocol == "5"
        self._on_message_cb = on_message
        self._room = room
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[str] = self.loop.create_future()
        """Resolves with the reason once the connection is gone (for whatever reason)."""
        self.session_present = False
        self.reading = False
        self.last_in = time.monotonic()
        self._reading_since = self.last_in
        self._connack: asyncio.Future[ReasonCode | int] = self.loop.create_future()
        self._keepalive_task: asyncio.Task[None] | None = None
        self._fd = -1
        self._inbuf = b""  # bytes read and not decoded yet (reading paused, or half a packet)
        self._v5 = protocol == "5"
        self._last_ping = time.monotonic()  # CONNECT counts as traffic for the broker's timer

        if protocol == "5":
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
            )
            client.manual_ack_set(True)
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            props.ReceiveMaximum = max(1, min(receive_maximum, 65_535))
            if max_packet_bytes:
                # The broker discards (for us) a message larger than this (MQTT 5 §3.1.2.11.4):
                # a bound on the one packet we may be in the middle of reading.
                props.MaximumPacketSize = max_packet_bytes
            self._connect_kw: dict[str, Any] = {"clean_start": False, "properties": props}
        else:
            # MQTT 3.1.1 brokers (the demo's amqtt): persistent session via clean_session=False;
            # acknowledged on receipt (amqtt delivers one QoS 1 message at a time per PUBACK).
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=paho.MQTTv311,
                clean_session=False,
            )
            self._connect_kw = {}
        if username is not None:
            client.username_pw_set(username, password)
        if tls is not None:
            tls(client)
        client.connect_timeout = connect_timeout_s
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self.client = client

    # -- opening and closing ------------------------------------------------------------------
    async def open(self) -> bool:
        """Connect and wait for CONNACK; returns whether the broker had our session.

        Raises ``BrokerUnavailable`` (cannot reach, no CONNACK in time) or ``BrokerRefused``.
        """
        connect = self.loop.run_in_executor(None, self._connect_blocking)
        try:
            await connect
        except asyncio.CancelledError:
            connect.add_done_callback(lambda _: self._drop_socket())
            raise
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(_describe(exc), host=self.host, port=self.port) from exc
        sock = self.client.socket()
        if sock is None:  # pragma: no cover - paho closed it already
            raise BrokerUnavailable("connection closed during connect")
        self._fd = sock.fileno()
        _tune_socket(sock, self.keepalive_s)
        # From now on paho asks us (on this thread) to watch for writability.
        self.client.on_socket_register_write = self._register_write
        self.client.on_socket_unregister_write = self._unregister_write
        self.client.on_socket_close = self._socket_closed
        if self.client.want_write():
            self.loop.add_writer(self._fd, self._on_writable)
        self.resume_reading()  # CONNACK comes first, before any backlog: read regardless of room
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reason = await asyncio.shield(self._connack)
        except TimeoutError:
            self.close()
            raise BrokerUnavailable(
                f"no CONNACK within {self.connect_timeout_s:g} s", host=self.host, port=self.port
            ) from None
        except BaseException:
            self.close()
            raise
        if _is_failure(reason):
            self.close()
            raise BrokerRefused(f"connection refused: {reason}", host=self.host, port=self.port)
        self._keepalive_task = self.loop.create_task(self._keepalive(), name="mqtt-keepalive")
        return self.session_present

    def _connect_blocking(self) -> None:
        # paho writes CONNECT itself here (no write callbacks registered yet).
        self.client.connect(self.host, self.port, keepalive=self.keepalive_s, **self._connect_kw)

    def close(self) -> None:
        """Close now, without DISCONNECT (the session stays; see ``disconnect``)."""
        self._drop_socket()
        self._lost("closed by us")

    async def disconnect(self, linger_s: float = 2.0) -> None:
        """Write what paho still holds and DISCONNECT, then close once the broker closed.

        Closing a socket that has unread input (paused reading leaves some) sends RST, and a
        broker that gets RST before it read our last PUBACKs drops them and redelivers those
        messages: so half-close, discard input until the broker's FIN, then close.
        """
        sock = self.client.socket()
        if not self.is_open or not isinstance(sock, socket.socket):  # ssl.SSLSocket is one
            self.close()
            return
        self.pause_reading()
        deadline = time.monotonic() + linger_s
        try:
            while self.client.want_write() and time.monotonic() < deadline:
                if self.client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                if self.client.want_write():
                    await asyncio.sleep(0.005)
            if self._fd >= 0:
                self.loop.remove_writer(self._fd)
            sock.sendall(DISCONNECT_PACKET)
            sock.shutdown(socket.SHUT_WR)
            while time.monotonic() < deadline:
                try:
                    if not sock.recv(65536):
                        break  # the broker read our DISCONNECT and closed
                except (BlockingIOError, ssl.SSLWantReadError):
                    await asyncio.sleep(0.01)
        except OSError:
            pass  # the connection is gone anyway; the broker redelivers what it did not get
        finally:
            self.close()

    def _drop_socket(self) -> None:
        self.pause_reading()
        if self._fd >= 0:
            self.loop.remove_writer(self._fd)
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    @property
    def is_open(self) -> bool:
        return not self.closed.done() and self.client.socket() is not None

    def _lost(self, reason: str) -> None:
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        if not self.closed.done():
            self.closed.set_result(reason)
        if not self._connack.done():
            self._connack.set_exception(BrokerUnavailable(f"connection closed: {reason}"))
            self._connack.exception()  # retrieved: nobody may be waiting any more

    # -- protocol ------------------------------------------------------------------------------
    def subscribe(self, topics: list[str]) -> None:
        """Send SUBSCRIBE (QoS 1) without waiting for SUBACK: it may sit behind a backlog."""
        if self.protocol == "5":
            # retainHandling=1: a re-subscription in a resumed session does not replay retained
            # messages every time we reconnect.
            opts = SubscribeOptions(qos=1, retainHandling=1)
            self.client.subscribe([(t, opts) for t in topics])
        else:
            self.client.subscribe([(t, 1) for t in topics])

    def ack(self, mid: int, qos: int) -> None:
        if self.manual_ack and qos > 0 and self.is_open:
            self.client.ack(mid, qos)

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK these QoS 1 packet ids, as one block through paho's write queue (in order
        with its other packets: one ``send`` for the lot)."""
        if mids and self.manual_ack and self.is_open:
            self._queue_pubacks(mids)

    def _queue_pubacks(self, mids: list[int]) -> None:
        block = struct.pack(f">{len(mids)}I", *[PUBACK_WORD | m for m in mids])
        self.client._packet_queue(PUBACK, block, 0, 0)

    def _ping(self) -> None:
        # paho has no public PINGREQ (its loop_misc pings, but also drops a paused connection).
        self._last_ping = time.monotonic()
        rc = self.client._send_pingreq()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._lost(f"cannot send PINGREQ ({paho.error_string(rc)})")

    async def _keepalive(self) -> None:
        interval = max(0.5, self.client.keepalive / 2)  # the broker may impose its keepalive
        tick = min(PAUSED_PING_S, interval / 2)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            # Paused, we cannot see the broker close the connection (its FIN waits behind the
            # unread messages); a PINGREQ to a closed peer draws a reset, and the next write
            # fails: a broker restart is noticed within about two ticks.
            if now - self._last_ping >= (interval if self.reading else PAUSED_PING_S):
                self._ping()
            silent = now - max(self.last_in, self._reading_since)
            if self.reading and silent >= 3 * interval:
                self._lost(f"no data from the broker for {silent:.0f} s")
                self._drop_socket()
                return

    # -- paho callbacks (event loop thread) ------------------------------------------------------
    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
        self.session_present = bool(flags.session_present)
        if not self._connack.done():
            self._connack.set_result(reason)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        # A PUBLISH paho decoded (QoS 2: the broker never sends one for our QoS 1 subscriptions).
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # a broker must refuse these; be safe anyway
            topic = bytes(msg._topic).decode(errors="replace")
        self._on_message_cb(self, topic, bytes(msg.payload), msg.mid, msg.qos)

    def _on_disconnect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        # Our own failures come back as a return code of loop_read / loop_write, with a
        # better message; only a DISCONNECT sent by the broker is reported from here.
        if flags.is_disconnect_packet_from_server:
            self._lost(f"the broker sent DISCONNECT ({reason})")

    def _register_write(self, _c: Any, _u: Any, sock: Any) -> None:
        if not self.closed.done():
            self.loop.add_writer(sock, self._on_writable)

    def _unregister_write(self, _c: Any, _u: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    def _socket_closed(self, _c: Any, _u: Any, sock: Any) -> None:
        self.pause_reading()
        self.loop.remove_writer(sock)

    # -- I/O -----------------------------------------------------------------------------------
    def pause_reading(self) -> None:
        if self.reading:
            self.loop.remove_reader(self._fd)
            self.reading = False

    def resume_reading(self) -> None:
        if not self.reading and self.is_open:
            self.loop.add_reader(self._fd, self._on_readable)
            self.reading = True
            self._reading_since = time.monotonic()
            if self._inbuf:
                # what was read before the pause does not make the socket readable again
                self.loop.call_soon(self._decode)

    def _on_readable(self) -> None:
        sock = self.client.socket()
        if sock is None or not self.reading:
            return
        try:
            data = sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return
        except ssl.SSLWantWriteError:
            self.client._call_socket_register_write()
            return
        except OSError as exc:
            self._read_failed(f"read failed: {_describe(exc)}")
            return
        if not data:
            self._read_failed("read failed: the broker closed the connection")
            return
        self.last_in = time.monotonic()
        self._inbuf = self._inbuf + data if self._inbuf else data
        self._decode()
        if self._tls_pending():
            # TLS keeps decrypted bytes the socket will not signal again: read on soon.
            self.loop.call_soon(self._on_readable)

    def _read_failed(self, reason: str) -> None:
        # As paho's loop_read did: its socket closed, its on_disconnect, its state.
        self.client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        self._lost(reason)
        self._drop_socket()

    def _decode(self) -> None:
        """Decode the packets read so far, asking for room before each one."""
        buf = self._inbuf
        end_buf = len(buf)
        pos = 0
        room = self._room
        deliver = self._on_message_cb
        v5 = self._v5
        auto_ack: list[int] = []  # MQTT 3.1.1: acknowledged on receipt
        connected = self._connack.done()
        try:
            while pos < end_buf and self.reading:
                if connected and not room():
                    self.pause_reading()
                    break
                # fixed header: type and flags, then the remaining length (1-4 bytes, 7 bits each)
                first = buf[pos]
                i = pos + 1
                length = shift = 0
                while True:
                    if i >= end_buf:
                        return  # half a header: the rest comes with the next read
                    b = buf[i]
                    i += 1
                    length |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        self._protocol_error("malformed remaining length")
                        return
                end = i + length
                if end > end_buf:
                    return  # half a packet
                qos = (first >> 1) & 3
                if first >> 4 == 3 and qos < 2 and length >= 2:  # PUBLISH, QoS 0 or 1
                    t = i + 2 + (buf[i] << 8 | buf[i + 1])
                    raw_topic = buf[i + 2 : t]
                    mid = 0
                    if qos:
                        mid = buf[t] << 8 | buf[t + 1]
                        t += 2
                    if v5:  # skip the properties (length, then that many bytes)
                        plen = shift = 0
                        while True:
                            b = buf[t]
                            t += 1
                            plen |= (b & 0x7F) << shift
                            if b < 0x80:
                                break
                            shift += 7
                        t += plen
                    if t > end:
                        self._protocol_error("malformed PUBLISH")
                        return
                    try:
                        topic = raw_topic.decode()
                    except UnicodeDecodeError:  # a broker must refuse these; be safe anyway
                        topic = raw_topic.decode(errors="replace")
                    pos = end
                    deliver(self, topic, buf[t:end], mid, qos)
                    if qos and not self.manual_ack:
                        auto_ack.append(mid)
                else:
                    pos = end
                    if not self._paho_packet(first, buf[i:end]):
                        return
                    connected = self._connack.done()
        except IndexError:  # a length field that points past the packet
            self._protocol_error("malformed PUBLISH")
        finally:
            self._inbuf = buf[pos:] if pos < end_buf else b""
            if auto_ack and self.is_open:
                self._queue_pubacks(auto_ack)

    def _paho_packet(self, first: int, body: bytes) -> bool:
        """Hand one control packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, ...) to paho's
        handler, as its reader would have; False when the connection is gone."""
        client = self.client
        client._in_packet = {
            "command": first,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": len(body),
            "packet": bytearray(body),
            "to_process": 0,
            "pos": 0,
        }
        try:
            rc = client._packet_handle()
        except MalformedPacket:
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            client._in_packet = {
                "command": 0,
                "have_remaining": 0,
                "remaining_count": [],
                "remaining_mult": 1,
                "remaining_length": 0,
                "packet": bytearray(b""),
                "to_process": 0,
                "pos": 0,
            }
        if rc > 0:
            rc = client._loop_rc_handle(rc)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is None:
            self._lost(f"read failed: {paho.error_string(rc)}")
            return False
        return not self.closed.done()

    def _protocol_error(self, what: str) -> None:
        self.client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
        self._lost(f"read failed: {what}")
        self._drop_socket()

    def _tls_pending(self) -> bool:
        sock = self.client.socket()
        pending = getattr(sock, "pending", None)
        return bool(pending is not None and self.reading and pending() > 0)

    def _on_writable(self) -> None:
        rc = self.client.loop_write()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self.client.socket() is None:
            self._lost(f"write failed: {paho.error_string(rc)}")


TlsSetup = Callable[[paho.Client], None]


def tls_setup(ca_file: str | None = None) -> TlsSetup:
    """``mqtts://``: TLS 1.2+ with the broker's certificate checked against ``ca_file``
    (the system's CAs when None) and its host name."""

    def apply(client: paho.Client) -> None:
        client.tls_set(ca_certs=ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)

    return apply


def _is_failure(reason: ReasonCode | int) -> bool:
    if isinstance(reason, ReasonCode):
        return bool(reason.is_failure)
    return reason != 0


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, socket.gaierror):
        return f"unknown host: {text}"
    return text


def _tune_socket(sock: Any, keepalive_s: int) -> None:
    """Find a vanished broker even while reading is paused: our PINGREQs then stay
    unacknowledged by TCP, and the kernel gives up after about two keepalives."""
    if hasattr(socket, "TCP_USER_TIMEOUT") and isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(2 * keepalive_s * 1000)
            )


__all__ = [
    "SESSION_EXPIRY_S",
    "BrokerRefused",
    "MqttConnection",
    "OnMessage",
    "TlsSetup",
    "tls_setup",
]
