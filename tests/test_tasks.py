"""Owned jobs with a limit, and waits that end when the process stops."""

from __future__ import annotations

import asyncio

import pytest

from cefmp4.common.tasks import Jobs, cancel_and_wait, stopped_within


async def test_jobs_run_at_most_the_limit_at_once_and_all_finish() -> None:
    running = 0
    most = 0
    finished = 0

    async def job() -> None:
        nonlocal running, most, finished
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        finished += 1

    async with Jobs(3) as jobs:
        for _ in range(10):
            await jobs.start(job())

    assert (most, finished, jobs.running) == (3, 10, 0)


async def test_a_failing_job_cancels_the_others_and_its_error_comes_out() -> None:
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ExceptionGroup) as raised:
        async with Jobs(2) as jobs:
            jobs.start_now(forever())
            await jobs.start(fails())

    assert raised.group_contains(ValueError)
    assert cancelled.is_set()


async def test_stopped_within_ends_at_once_when_stopped_and_else_times_out() -> None:
    stop = asyncio.Event()
    assert await stopped_within(stop, 0.01) is False
    stop.set()
    assert await stopped_within(stop, 60) is True


async def test_cancel_and_wait_ends_a_task_that_swallows_a_cancellation() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as a library call that eats the first one

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)

    await asyncio.wait_for(cancel_and_wait([task], every_s=0.01), 5)

    assert task.cancelled() and swallowed == 1
