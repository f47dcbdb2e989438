"""At-least-once webhook delivery from the store's outbox (contract §6).

The outbox is the state: a restart loses nothing, because every pending delivery, its
attempt count and its next attempt time are stored rows. The sender only sends what it has
claimed: ``Store.claim_deliveries`` leases due rows to this sender's ``owner`` for
``lease_s`` (longer than one attempt), so no other sender, in this process or another,
gets them meanwhile, and it hands out only the oldest pending delivery per (subscription,
alarm or trip), so events of one alarm reach a receiver in order. The outcome is recorded
with ``Store.complete_delivery``, a compare-and-set on the lease: a sender whose lease
expired (it stalled, or died and was replaced) cannot overwrite a newer attempt's record.
A sender that dies holding leases delays those deliveries by at most ``lease_s``; one that
is closed gives its leases back.

(Before leases, a pass that read a delivery as due while its attempt was in flight could
send it again once that attempt finished: the in-process "in flight" check came after the
read, and the read could be older than the recorded outcome.)

Isolation between receivers: each subscription has at most ``per_receiver`` requests in
flight, every request has a hard total timeout, and a receiver that keeps failing is paused
(a circuit breaker): while paused its due deliveries are moved to the end of the pause
without an attempt, so they stop crowding the due list and cannot hold the shared request
slots that healthy receivers need.

E-mail notifications (contract §5) are outbox rows too (``kind: "email"``, one per event
and address): this loop claims them with the rest and hands them to the ``mailer``
(``alerts.mail_smtp``), with the same leases, retries, breaker and at-least-once record.
Each mail sent, or given up, is written to the alarm's history in the same transaction as
the delivery's outcome. Without a mailer (no ``CARGOWATCH_SMTP``) they wait, unattempted,
until one is configured or they are too old.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import socket
import uuid
from dataclasses import dataclass
from types import TracebackType

import httpx

from alerts.mail_notify import KIND as EMAIL_KIND
from alerts.mail_smtp import Mailer
from alerts.metrics import AlertMetrics, NullAlertMetrics
from alerts.signing import HEADER, sign
from alerts.targets import REFUSED, RefusedTarget, TargetGuard
from core.clock import Clock
from core.errors import NotFound
from telemetry.store.base import Doc, Store

logger = logging.getLogger(__name__)

BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 30 * 60.0
MIN_MAX_AGE_S = 24 * 3600.0
# Consecutive failures of one receiver before it is paused.
BREAKER_THRESHOLD = 3
_MAX_ERROR_LEN = 500
_STORE_RETRY_CAP_S = 30.0
# Margin of a lease over the request timeout: the outcome must be recorded before it expires.
LEASE_MARGIN_S = 5.0
# How long an e-mail waits before it is looked at again while no SMTP server is configured.
UNCONFIGURED_WAIT_S = 600.0
UNCONFIGURED = "e-mail is not configured"


def backoff_s(
    attempts: int,
    rng: random.Random,
    *,
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
) -> float:
    """Delay before the next attempt after ``attempts`` failed ones: ``base_s * 2**(n-1)``
    capped at ``cap_s``, times a jitter in [0.8, 1.2) so receivers that failed together do
    not all come back at once."""
    exp = min(cap_s, base_s * 2.0 ** max(0, attempts - 1))
    return exp * (0.8 + 0.4 * rng.random())


def default_owner() -> str:
    """A lease owner unique to this sender: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class _Receiver:
    in_flight: int = 0
    failures: int = 0  # consecutive
    paused_until: int = 0  # epoch ms of the injected clock


class WebhookSender:
    """POSTs due outbox deliveries, signs them, records the outcome.

    Use ``run()`` as a long-lived task, or ``deliver_due()`` for one pass (tests). Call
    ``aclose()`` (or use ``async with``) to release the HTTP client.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 10.0,
        max_age_s: float = 48 * 3600,
        concurrency: int = 8,
        per_receiver: int = 2,
        batch: int = 500,
        rng: random.Random | None = None,
        metrics: AlertMetrics | None = None,
        owner: str | None = None,
        lease_s: float = 60.0,
        targets: TargetGuard | None = None,
        mailer: Mailer | None = None,
    ) -> None:
        if max_age_s < MIN_MAX_AGE_S:
            raise ValueError("webhooks are retried for at least 24 h (contract §6)")
        if concurrency < 1 or per_receiver < 1:
            raise ValueError("concurrency and per_receiver must be at least 1")
        longest = max(timeout_s, mailer.timeout_s if mailer is not None else 0.0)
        if lease_s < longest + LEASE_MARGIN_S:
            raise ValueError(
                f"lease_s must cover one attempt: at least timeout_s + {LEASE_MARGIN_S:g}"
            )
        self.owner = owner or default_owner()
        # The SSRF guard, checked at every attempt (None: any target; tests' receivers).
        self._targets = targets
        # Sends the e-mail deliveries (None: no SMTP server; they wait).
        self._mailer = mailer
        self._lease_ms = int(lease_s * 1000)
        self._store = store
        self._clock = clock
        self._transport = transport
        self._timeout_s = timeout_s
        self._max_age_ms = int(max_age_s * 1000)
        self._concurrency = concurrency
        self._per_receiver = per_receiver
        self._batch = batch
        self._rng = rng or random.Random()
        self._client: httpx.AsyncClient | None = None
        self._receivers: dict[str, _Receiver] = collections.defaultdict(_Receiver)
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._wake: asyncio.Event | None = None
        self.metrics: AlertMetrics = metrics or NullAlertMetrics()

    # -- life cycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel requests in flight, give their leases back and close the HTTP client.

        A cancelled request's outcome is unknown, so it is sent again (at-least-once): at
        once by whichever sender claims it next, instead of after the lease."""
        cancelled = await self._cancel_in_flight()
        if cancelled:
            try:
                await asyncio.to_thread(self._store.release_deliveries, cancelled, self.owner)
            except Exception:
                logger.warning(
                    "could not give back %d delivery lease(s); they expire in %gs",
                    len(cancelled),
                    self._lease_ms / 1000,
                    exc_info=True,
                )
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # -- delivery -----------------------------------------------------------------------------
    async def run(self, poll_s: float = 0.5) -> None:
        """Deliver until cancelled. Store errors are logged and retried with a back-off; the
        loop wakes early when a delivery finishes (its successor may now be due)."""
        self._wake = asyncio.Event()
        delay = poll_s
        try:
            while True:
                try:
                    await self._dispatch()
                    delay = poll_s
                except Exception:
                    delay = min(max(delay, poll_s) * 2, _STORE_RETRY_CAP_S)
                    self.metrics.alerts_error("webhook_loop")
                    logger.exception("webhook dispatch failed; retrying in %.3gs", delay)
                await self._sleep_or_wake(delay)
        finally:
            await self.aclose()
            self._wake = None

    async def deliver_due(self) -> int:
        """One pass: send every due delivery the limits allow and wait for the outcomes.
        Returns the number of requests made."""
        tasks = await self._dispatch()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    async def _dispatch(self) -> list[asyncio.Task[None]]:
        now = self._clock.now_ms()
        if len(self._in_flight) >= self._concurrency:
            return []
        # Receivers at their limit are left out of the claim, so their backlog cannot fill
        # it and starve the others. A whole batch is claimed (not just the free slots) so a
        # paused receiver's rows are deferred in bulk; what is not sent is given back.
        full = sorted(w for w, r in self._receivers.items() if r.in_flight >= self._per_receiver)
        claimed = await asyncio.to_thread(
            self._store.claim_deliveries,
            now,
            self.owner,
            self._lease_ms,
            self._batch,
            skip_webhooks=full,
        )
        if not claimed:
            return []
        hooks = {h["webhook_id"]: h for h in await asyncio.to_thread(self._store.list_webhooks)}
        started: list[asyncio.Task[None]] = []
        unsent: list[str] = []
        for delivery in claimed:
            if delivery["delivery_id"] in self._in_flight:
                # Re-claimed by us after our own lease ran out (a clock jump): the attempt
                # in flight records the outcome and clears the lease.
                continue
            hook: Doc | None = None
            if delivery.get("kind") == EMAIL_KIND:
                if self._mailer is None:
                    await self._unconfigured(delivery, now)
                    continue
            else:
                hook = hooks.get(delivery["webhook_id"])
                if hook is None or hook.get("shipper") != delivery.get("shipper"):
                    await self._finish(delivery, ok=False, error="webhook deleted", final=True)
                    continue
            receiver = self._receivers[delivery["webhook_id"]]
            if receiver.paused_until > now:
                await self._defer(delivery, receiver.paused_until)
                continue
            if (
                receiver.in_flight >= self._per_receiver
                or len(self._in_flight) >= self._concurrency
            ):
                unsent.append(delivery["delivery_id"])  # given back: due on the next pass
                continue
            receiver.in_flight += 1
            task = asyncio.create_task(self._attempt(delivery, hook, receiver))
            self._in_flight[delivery["delivery_id"]] = task
            started.append(task)
        if unsent:
            await asyncio.to_thread(self._store.release_deliveries, unsent, self.owner)
        return started

    async def _attempt(self, delivery: Doc, hook: Doc | None, receiver: _Receiver) -> None:
        try:
            if hook is None:  # an e-mail (the mailer is set: _dispatch checked)
                assert self._mailer is not None
                outcome = await self._mailer.send(delivery)
                ok, error, give_up = outcome.ok, outcome.error, outcome.final
            else:
                ok, error = await self._post(delivery, hook)
                give_up = False
            now = self._clock.now_ms()
            if ok:
                receiver.failures = 0
                receiver.paused_until = 0
            else:
                receiver.failures += 1
                if receiver.failures >= BREAKER_THRESHOLD:
                    pause = backoff_s(receiver.failures - BREAKER_THRESHOLD + 1, self._rng)
                    receiver.paused_until = now + int(pause * 1000)
            final = not ok and (give_up or now >= int(delivery["created_at"]) + self._max_age_ms)
            await self._finish(delivery, ok=ok, error=error, final=final, attempted=True)
        except Exception:
            # The outcome could not be stored: the row is sent again once the lease
            # expires (at-least-once; the receiver de-duplicates by event id).
            self.metrics.alerts_error("webhook_loop")
            logger.exception("recording delivery %s failed", delivery["delivery_id"])
        finally:
            receiver.in_flight -= 1
            self._in_flight.pop(delivery["delivery_id"], None)
            if self._wake is not None:
                self._wake.set()

    async def _post(self, delivery: Doc, hook: Doc) -> tuple[bool, str | None]:
        """One attempt. The error a shipper reads says only what it needs ("timeout",
        "connection failed", "HTTP 500", "refused target"): never which host or port
        answered what (that would make the sender a port scanner); the log has details."""
        body = delivery["body"].encode()
        t = self._clock.now_ms() // 1000
        url = hook["url"]
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "cargowatch-webhooks/1",
        }
        extensions: dict[str, str] = {}
        try:
            if self._targets is not None and not self._targets.allow_private:
                pinned = await asyncio.to_thread(self._targets.pin, url)
                url, headers["Host"] = pinned.url, pinned.host
                if pinned.sni:
                    extensions["sni_hostname"] = pinned.sni
            headers[HEADER] = sign(hook["secret"], body, t)
            # httpx timeouts are per phase; the contract's 10 s is for the whole request.
            async with asyncio.timeout(self._timeout_s):
                response = await self._http().post(
                    url, content=body, headers=headers, extensions=extensions
                )
        except RefusedTarget:
            logger.warning("webhook %s: target %s refused (SSRF guard)", hook["webhook_id"], url)
            return False, REFUSED
        except TimeoutError:
            return False, "timeout"
        except Exception as exc:  # connection refused, bad URL, protocol error, no DNS, ...
            logger.info("webhook %s: %s", hook["webhook_id"], f"{type(exc).__name__}: {exc}")
            return False, "connection failed"
        if 200 <= response.status_code < 300:
            return True, None
        return False, f"HTTP {response.status_code}"

    async def _finish(
        self, delivery: Doc, *, ok: bool, error: str | None, final: bool, attempted: bool = False
    ) -> None:
        now = self._clock.now_ms()
        updated = dict(delivery)
        if attempted:
            updated["attempts"] = int(delivery.get("attempts") or 0) + 1
            updated["last_attempt_at"] = now
        if ok:
            updated["status"] = "delivered"
            updated["delivered_at"] = now
            updated["last_error"] = None
            result = "delivered"
        elif final:
            updated["status"] = "dead"
            updated["last_error"] = error
            result = "dead"
        else:
            delay = backoff_s(updated["attempts"], self._rng)
            updated["next_attempt_at"] = now + int(delay * 1000)
            updated["last_error"] = error
            result = "failed"
        if not await self._complete(updated, _history_entry(updated, now, ok=ok, final=final)):
            return
        self.metrics.webhook_result(result)
        if not ok:
            log = logger.warning if final else logger.info
            log(
                "delivery %s to %s %s: %s (attempt %s)",
                delivery["delivery_id"],
                delivery["webhook_id"],
                result,
                error,
                updated.get("attempts"),
            )

    async def _defer(self, delivery: Doc, until: int) -> None:
        """Move a paused receiver's delivery to the end of the pause (no attempt counted)."""
        updated = dict(delivery)
        updated["next_attempt_at"] = until + int(self._rng.random() * 1000)
        if await self._complete(updated):
            self.metrics.webhook_result("deferred")

    async def _unconfigured(self, delivery: Doc, now: int) -> None:
        """An e-mail while no SMTP server is configured: looked at again later, unattempted;
        given up (and said so in the alarm's history) once it is too old."""
        if now >= int(delivery["created_at"]) + self._max_age_ms:
            await self._finish(delivery, ok=False, error=UNCONFIGURED, final=True)
            return
        updated = dict(delivery)
        updated["next_attempt_at"] = now + int(UNCONFIGURED_WAIT_S * 1000)
        updated["last_error"] = UNCONFIGURED
        if await self._complete(updated):
            self.metrics.webhook_result("deferred")

    async def _complete(self, updated: Doc, history: Doc | None = None) -> bool:
        """Record the outcome if this sender still holds the lease (compare-and-set), and
        with it, in the same transaction, the alarm history entry of an e-mail."""

        def write() -> bool:
            with self._store.unit_of_work():
                if not self._store.complete_delivery(updated, self.owner):
                    return False
                if history is not None:
                    self._add_history(str(updated.get("alarm_id")), history)
                return True

        if await asyncio.to_thread(write):
            return True
        # Our lease ran out and another sender claimed the delivery: its record stands.
        logger.warning(
            "webhook delivery %s: lease lost before the outcome was recorded",
            updated["delivery_id"],
        )
        return False

    def _add_history(self, alarm_id: str, entry: Doc) -> None:
        try:
            with self._store.unit_of_work():  # a savepoint: a missing alarm spoils nothing
                self._store.add_alarm_history(alarm_id, entry)
        except NotFound:
            logger.info("e-mail sent for %s, which has no alarm history to record it", alarm_id)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                follow_redirects=False,
                timeout=self._timeout_s,
            )
        return self._client

    async def _sleep_or_wake(self, seconds: float) -> None:
        assert self._wake is not None
        wake = self._wake
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waiter = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waiter):
                task.cancel()
            await asyncio.gather(sleeper, waiter, return_exceptions=True)
        wake.clear()

    async def _cancel_in_flight(self) -> list[str]:
        """Cancel the attempts in flight; the ids of their deliveries."""
        held = list(self._in_flight)
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return held


def _history_entry(delivery: Doc, now: int, *, ok: bool, final: bool) -> Doc | None:
    """The alarm history entry of an e-mail sent or given up (None: nothing to record)."""
    if delivery.get("kind") != EMAIL_KIND or not delivery.get("alarm_id") or not (ok or final):
        return None
    what = f"to {delivery.get('to')}: {delivery.get('event_type')}"
    return {
        "at": now,
        "by": "email",
        "action": "notified" if ok else "notify_failed",
        "from": None,
        "to": None,
        "note": what if ok else f"{what}: not sent ({delivery.get('last_error')})",
    }
