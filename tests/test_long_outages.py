"""Outages of any length end with every recording completed and no dead letters."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from cefmp4.common.eventlog import EventLog
from cefmp4.common.s3 import Storage
from tests.conftest import Processes, Services
from tests.test_pipeline import assert_nothing_open, parts_sent, recording, wait_completed

# Longer than CLAIM_IDLE_SECONDS x DEAD_LETTER_AFTER_DELIVERIES below: an entry in progress
# all that time would be dead-lettered if every claim of it counted as a failed delivery.
OUTAGE_S = 8


@pytest.mark.parametrize("service", ["s3", "redis"])
async def test_an_outage_longer_than_the_claim_time_dead_letters_nothing(
    service: str,
    services: Services,
    processes: Processes,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
) -> None:
    server = services.s3 if service == "s3" else services.redis
    assert server is not None, "needs the tests' own servers to stop them"
    processes.start("producer")
    for _ in range(2):
        processes.start("consumer", CLAIM_IDLE_SECONDS="1", DEAD_LETTER_AFTER_DELIVERIES="2")
    names = ("a.mp4", "b.mp4")
    async with contextlib.AsyncExitStack() as recorders:
        for name in names:
            await recorders.enter_async_context(recording(watch_dir / name))
        for name in names:
            await parts_sent(log, name, 1)
        server.stop()
        await asyncio.sleep(OUTAGE_S)  # the outage itself, recorders writing on
        server.start()
        await parts_sent(log, "a.mp4", 3)

    for name in names:
        await wait_completed(log, storage, watch_dir, name, timeout_s=90)
    assert await log.redis.xlen(log.keys.dead) == 0
    assert all(p.poll() is None for p in processes.started)
    await assert_nothing_open(storage)
