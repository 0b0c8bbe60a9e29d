"""Redis behind Sentinel: every process follows a failover by itself and nothing is lost.

A primary, one replica and three sentinels from `redis-server`; the primary is SIGKILLed
while recordings grow, so whatever it had not passed on to the replica is gone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cefmp4.common.eventlog import EventLog
from cefmp4.common.s3 import Storage
from ops.deployment import DeploymentEnv
from ops.local_services import LocalSentinelSet
from tests.conftest import Processes, eventually
from tests.test_pipeline import append_slowly, parts_sent, wait_completed
from tests.test_redis_sentinel import MASTER, sentinel_deployment


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[LocalSentinelSet]:
    with LocalSentinelSet(tmp_path / "sentinel-set", MASTER) as sentinels:
        yield sentinels


@pytest.fixture
def deployment_env(deployment_env: DeploymentEnv, sentinel_set: LocalSentinelSet) -> DeploymentEnv:
    return sentinel_deployment(deployment_env, sentinel_set)


async def test_recordings_upload_whole_through_a_failover_of_the_primary(
    sentinel_set: LocalSentinelSet,
    pipeline: Processes,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
) -> None:
    names = [f"cam{i}.mp4" for i in range(3)]
    first = {name: [os.urandom(256 * 1024) for _ in range(24)] for name in names}  # 6 MiB
    rest = {name: [os.urandom(256 * 1024) for _ in range(24)] for name in names}
    await asyncio.gather(*(append_slowly(watch_dir / n, first[n], 0.01) for n in names))
    await asyncio.gather(*(parts_sent(log, name, 1) for name in names))
    primary = sentinel_set.primary()
    assert primary is not None

    primary.kill()
    # The recorders go on while the sentinels agree on a new primary.
    await asyncio.gather(*(append_slowly(watch_dir / n, rest[n], 0.05) for n in names))

    async def failed_over() -> bool:
        return sentinel_set.primary() not in (None, primary)

    await eventually(failed_over, 30, "the sentinels to promote the replica")
    primary.start()  # back as a replica of the new primary
    for name in names:
        await wait_completed(log, storage, watch_dir, name, timeout_s=90)

    async def nothing_open() -> bool:
        return await storage.open_uploads() == []

    await eventually(nothing_open, 30, "every multipart upload completed or aborted")
    assert pipeline.started and all(p.poll() is None for p in pipeline.started)
