"""Deliveries to a partition consumer's inbox handed straight to it, bypassing the NATS
client's per-message path.

For every message the client (nats-py) builds a ``Msg``, puts it in the subscription's
queue, and a task per subscription takes it out again and awaits the callback: about as much
Python per device message as validating it. A partition consumer only appends each delivery to
its buffer, so ``route`` lets it receive the raw subject, reply and payload from the client's
protocol parser instead, with the headers parsed by the client's own (cached) parser.

``direct_delivery`` wraps the client's ``_process_msg`` once; messages to subscriptions not
routed take the client's path unchanged. A client without that method of the expected shape
(another nats-py version) is left alone, and the consumer keeps its callback subscription.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client

log = logging.getLogger(__name__)

#: subject, reply, payload, parsed headers (None: none)
Sink = Callable[[bytes, bytes, bytes, dict[str, str] | None], None]
ProcessMsg = Callable[[int, bytes, bytes, bytes, bytes], Awaitable[None]]

_ROUTES = "_cargowatch_direct_routes"
_PARAMS = ["sid", "subject", "reply", "data", "headers"]


def direct_delivery(nc: Client) -> dict[int, Sink] | None:
    """The client's routing table (subscription id → sink), installing the bypass on first
    use; None when this client's message path is not of the expected shape."""
    routes: dict[int, Sink] | None = getattr(nc, _ROUTES, None)
    if routes is not None:
        return routes
    process = getattr(nc, "_process_msg", None)
    headers = getattr(nc, "_process_headers", None)
    if not (
        inspect.iscoroutinefunction(process)
        and inspect.iscoroutinefunction(headers)
        and list(inspect.signature(process).parameters) == _PARAMS
    ):
        log.info("NATS client without the expected message path: deliveries take its queue")
        return None
    table: dict[int, Sink] = {}
    nc._process_msg = _bypass(nc, process, table)  # type: ignore[method-assign,assignment]
    setattr(nc, _ROUTES, table)
    return table


def _bypass(nc: Client, process: ProcessMsg, routes: dict[int, Sink]) -> ProcessMsg:
    async def process_msg(
        sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        sink = routes.get(sid)
        if sink is None:
            await process(sid, subject, reply, data, headers)
            return
        try:
            parsed = await nc._process_headers(headers) if headers else None
            sink(subject, reply, data, parsed)
        except Exception:
            # the client's reading must go on (an error here would drop the connection)
            log.exception("a delivery on subscription %d could not be handed over", sid)

    return process_msg


def route(nc: Client, sid: int, sink: Sink) -> bool:
    """Deliver subscription ``sid``'s messages to ``sink``; False if this client cannot."""
    routes = direct_delivery(nc)
    if routes is None:
        return False
    routes[sid] = sink
    return True


def unroute(nc: Client, sid: int) -> None:
    routes: dict[int, Sink] | None = getattr(nc, _ROUTES, None)
    if routes is not None:
        routes.pop(sid, None)
