"""Sends one e-mail delivery through the operator's SMTP relay (``CARGOWATCH_SMTP``).

The webhook sender's loop claims e-mail deliveries like webhook ones (leases, retries,
circuit breaker; ``alerts.webhooks``) and hands them here. ``Mailer.send`` runs the
standard library's ``smtplib`` in a worker thread, one connection per mail:

- the relay's host is checked by the SSRF guard at every mail (``alerts.targets``) and the
  connection goes to the checked address; STARTTLS is used whenever the relay offers it
  (the certificate is verified against the relay's name), then ``user:pass`` if given;
- one attempt takes at most ``timeout_s``: a watchdog shuts the socket down, so a stalled
  relay cannot outlive the sender's lease and be sent by a second sender meanwhile;
- the outcome's error says only what a shipper needs ("connection failed", "timeout",
  "SMTP 451", "refused target"); the log has the details. A recipient refused with a 5xx
  code is final (retrying will not help); anything else is retried like a webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from alerts.mail_compose import compose, envelope
from alerts.mail_notify import still_notified
from alerts.targets import REFUSED, RefusedTarget, TargetGuard, UnresolvedTarget
from core.clock import Clock
from core.errors import Unavailable
from telemetry.store.base import Doc, Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """``smtp://[user:pass@]host[:port]`` (port 25 when left out)."""

    host: str
    port: int
    user: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        parts = urlsplit(url.strip())
        try:
            port = parts.port or 25
        except ValueError:
            raise ValueError("the SMTP server's port must be a number from 1 to 65535") from None
        if parts.scheme != "smtp" or not parts.hostname:
            raise ValueError("the SMTP server must look like smtp://[USER:PASS@]HOST:PORT")
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(parts.hostname, port, user, password)

    def __repr__(self) -> str:  # never the password in a log line
        return f"SmtpServer({self.host}:{self.port}, user={self.user!r})"


@dataclass(frozen=True, slots=True)
class MailOutcome:
    ok: bool
    error: str | None = None
    final: bool = False  # not worth another attempt


class _PinnedSMTP(smtplib.SMTP):
    """Connects to an address checked by the guard, while greeting, STARTTLS (certificate
    name) and logs use the relay's name; ``abort`` shuts the socket from another thread."""

    def __init__(self, address: str, *, timeout: float, local_hostname: str) -> None:
        self._address = address
        super().__init__(timeout=timeout, local_hostname=local_hostname)

    def connect(self, host: str = "localhost", port: int = 0, source_address: Any = None) -> Any:
        self._host = host  # STARTTLS verifies the relay's certificate against this name
        return super().connect(host, port, source_address)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self._address, port), timeout)

    def abort(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Mailer:
    """Turns an e-mail delivery into a sent mail (or a retryable / final error)."""

    def __init__(
        self,
        store: Store,
        smtp_url: str,
        *,
        sender: str,
        public_url: str,
        targets: TargetGuard | None = None,
        timeout_s: float = 10.0,
        clock: Clock | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.server = SmtpServer.from_url(smtp_url)
        self._store = store
        self._sender = sender
        self._public_url = public_url
        self._targets = targets
        self.timeout_s = timeout_s
        self._clock = clock
        self._tls = tls or ssl.create_default_context()
        # EHLO name: the host's name, not socket.getfqdn() (a reverse lookup per mail).
        self._local = socket.gethostname() or "cargowatch"

    async def send(self, delivery: Doc) -> MailOutcome:
        """One attempt, in a worker thread (smtplib blocks)."""
        return await asyncio.to_thread(self._send, delivery)

    # -- in the worker thread -----------------------------------------------------------------
    def _send(self, delivery: Doc) -> MailOutcome:
        to = str(delivery.get("to") or "")
        shipper = self._store.get_shipper(str(delivery.get("shipper")))
        if not still_notified((shipper or {}).get("notify"), to):
            return MailOutcome(False, "address no longer notified", final=True)
        try:
            message = compose(
                delivery,
                sender=self._sender,
                public_url=self._public_url,
                **self._context(delivery),
                now=self._now(),
            )
        except (ValueError, KeyError, TypeError) as exc:
            logger.error("e-mail delivery %s cannot be composed: %s", delivery["delivery_id"], exc)
            return MailOutcome(False, "bad event", final=True)
        try:
            address = self._address()
        except RefusedTarget:
            logger.warning("SMTP relay %s refused (SSRF guard)", self.server.host)
            return MailOutcome(False, REFUSED)
        except UnresolvedTarget:
            logger.info("SMTP relay %s does not resolve", self.server.host)
            return MailOutcome(False, "connection failed")
        return self._transmit(address, message, to)

    def _now(self) -> datetime | None:
        if self._clock is None:
            return None
        return datetime.fromtimestamp(self._clock.now_ms() / 1000, UTC)

    def _context(self, delivery: Doc) -> dict[str, Any]:
        """The trip and its carrier (with contacts), read now: the mail shows them as they
        are when it is sent. A store without carriers yet, or a carrier that cannot be read,
        leaves the contacts out rather than holding the mail back."""
        trip_id = _data(delivery).get("trip_id")
        trip = self._store.get_trip(str(trip_id)) if trip_id else None
        carrier = None
        carrier_id = (trip or {}).get("carrier")
        get_carrier = getattr(self._store, "get_carrier", None)
        if carrier_id and callable(get_carrier):
            try:
                found = get_carrier(str(carrier_id))
                carrier = found if isinstance(found, dict) else None
            except Unavailable:
                raise
            except Exception:
                logger.warning("carrier %s could not be read", carrier_id, exc_info=True)
        return {"trip": trip, "carrier": carrier}

    def _address(self) -> str:
        """The address to connect to: checked by the guard unless private targets are allowed
        (then the relay's name, resolved by the socket library)."""
        if self._targets is None or self._targets.allow_private:
            return self.server.host
        found = self._targets.host_addresses(self.server.host, self.server.port)
        return found[0].split("%", 1)[0]

    def _transmit(self, address: str, message: Any, to: str) -> MailOutcome:
        server = self.server
        timed_out = threading.Event()
        smtp: _PinnedSMTP | None = None

        def watchdog() -> None:
            timed_out.set()
            if smtp is not None:
                smtp.abort()

        timer = threading.Timer(self.timeout_s, watchdog)
        timer.daemon = True
        timer.start()
        sent = False
        try:
            smtp = _PinnedSMTP(address, timeout=self.timeout_s, local_hostname=self._local)
            smtp.connect(server.host, server.port)
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls(context=self._tls)
                smtp.ehlo()
            if server.user is not None:
                smtp.login(server.user, server.password or "")
            smtp.send_message(message, from_addr=self._sender, to_addrs=[to])
            sent = True
            # The relay has taken the mail: a lost goodbye changes nothing.
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.quit()
            return MailOutcome(True)
        except smtplib.SMTPRecipientsRefused as exc:
            code = next(iter(exc.recipients.values()), (0, b""))[0]
            logger.warning("SMTP relay refused recipient %s: %s", to, exc.recipients)
            return MailOutcome(False, f"SMTP {code}", final=500 <= code < 600)
        except smtplib.SMTPAuthenticationError as exc:
            logger.warning("SMTP login to %s failed: %s", server.host, exc)
            return MailOutcome(False, "SMTP authentication failed")
        except smtplib.SMTPResponseException as exc:
            logger.info("SMTP relay %s: %s", server.host, exc)
            return MailOutcome(False, f"SMTP {exc.smtp_code}")
        except (ssl.SSLError, ssl.CertificateError) as exc:
            logger.warning("STARTTLS with %s failed: %s", server.host, exc)
            return MailOutcome(False, "TLS failed")
        except TimeoutError:
            return MailOutcome(False, "timeout")
        except (smtplib.SMTPException, OSError) as exc:
            if timed_out.is_set():
                return MailOutcome(False, "timeout")
            logger.info("SMTP relay %s: %s", server.host, f"{type(exc).__name__}: {exc}")
            return MailOutcome(False, "connection failed")
        finally:
            timer.cancel()
            if smtp is not None and not sent:
                smtp.close()


def _data(delivery: Doc) -> Doc:
    try:
        data: Doc = envelope(delivery)["data"]
    except (ValueError, KeyError, TypeError):
        return {}
    return data
