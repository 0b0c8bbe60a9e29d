"""Redis Cluster (REDIS_CLUSTER=true): a representative part of the suite, on three nodes.

Every key of a deployment carries the prefix's hash tag, so its scripts, transactions and
scans all meet on the one node that holds its slot. The tests imported here run again in
this module against a cluster made with ``redis-cli --cluster create``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from redis.crc import key_slot

from cefmp4.common.eventlog import EventLog
from cefmp4.common.replicas import Replicated
from cefmp4.common.s3 import Storage
from cefmp4.consumer.intents import UploadIntents
from ops.deployment import DeploymentEnv
from ops.local_services import LocalRedisCluster
from tests.conftest import Processes
from tests.test_cli import (  # noqa: F401  (run again here, on the cluster)
    test_replay_command_rebuilds_deleted_state,
    test_status_shows_streams_as_table_and_json,
)
from tests.test_dead import test_dead_lists_requeues_and_drops_by_id  # noqa: F401
from tests.test_health import test_health_follows_the_heartbeat_of_a_running_consumer  # noqa: F401
from tests.test_metrics import test_consumer_metrics_count_an_upload_exactly  # noqa: F401
from tests.test_pipeline import (  # noqa: F401
    assert_nothing_open,
    test_file_deleted_while_recording_fails_its_stream_and_aborts_the_upload,
    test_parts_are_sent_while_the_file_grows,
    test_two_consumers_share_the_recordings,
    wait_completed,
)
from tests.test_projector import test_replay_rebuilds_state_identical_to_the_projection  # noqa: F401
from tests.test_replicas import unreplicated


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
def deployment_env(
    deployment_env: DeploymentEnv, redis_cluster: LocalRedisCluster
) -> DeploymentEnv:
    """conftest's deployment, on the cluster."""
    return replace(
        deployment_env,
        redis_url=redis_cluster.url,
        settings={"REDIS_CLUSTER": "true", **deployment_env.settings},
    )


async def test_every_key_of_a_deployment_is_in_one_slot(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    (watch_dir / "cam1.mp4").write_bytes(os.urandom(6 * 1024 * 1024))
    await wait_completed(log, storage, watch_dir, "cam1.mp4")

    assert log.keys.prefix.startswith("{t") and log.keys.prefix.endswith("}:")
    keys = [k async for k in log.redis.scan_iter(match=f"{log.keys.prefix}*", count=1000)]
    assert len(keys) > 5
    slots = {await log.redis.cluster_keyslot(key) for key in keys}  # type: ignore[attr-defined]
    assert len(slots) == 1
    await assert_nothing_open(storage)


async def test_wait_reaches_the_node_of_the_deployments_slot(log: EventLog) -> None:
    # The test cluster has no replicas: WAIT answers 0, after the timeout.
    intents = UploadIntents(log.redis, log.keys, Replicated(replicas=1, timeout_ms=100))
    before = unreplicated()

    await intents.intend("s1", "cam1.mp4")

    assert unreplicated() == before + 1
    assert await log.redis.hexists(log.keys.upload_intents, "s1")


async def test_the_pipeline_follows_its_slot_to_another_node(
    redis_cluster: LocalRedisCluster,
    pipeline: Processes,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
) -> None:
    (watch_dir / "before.mp4").write_bytes(os.urandom(6 * 1024 * 1024))
    await wait_completed(log, storage, watch_dir, "before.mp4")

    redis_cluster.move_slot(key_slot(log.keys.prefix.encode()))
    (watch_dir / "after.mp4").write_bytes(os.urandom(6 * 1024 * 1024))

    await wait_completed(log, storage, watch_dir, "after.mp4")
    await assert_nothing_open(storage)
    assert all(p.poll() is None for p in pipeline.started)
