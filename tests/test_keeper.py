"""Work holding something with a ttl (a lease, a path lock, a part claim) stops when it lapses."""

from __future__ import annotations

import asyncio

import pytest

from cefmp4.common.errors import LeaseLost, LogUnavailable
from cefmp4.common.lease import Keeper

TTL_MS = 30


async def test_work_stops_with_lease_lost_once_a_renewal_is_refused() -> None:
    renewals = 0

    async def refused_on_the_third() -> bool:
        nonlocal renewals
        renewals += 1
        return renewals < 3

    async def work() -> None:
        async with Keeper(refused_on_the_third, TTL_MS, "the test lock"):
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    with pytest.raises(LeaseLost, match="the test lock lapsed"):
        await task
    assert renewals == 3
    assert task.cancelling() == 0  # the keeper's own cancellation is not left behind


async def test_a_shutdown_is_a_cancellation_not_a_lost_lease() -> None:
    started = asyncio.Event()

    async def always() -> bool:
        return True

    async def work() -> None:
        async with Keeper(always, TTL_MS, "the test lock"):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_short_redis_outage_does_not_stop_the_work() -> None:
    calls = 0
    done = asyncio.Event()

    async def flaky() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise LogUnavailable("Redis EVALSHA: ConnectionError: connection reset")
        if calls >= 4:
            done.set()
        return True

    async with Keeper(flaky, TTL_MS, "the test lock"):
        await done.wait()  # renewals went on after the failed one
    assert calls >= 4


async def test_an_outage_longer_than_the_ttl_lets_it_lapse() -> None:
    async def down() -> bool:
        raise LogUnavailable("Redis EVALSHA: ConnectionError: connection refused")

    with pytest.raises(LeaseLost):
        async with Keeper(down, TTL_MS, "the test lock"):
            await asyncio.Event().wait()
