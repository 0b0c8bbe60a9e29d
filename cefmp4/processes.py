"""The roles wired into processes: `cefmp4 producer`, `consumer` and `run`.

A consumer process runs an uploader, and the projector, the stale checker (with the orphan
sweep and, with AFTER_UPLOAD, the reclaimer) and, with NOTIFY_URL, the notifier whenever it
holds their leases. Beside every long-running process run its heartbeat, its /metrics
server, the free-space gauges of WATCH_DIR and, where it uploads, the gauges read from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import sys
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from cefmp4.common import health, metrics
from cefmp4.common.completions import Publishing
from cefmp4.common.config import Settings
from cefmp4.common.eventlog import EventLog
from cefmp4.common.files import watch_root
from cefmp4.common.freespace import watch_free_space
from cefmp4.common.keys import NOTIFIER, PROJECTOR, STALE_CHECKER
from cefmp4.common.lease import Lease
from cefmp4.common.retry import Outage, until_done
from cefmp4.common.s3 import Storage
from cefmp4.common.tasks import cancel_and_wait
from cefmp4.consumer.gauges import refresh_forever
from cefmp4.consumer.notifier import Notifier, ensure_group
from cefmp4.consumer.orphans import OrphanSweeper
from cefmp4.consumer.projector import Projector
from cefmp4.consumer.pruner import Pruner
from cefmp4.consumer.reclaim import Reclaimer
from cefmp4.consumer.retention import Retention
from cefmp4.consumer.stale import StaleChecker
from cefmp4.consumer.uploader import Uploader
from cefmp4.producer.watcher import Producer

logger = logging.getLogger(__name__)

LEASE_TTL_MS = 10_000
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


async def serve_producer(settings: Settings, log: EventLog, stop: asyncio.Event) -> None:
    async with _supervised(settings, log, uploading=False):
        await Producer(settings, log).run(stop)


async def serve_consumer(
    settings: Settings, log: EventLog, consumer: str, stop: asyncio.Event
) -> None:
    async with _supervised(settings, log, uploading=True):
        await _consumer(settings, log, consumer, stop)


async def serve_both(settings: Settings, log: EventLog, consumer: str, stop: asyncio.Event) -> None:
    async with _supervised(settings, log, uploading=True), asyncio.TaskGroup() as tasks:
        tasks.create_task(Producer(settings, log).run(stop))
        tasks.create_task(_consumer(settings, log, consumer, stop))


async def _consumer(settings: Settings, log: EventLog, consumer: str, stop: asyncio.Event) -> None:
    _keep_big_buffers_out_of_the_heap()
    await log.ensure_groups()
    projector_lease = Lease(log.redis, log.keys.lease(PROJECTOR), consumer, LEASE_TTL_MS)
    retention = Retention(settings, log, projector_lease)
    pruner = Pruner(log, settings.finished_stream_retention_seconds)
    publishing = Publishing(settings.s3_bucket_name, settings.completions_max_entries)
    projector = Projector(log, consumer, projector_lease, retention, pruner, publishing)
    stale = StaleChecker(settings, log, consumer)
    stale_lease = Lease(log.redis, log.keys.lease(STALE_CHECKER), consumer, LEASE_TTL_MS)
    notifier = None
    if settings.notify_url is not None:
        # Before anything is uploaded: every completion from now on is posted.
        await until_done(lambda: ensure_group(log.redis, log.keys), Outage("Redis", logger), stop)
        notifier = Notifier(settings, log.redis, log.keys)
        notifier_lease = Lease(log.redis, log.keys.lease(NOTIFIER), consumer, LEASE_TTL_MS)
    async with Storage(settings) as storage:
        # Wrong keys stop the process at start, with one line; an outage is waited out.
        await until_done(storage.check_credentials, Outage("S3", logger), stop)
        uploader = Uploader(settings, log, storage, consumer, stop)
        sweeper = OrphanSweeper(settings, storage, log.redis, log.keys)
        reclaimer = None
        if settings.after_upload != "keep":
            reclaimer = Reclaimer(settings, log, storage, watch_root(settings))

        async def stale_checker(role_stop: asyncio.Event) -> None:
            async with asyncio.TaskGroup() as roles:
                roles.create_task(stale.run(role_stop))
                roles.create_task(sweeper.run(role_stop))
                if reclaimer is not None:
                    roles.create_task(reclaimer.run(role_stop))

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(projector_lease.hold_while(projector.run, stop))
            tasks.create_task(stale_lease.hold_while(stale_checker, stop))
            tasks.create_task(uploader.run())
            if notifier is not None:
                tasks.create_task(notifier_lease.hold_while(notifier.run, stop))


def _keep_big_buffers_out_of_the_heap() -> None:
    """Have glibc map every buffer of 1 MiB or more on its own, and unmap it when freed.

    By default glibc raises that threshold after the first big free, so part-sized buffers
    freed by botocore and aiohttp stay in the heap and the peak memory keeps growing.
    """
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1024 * 1024)


@contextlib.asynccontextmanager
async def _supervised(settings: Settings, log: EventLog, *, uploading: bool) -> AsyncIterator[None]:
    """The heartbeat, /metrics and (where it uploads) the gauges, while the block runs."""
    server = metrics.serve(settings)
    logger.info("redis %s", settings.redis_display_url)  # once the settings all hold
    jobs: list[Coroutine[Any, Any, None]] = [
        health.beat(settings.heartbeat_path),
        watch_free_space(settings.watch_dir, settings.local_min_free_percent),
    ]
    if uploading:
        jobs.append(refresh_forever(log))
    tasks = [asyncio.create_task(job) for job in jobs]
    for task in tasks:
        task.add_done_callback(_report_failure)
    try:
        yield
    finally:
        await cancel_and_wait(tasks)
        health.clear(settings.heartbeat_path)
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()


def _report_failure(task: asyncio.Task[None]) -> None:
    # A monitoring task ends only when cancelled; anything else is a bug, said at once.
    if not task.cancelled() and task.exception() is not None:
        logger.error("monitoring task %s failed", task.get_coro(), exc_info=task.exception())
