"""What counts as an outage to wait out, and how Redis failures reach the code: one tree."""

from __future__ import annotations

import errno

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from cefmp4.common.config import Settings
from cefmp4.common.errors import LogUnavailable, ProjectionBehind, StorageError
from cefmp4.common.eventlog import connect
from cefmp4.common.retry import transient
from cefmp4.consumer.uploader import worth_retrying
from ops.local_services import free_port


def test_a_disk_read_error_is_not_an_outage() -> None:
    eio = OSError(errno.EIO, "Input/output error")

    assert not transient(eio)
    assert not worth_retrying(eio)


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (LogUnavailable("Redis GET: ConnectionError: refused"), True),
        (StorageError("upload part 1: 503", retryable=True), True),
        (StorageError("upload part 1: AccessDenied", code="AccessDenied"), False),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), False),
        (ExceptionGroup("roles", [LogUnavailable("a"), StorageError("b", retryable=True)]), True),
        (ExceptionGroup("roles", [LogUnavailable("a"), ValueError("bug")]), False),
    ],
)
def test_only_redis_and_s3_outages_are_waited_out(error: BaseException, outage: bool) -> None:
    assert transient(error) is outage


def test_an_uploader_waits_for_the_projection_too() -> None:
    assert worth_retrying(ProjectionBehind("projection has not reached 5-0"))


async def test_redis_down_is_log_unavailable_caused_by_redis_pys_error(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": None, "redis_port": free_port()})
    redis = connect(down)
    try:
        with pytest.raises(LogUnavailable) as single:
            await redis.get("x")
        with pytest.raises(LogUnavailable) as piped:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.set("x", 1)
                await pipe.execute()
    finally:
        await redis.aclose()

    for raised in (single.value, piped.value):
        assert isinstance(raised.__cause__, RedisConnectionError)
