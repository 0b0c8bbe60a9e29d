"""Pruning: finished streams leave the state after FINISHED_STREAM_RETENTION_SECONDS, by an
event on the log, so replay gives the same state; open work and owed retries stay."""

from __future__ import annotations

from pathlib import Path

from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import (
    AnyEvent,
    FileWritten,
    PartUploaded,
    StreamFailed,
    UploadStarted,
    now_ms,
)
from cefmp4.common.s3 import Storage
from cefmp4.common.statestore import StateReader
from cefmp4.consumer.pruner import Pruner
from cefmp4.consumer.replay import replay
from cefmp4.consumer.retention import take_snapshot
from tests.conftest import Processes, eventually
from tests.test_pipeline import stream_of, wait_completed
from tests.test_projector import append_all, history, project_until, state_dump
from tests.test_retention import delete_state

STREAMS = 100  # fates by n % 5: completed, failed, aborted, finalizing, active


def owed_a_retry() -> list[AnyEvent]:
    path = "cam9/owed.mp4"
    return [
        UploadStarted(
            stream_id="owed", path=path, s3_key=path, upload_id="u", inode=1, device=1, size=0
        ),
        StreamFailed(
            stream_id="owed", path=path, reason="S3 refused", retry_at_ms=now_ms() + 3_600_000
        ),
    ]


async def test_finished_streams_are_pruned_and_replay_gives_the_same_state(
    log: EventLog,
) -> None:
    await log.ensure_groups()
    events = history(STREAMS, seed=5)
    last_id = await append_all(log, [*events, *owed_a_retry()])
    await project_until(log, last_id)
    reader = StateReader(log.redis, log.keys)
    assert await take_snapshot(log.redis, log.keys, last_id) == STREAMS + 1
    finished = [f"s{n:04d}" for n in range(STREAMS) if n % 5 < 3]

    pruner = Pruner(log, retention_s=0.001)
    assert sorted(await pruner.due()) == finished
    await pruner.tick(last_id)
    # Late steps of a pruned stream and its file change nothing.
    late: list[AnyEvent] = [
        PartUploaded(
            stream_id="s0000",
            path="cam0/rec0.mp4",
            part_number=99,
            offset=0,
            length=1,
            crc32=1,
            etag="e",
            file_size=1,
        ),
        FileWritten(path="cam0/rec0.mp4", size=5, mtime_ns=5, inode=0, device=1),
    ]
    last_id = await append_all(log, late)
    await project_until(log, last_id)

    assert await reader.count_by_status() == {
        "active": 20,
        "finalizing": 20,
        "completed": 0,
        "failed": 1,
        "aborted": 0,
    }
    assert await reader.pruned_count() == len(finished)
    assert await reader.stream_count() == STREAMS + 1 - len(finished)
    for stream_id in finished:
        assert await reader.stream(stream_id) is None
        assert not await log.redis.exists(log.keys.parts(stream_id))
    assert await reader.stream_id_of("cam0/rec0.mp4") is None
    assert await reader.stream_id_of("cam9/owed.mp4") == "owed"
    assert await pruner.due() == []
    projected = await state_dump(log)

    # From the snapshot taken before the prune, and the log after it.
    await delete_state(log)
    await replay(log)
    assert await state_dump(log) == projected

    # From the snapshot replay took after it, and no log.
    await delete_state(log)
    await replay(log)
    assert await state_dump(log) == projected


async def test_a_zero_window_keeps_every_finished_stream(log: EventLog) -> None:
    await log.ensure_groups()
    last_id = await append_all(log, history(10, seed=2))
    await project_until(log, last_id)

    pruner = Pruner(log, retention_s=0)
    await pruner.tick(last_id)

    assert await log.redis.xlen(log.keys.events) == len(history(10, seed=2))
    assert await StateReader(log.redis, log.keys).stream_count() == 10


async def test_the_consumer_prunes_a_finished_recording_after_the_window(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    processes.start("producer")
    processes.start("consumer", FINISHED_STREAM_RETENTION_SECONDS="1")
    (watch_dir / "cam1").mkdir()
    (watch_dir / "cam1" / "a.mp4").write_bytes(b"x" * 1000)
    state = await wait_completed(log, storage, watch_dir, "cam1/a.mp4")
    reader = StateReader(log.redis, log.keys)

    async def pruned() -> bool:
        return await reader.pruned_count() == 1

    await eventually(pruned, 30, "the finished stream pruned")
    assert await stream_of(log, "cam1/a.mp4") is None
    assert await reader.stream(state.stream_id) is None
    assert await storage.read_object(state.s3_key) == b"x" * 1000
    # Nothing of the recording stays for good: what is kept per path or stream expires.
    token = log.keys.path_lock("cam1/a.mp4").rsplit(":", 1)[1]
    lasting = [
        key.decode()
        async for key in log.redis.scan_iter(match=f"{log.keys.prefix}*")
        if await log.redis.pttl(key) == -1
    ]
    assert [key for key in lasting if state.stream_id in key or token in key] == []
    for key in lasting:
        if await log.redis.type(key) == b"hash":
            fields = await log.redis.hkeys(key)
            assert state.stream_id.encode() not in fields, key
            assert b"cam1/a.mp4" not in fields, key
        elif await log.redis.type(key) == b"zset":
            assert await log.redis.zscore(key, state.stream_id) is None, key
