"""Redis behind Sentinel: the commands and services work through the sentinels.

A primary, one replica and three sentinels from `redis-server`, shared by this module's
tests (each has its own key prefix); tests/test_redis_failover.py kills a primary.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cefmp4.common.eventlog import EventLog
from cefmp4.common.keys import GROUPS, PROJECTOR, UPLOADERS
from ops.deployment import DeploymentEnv
from ops.local_services import LocalSentinelSet
from tests.conftest import Services
from tests.test_cli import (  # noqa: F401  (run again here, through the sentinels)
    test_replay_command_rebuilds_deleted_state,
    test_status_shows_streams_as_table_and_json,
)
from tests.test_dead import test_dead_lists_requeues_and_drops_by_id  # noqa: F401
from tests.test_health import test_health_follows_the_heartbeat_of_a_running_consumer  # noqa: F401
from tests.test_metrics import test_consumer_metrics_count_an_upload_exactly  # noqa: F401

MIB = 1024 * 1024
MASTER = "cefmp4-test"


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinelSet]:
    with LocalSentinelSet(tmp_path_factory.mktemp("sentinel-set"), MASTER) as sentinels:
        yield sentinels


@pytest.fixture
def deployment_env(
    services: Services, sentinel_set: LocalSentinelSet, tmp_path: Path
) -> DeploymentEnv:
    return sentinel_deployment(services, sentinel_set, tmp_path)


def sentinel_deployment(
    services: Services, sentinel_set: LocalSentinelSet, tmp_path: Path
) -> DeploymentEnv:
    """A deployment that finds its Redis through `sentinel_set`."""
    token = uuid.uuid4().hex[:10]
    watch = tmp_path / "recordings"
    watch.mkdir()
    return DeploymentEnv(
        watch_dir=watch,
        # Only its user, password, database and TLS count: the sentinels name the primary.
        redis_url="redis://primary.invalid:6379/0",
        s3_endpoint_url=services.s3_endpoint_url,
        s3_access_key=services.s3_access_key,
        s3_secret_key=services.s3_secret_key,
        bucket=f"t{token}",
        key_prefix=f"t{token}:",
        settings={
            "REDIS_SENTINELS": sentinel_set.addresses,
            "REDIS_SENTINEL_MASTER": MASTER,
            "STREAM_CHUNK_SIZE_MB": "5",
            "WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE": "1",
            "STREAM_TIMEOUT_SECONDS": "10",
            # An upload whose UploadStarted was lost is swept soon, not in an hour.
            "ORPHAN_UPLOAD_GRACE_SECONDS": "5",
            "ORPHAN_CHECK_INTERVAL_SECONDS": "2",
        },
    )


async def test_groups_a_failover_lost_are_created_again(log: EventLog) -> None:
    # A replica promoted before its first full sync holds no log and no groups.
    await log.ensure_groups()
    await log.redis.delete(log.keys.events)

    assert await log.read(UPLOADERS, "c1", count=10, block_ms=10) == []
    assert await log.claim_stale(PROJECTOR, "c1", min_idle_ms=0, count=10) == []
    assert {group.name for group in await log.groups()} == set(GROUPS)
