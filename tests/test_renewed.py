"""Work that holds something with a ttl (a path lock, a part claim) stops when it lapses."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from common.lease import renewed

TTL_MS = 30


async def test_work_is_cancelled_once_a_renewal_is_refused() -> None:
    renewals = 0

    async def refused_on_the_third() -> bool:
        nonlocal renewals
        renewals += 1
        return renewals < 3

    async def work() -> None:
        async with renewed(refused_on_the_third, TTL_MS, "the test lock"):
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert renewals == 3


async def test_a_short_redis_outage_does_not_stop_the_work() -> None:
    calls = 0
    done = asyncio.Event()

    async def flaky() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RedisConnectionError("connection reset")
        if calls >= 4:
            done.set()
        return True

    async with renewed(flaky, TTL_MS, "the test lock"):
        await done.wait()  # renewals went on after the failed one
    assert calls >= 4
