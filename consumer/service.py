"""`cefmp4 consumer`: the uploader, plus the projector and the stale checker under leases."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import sys

from common.config import Settings
from common.keys import PROJECTOR, STALE_CHECKER
from common.lease import Lease
from common.log import EventLog
from common.s3 import Storage
from consumer.orphans import OrphanSweeper
from consumer.projector import Projector
from consumer.retention import Retention
from consumer.stale import StaleChecker
from consumer.uploader import Uploader

logger = logging.getLogger(__name__)

LEASE_TTL_MS = 10_000


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def keep_big_buffers_out_of_the_heap() -> None:
    """Have glibc map every buffer of 1 MiB or more on its own, and unmap it when freed.

    By default glibc raises that threshold after the first big free, so part-sized buffers
    freed by botocore and aiohttp stay in the heap and the peak memory keeps growing.
    """
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1024 * 1024)


async def serve_consumer(
    settings: Settings, log: EventLog, consumer: str, stop: asyncio.Event
) -> None:
    keep_big_buffers_out_of_the_heap()
    await log.ensure_groups()
    projector_lease = Lease(log.redis, log.keys.lease(PROJECTOR), consumer, LEASE_TTL_MS)
    retention = Retention(settings, log, projector_lease)
    projector = Projector(log, consumer, projector_lease, retention)
    stale = StaleChecker(settings, log, consumer)
    stale_lease = Lease(log.redis, log.keys.lease(STALE_CHECKER), consumer, LEASE_TTL_MS)
    async with Storage(settings) as storage:
        uploader = Uploader(settings, log, storage, consumer)
        sweeper = OrphanSweeper(settings, storage, log.redis, log.keys)

        async def stale_checker(role_stop: asyncio.Event) -> None:
            async with asyncio.TaskGroup() as roles:
                roles.create_task(stale.run(role_stop))
                roles.create_task(sweeper.run(role_stop))

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(projector_lease.hold_while(projector.run, stop))
            tasks.create_task(stale_lease.hold_while(stale_checker, stop))
            tasks.create_task(uploader.run(stop))
