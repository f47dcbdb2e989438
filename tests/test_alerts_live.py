from __future__ import annotations

import asyncio
import threading

import pytest

from alerts import LiveHub


def ev(n: int, shipper: str | None = "pg", type: str = "position") -> dict:
    return {"type": type, "shipper": shipper, "data": {"n": n}}


async def take(sub, n: int) -> list[dict]:
    return [await asyncio.wait_for(anext(sub), 2) for _ in range(n)]


async def test_subscribers_get_events_in_order_filtered_by_shipper() -> None:
    hub = LiveHub()
    everyone = hub.subscribe()
    pg = hub.subscribe(shipper="pg")
    acme = hub.subscribe(shipper="acme")
    hub.publish(ev(1, "pg"))
    hub.publish_many([ev(2, "acme"), ev(3, None), ev(4, "pg")])
    assert [e["data"]["n"] for e in await take(everyone, 4)] == [1, 2, 3, 4]
    assert [e["data"]["n"] for e in await take(pg, 2)] == [1, 4]
    assert [e["data"]["n"] for e in await take(acme, 1)] == [2]
    # nothing else is waiting for the filtered ones
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(acme), 0.05)
    assert hub.subscriber_count == 3


async def test_slow_subscriber_drops_oldest_and_gets_overflow_marker() -> None:
    hub = LiveHub()
    slow = hub.subscribe(maxsize=3)
    for n in range(5):
        hub.publish(ev(n))
    hub.publish_many([ev(n) for n in range(5, 12)])  # a batch larger than the buffer
    got = await take(slow, 4)
    assert got[0] == {"type": "overflow", "shipper": None, "data": {"dropped": 9}}
    assert [e["data"]["n"] for e in got[1:]] == [9, 10, 11]
    assert hub.counters["live_events_dropped_total"] == 9
    hub.publish(ev(12))
    assert (await take(slow, 1))[0]["data"]["n"] == 12  # no second marker without new drops
    hub.publish_many([ev(n) for n in range(13, 17)])
    assert slow.drain() == [
        {"type": "overflow", "shipper": None, "data": {"dropped": 1}},
        ev(14),
        ev(15),
        ev(16),
    ]
    assert slow.drain() == []


async def test_publish_from_other_threads_wakes_the_reader() -> None:
    hub = LiveHub()
    async with hub.subscribe(shipper="pg") as sub:
        n_threads, per_thread = 4, 250

        def publisher(k: int) -> None:
            for i in range(per_thread):
                hub.publish(ev(k * per_thread + i, "pg" if i % 2 == 0 else "acme"))

        threads = [threading.Thread(target=publisher, args=(k,)) for k in range(n_threads)]
        reader = asyncio.ensure_future(take(sub, n_threads * per_thread // 2))
        await asyncio.sleep(0)  # the reader is waiting before anything is published
        for t in threads:
            t.start()
        got = await reader
        for t in threads:
            t.join()
        numbers = [e["data"]["n"] for e in got]
        assert len(set(numbers)) == len(numbers) == 500
        for k in range(n_threads):  # per publisher, in order
            mine = [n for n in numbers if k * per_thread <= n < (k + 1) * per_thread]
            assert mine == sorted(mine)
    assert sub.closed and hub.subscriber_count == 0


async def test_close_ends_a_waiting_iteration_and_unsubscribes() -> None:
    hub = LiveHub()
    sub = hub.subscribe()
    seen: list[dict] = []

    async def consume() -> None:
        async for event in sub:
            seen.append(event)

    task = asyncio.ensure_future(consume())
    hub.publish(ev(1))
    await asyncio.sleep(0.01)
    sub.close()
    await asyncio.wait_for(task, 2)
    assert [e["data"]["n"] for e in seen] == [1]
    hub.publish(ev(2))  # no subscribers: a no-op
    assert hub.subscriber_count == 0


async def test_subscription_made_outside_the_loop_binds_on_first_read() -> None:
    hub = LiveHub()
    sub = await asyncio.to_thread(hub.subscribe)
    await asyncio.to_thread(hub.publish, ev(7))
    assert (await take(sub, 1))[0]["data"]["n"] == 7
    reader = asyncio.ensure_future(take(sub, 1))
    await asyncio.sleep(0)
    await asyncio.to_thread(hub.publish, ev(8))
    assert (await reader)[0]["data"]["n"] == 8
    hub.close()
    assert sub.closed


async def test_a_slow_reader_loses_positions_before_any_alarm() -> None:
    hub = LiveHub()
    slow = hub.subscribe(maxsize=4)
    hub.publish(ev(0, type="alarm.raised"))
    hub.publish_many([ev(n) for n in range(1, 20)])  # a flood of positions behind the alarm
    hub.publish(ev(20, type="alarm.acknowledged"))
    got = slow.drain()
    assert got[0]["type"] == "overflow" and got[0]["data"]["dropped"] == 17
    kinds = [(e["type"], e["data"]["n"]) for e in got[1:]]
    assert kinds == [
        ("alarm.raised", 0),
        ("position", 18),
        ("position", 19),
        ("alarm.acknowledged", 20),
    ]
    # alarms alone go only far beyond the bound (10 × maxsize), oldest first
    hub.publish_many([ev(n, type="alarm.raised") for n in range(100, 145)])
    got = slow.drain()
    assert got[0] == {"type": "overflow", "shipper": None, "data": {"dropped": 5}}
    assert [e["data"]["n"] for e in got[1:]] == list(range(105, 145))
