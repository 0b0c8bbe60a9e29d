"""REDIS_WAIT_REPLICAS: an upload intent counts as written once a replica holds it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from cefmp4.common.eventlog import connect_url
from cefmp4.common.keys import Keys
from cefmp4.common.replicas import Replicated
from cefmp4.consumer.intents import UploadIntents
from ops.local_services import LocalRedis
from tests.conftest import eventually


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[LocalRedis, LocalRedis]]:
    primary = LocalRedis(tmp_path / "primary")
    replica = LocalRedis(
        tmp_path / "replica", extra_args=("--replicaof", "127.0.0.1", str(primary.port))
    )
    with primary, replica:
        yield primary, replica


def unreplicated() -> float:
    return REGISTRY.get_sample_value("cefmp4_redis_unreplicated_writes_total") or 0.0


async def test_an_intent_waits_for_a_replica_and_goes_on_without_one(
    primary_and_replica: tuple[LocalRedis, LocalRedis], caplog: pytest.LogCaptureFixture
) -> None:
    primary, replica = primary_and_replica
    redis = connect_url(primary.url)
    on_replica = connect_url(replica.url)
    keys = Keys("t:")
    intents = UploadIntents(redis, keys, Replicated(replicas=1, timeout_ms=300))

    async def synced() -> bool:
        info: dict[str, Any] = await redis.info("replication")
        return bool(info.get("slave0", {}).get("state") == "online")

    await eventually(synced, 20, "the replica to sync")
    before = unreplicated()

    await intents.intend("s1", "cam1.mp4")
    # Read at once from the replica: WAIT returned only once the replica had it.
    assert await on_replica.hexists(keys.upload_intents, "s1")
    assert unreplicated() == before

    replica.pause()  # a replica that does not answer
    try:
        with caplog.at_level(logging.WARNING, logger="cefmp4.common.replicas"):
            await intents.intend("s2", "cam2.mp4")
    finally:
        replica.resume()

    assert await redis.hexists(keys.upload_intents, "s2")  # written, and the step goes on
    assert unreplicated() == before + 1
    assert "only 0 of REDIS_WAIT_REPLICAS=1" in caplog.text
    await redis.aclose()
    await on_replica.aclose()
