"""Header blocks remembered (``telemetry.bus.headers``): the same dicts as the client's own
parser, status blocks never remembered, and the cache bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from telemetry.bus.headers import cache_headers, cached_parser

PLAIN = b"NATS/1.0\r\nNmqtt-Pub:1\r\n\r\n"


class Counting:
    """A stand-in for the client's parser (a pure function of the block), counting calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, headers: bytes) -> dict[str, str] | None:
        self.calls += 1
        if not headers:
            return None
        return {"raw": headers.decode("latin-1")}


async def test_a_plain_block_is_parsed_once() -> None:
    parse = Counting()
    cached = cached_parser(parse)
    first = await cached(PLAIN)
    for _ in range(100):
        assert await cached(PLAIN) == first
    assert parse.calls == 1


async def test_status_blocks_and_empty_headers_are_parsed_every_time() -> None:
    parse = Counting()
    cached = cached_parser(parse)
    status = b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 5\r\n\r\n"
    for _ in range(3):
        assert await cached(status) == {"raw": status.decode()}
        assert await cached(b"") is None
    assert parse.calls == 6


async def test_the_cache_is_bounded_and_keeps_the_busy_block() -> None:
    parse = Counting()
    cached = cached_parser(parse, entries=4)
    await cached(PLAIN)
    for i in range(50):  # unique blocks (a bundle's Nats-Msg-Id) churn through
        await cached(f"NATS/1.0\r\nNats-Msg-Id:{i}\r\n\r\n".encode())
        await cached(PLAIN)
    assert parse.calls == 51  # PLAIN stayed remembered


@given(st.lists(st.binary(max_size=40), max_size=30))
async def test_same_answers_as_the_parser(blocks: list[bytes]) -> None:
    plain = [b"NATS/1.0\r\n" + b for b in blocks] + blocks
    cached = cached_parser(Counting(), entries=3)
    direct = Counting()
    for block in plain + plain:
        assert await cached(block) == await direct(block)


async def test_on_the_real_client() -> None:
    nc = Client()
    assert cache_headers(nc)
    assert await nc._process_headers(PLAIN) == {"Nmqtt-Pub": "1"}
    assert await nc._process_headers(PLAIN) == {"Nmqtt-Pub": "1"}
    status = await nc._process_headers(b"NATS/1.0 404 No Messages\r\n\r\n")
    assert status is not None and status["Status"] == "404"
