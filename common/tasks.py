"""Owned tasks and stop-aware waits: no task runs without an owner that awaits or cancels it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, Self


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds`; True as soon as `stop` is set (also if it already was)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], every_s: float = 0.5) -> None:
    """Cancel `tasks` and wait until each has ended.

    The cancellation is repeated while a task runs on: a library call (redis-py's, seen
    here) can swallow one, and the task would then go on for ever.
    """
    while pending := {task for task in tasks if not task.done()}:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=every_s)


class Jobs:
    """A task group that runs at most `limit` jobs at once.

    `start` waits for a free place, so a caller that starts jobs in a loop is held back
    by the jobs themselves. Leaving the block waits for every job, as a TaskGroup does;
    a job that fails cancels the others and the error comes out of the block.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._group = asyncio.TaskGroup()
        self._running = 0
        self._place_freed = asyncio.Event()

    @property
    def running(self) -> int:
        return self._running

    async def __aenter__(self) -> Self:
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._group.__aexit__(exc_type, exc, tb)

    async def start(self, job: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `job` once fewer than `limit` jobs are running."""
        try:
            while self._running >= self.limit:
                self._place_freed.clear()
                await self._place_freed.wait()
        except BaseException:
            job.close()  # never started: no "never awaited" warning
            raise
        self._running += 1
        task = self._group.create_task(job)
        task.add_done_callback(self._finished)
        return task

    def start_now(self, job: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `job` now, outside the limit (a loop that must always run)."""
        return self._group.create_task(job)

    def _finished(self, _task: asyncio.Task[None]) -> None:
        self._running -= 1
        self._place_freed.set()
