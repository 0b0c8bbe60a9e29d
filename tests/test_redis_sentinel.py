"""Redis behind Sentinel: the commands and services work through the sentinels.

A primary, one replica and three sentinels from `redis-server`, shared by this module's
tests (each has its own key prefix); tests/test_redis_failover.py kills a primary.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from cefmp4.common.eventlog import EventLog
from cefmp4.common.keys import GROUPS, PROJECTOR, UPLOADERS
from ops.deployment import DeploymentEnv
from ops.local_services import LocalSentinelSet
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
def deployment_env(deployment_env: DeploymentEnv, sentinel_set: LocalSentinelSet) -> DeploymentEnv:
    return sentinel_deployment(deployment_env, sentinel_set)


def sentinel_deployment(base: DeploymentEnv, sentinel_set: LocalSentinelSet) -> DeploymentEnv:
    """conftest's deployment `base`, finding its Redis through `sentinel_set`."""
    return replace(
        base,
        # Only its user, password, database and TLS count: the sentinels name the primary.
        redis_url="redis://primary.invalid:6379/0",
        settings={
            "REDIS_SENTINELS": sentinel_set.addresses,
            "REDIS_SENTINEL_MASTER": MASTER,
            **base.settings,
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
