"""`cefmp4 consumer`: the uploader, plus the projector and the stale checker under leases."""

from __future__ import annotations

import asyncio
import logging

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


async def serve_consumer(
    settings: Settings, log: EventLog, consumer: str, stop: asyncio.Event
) -> None:
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
