"""What runs beside a long-running command: its heartbeat, /metrics, the Redis gauges.

`cefmp4 producer`, `consumer` and `run` run inside `supervise`; other commands run
without any of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from common import health, metrics
from common.config import Settings
from common.log import EventLog

logger = logging.getLogger(__name__)

SERVICES = frozenset({"producer", "consumer", "run"})
UPLOADING = frozenset({"consumer", "run"})


@asynccontextmanager
async def supervise(settings: Settings, log: EventLog, command: str) -> AsyncIterator[None]:
    if command not in SERVICES:
        yield
        return
    server = metrics.serve(settings)
    jobs: list[Coroutine[Any, Any, None]] = [health.beat(settings.health_file)]
    if command in UPLOADING:
        from consumer.gauges import refresh_forever

        jobs.append(refresh_forever(log))
    tasks = [asyncio.create_task(job) for job in jobs]
    for task in tasks:
        task.add_done_callback(_report_failure)
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        health.clear(settings.health_file)
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()


def _report_failure(task: asyncio.Task[None]) -> None:
    # A monitoring task ends only when cancelled; anything else is a bug, said at once.
    if not task.cancelled() and task.exception() is not None:
        logger.error("monitoring task %s failed", task.get_coro(), exc_info=task.exception())
