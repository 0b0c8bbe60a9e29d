"""Retention: snapshot, trim, and a replay from the snapshot gives the same state."""

from __future__ import annotations

import zlib
from typing import Any

import msgspec
import pytest

from cefmp4.common.config import Settings
from cefmp4.common.errors import CefError, SnapshotError
from cefmp4.common.eventlog import EventLog, entry_id_tuple
from cefmp4.common.events import AnyEvent, FileWritten
from cefmp4.common.keys import PROJECTOR, STALE_CHECKER, UPLOADERS
from cefmp4.common.statestore import StateReader
from cefmp4.consumer.replay import replay
from cefmp4.consumer.retention import RETRY_SOON_MS, Retention, next_due_ms, take_snapshot, trim
from tests.conftest import Processes, eventually
from tests.test_projector import append_all, history, project_until, state_dump


async def delete_state(log: EventLog) -> None:
    keys = [k async for k in log.redis.scan_iter(match=log.keys.stream("*"))]
    keys += [k async for k in log.redis.scan_iter(match=log.keys.status_index("*"))]
    await log.redis.delete(
        *keys, log.keys.streams, log.keys.retries, log.keys.paths, log.keys.projector_position
    )


async def first_id(log: EventLog) -> bytes:
    entries: Any = await log.redis.xrange(log.keys.events, count=1)
    return bytes(entries[0][0])


async def read_all(log: EventLog, group: str) -> list[bytes]:
    entries: Any = await log.redis.xreadgroup(group, "c1", {log.keys.events: ">"})
    return [entry_id for entry_id, _fields in entries[0][1]]


async def test_trim_keeps_what_groups_need_and_replay_from_the_snapshot_matches(
    log: EventLog, settings: Settings
) -> None:
    await log.ensure_groups()
    events = history(300, seed=13)
    half = len(events) // 2
    first_half_end = await append_all(log, events[:half])
    # The uploaders leave one entry pending (a pass that has not finished);
    # the stale checker has read everything.
    delivered = await read_all(log, UPLOADERS)
    still_pending = delivered[1000]
    await log.redis.xack(log.keys.events, UPLOADERS, *delivered[:1000], *delivered[1001:])
    await log.redis.xgroup_setid(log.keys.events, STALE_CHECKER, first_half_end)
    await project_until(log, first_half_end)
    retention = Retention(settings.model_copy(update={"log_retention_min_entries": 0}), log)

    trimmed = await retention.run(first_half_end)

    assert trimmed is not None
    assert trimmed.entries == 1000
    assert trimmed.min_id == still_pending.decode()
    assert await first_id(log) == still_pending
    pending: Any = await log.redis.xpending(log.keys.events, UPLOADERS)
    assert pending["pending"] == 1 and pending["min"] == still_pending
    claimed: Any = await log.redis.xautoclaim(log.keys.events, UPLOADERS, "c2", 0, count=10)
    assert [entry_id for entry_id, _ in claimed[1]] == [still_pending]

    # Once acknowledged, everything up to the snapshot goes.
    await log.redis.xack(log.keys.events, UPLOADERS, still_pending)
    again = await trim(log.redis, log.keys, min_entries=0)
    assert again.min_id == first_half_end.decode()
    assert await first_id(log) == first_half_end
    assert await log.redis.xlen(log.keys.events) == 1

    # The log goes on; a replay starts at the snapshot and folds the rest.
    last_id = await append_all(log, events[half:])
    await project_until(log, last_id)
    projected = await state_dump(log)
    await delete_state(log)

    count = await replay(log)

    assert count == len(events) - half  # only the entries after the snapshot
    assert await state_dump(log) == projected
    assert await StateReader(log.redis, log.keys).position() == last_id


async def test_trim_keeps_the_newest_entries_and_what_a_lagging_group_has_not_read(
    log: EventLog,
) -> None:
    await log.ensure_groups()
    events = history(60, seed=17)
    last_id = await append_all(log, events)
    entries: Any = await log.redis.xrange(log.keys.events)
    ids: list[bytes] = [entry_id for entry_id, _ in entries]
    for group in (UPLOADERS, STALE_CHECKER):
        await log.redis.xgroup_setid(log.keys.events, group, last_id)
    await project_until(log, last_id)
    assert await take_snapshot(log.redis, log.keys, last_id) is not None

    kept_newest = await trim(log.redis, log.keys, min_entries=len(ids) - 100)
    assert kept_newest.entries == 100
    assert await first_id(log) == ids[100]

    await log.redis.xgroup_setid(log.keys.events, STALE_CHECKER, ids[300])
    lagging = await trim(log.redis, log.keys, min_entries=0)
    assert lagging.entries == 200
    assert await first_id(log) == ids[300]


async def test_no_trim_without_a_snapshot(log: EventLog) -> None:
    await log.ensure_groups()
    last_id = await append_all(log, history(10))
    for group in (UPLOADERS, STALE_CHECKER, PROJECTOR):
        await log.redis.xgroup_setid(log.keys.events, group, last_id)
    await log.redis.set(log.keys.projector_position, last_id)

    result = await trim(log.redis, log.keys, min_entries=0)

    assert result.entries == 0
    assert await log.redis.xlen(log.keys.events) == len(history(10))


async def test_snapshot_is_dropped_when_the_projection_has_moved(log: EventLog) -> None:
    await log.ensure_groups()
    last_id = await append_all(log, history(5))
    await project_until(log, last_id)

    assert await take_snapshot(log.redis, log.keys, b"1-0") is None
    assert await StateReader(log.redis, log.keys).snapshot() is None


async def test_a_snapshot_of_an_unknown_format_or_broken_is_refused(log: EventLog) -> None:
    reader = StateReader(log.redis, log.keys)
    await log.redis.hset(log.keys.snapshot, mapping={"format": 9, "position": "1-0"})
    with pytest.raises(SnapshotError, match="format 9"):
        await reader.snapshot()
    await log.redis.hset(log.keys.snapshot, mapping={"format": 1, "state": "junk"})
    with pytest.raises(SnapshotError, match="cannot be decoded"):
        await reader.snapshot()
    await log.redis.hset(
        log.keys.snapshot,
        mapping={"format": 2, "generation": "g1", "created_at_ms": 1, "stream_chunks": 1},
    )
    await log.redis.hset(log.keys.snapshot, "path_chunks", 0)
    with pytest.raises(SnapshotError, match="piece s0 of g1 is missing"):
        await reader.snapshot()
    await log.redis.set(log.keys.snapshot_chunk("g1", "s0"), b"junk")
    with pytest.raises(SnapshotError, match="cannot be decoded"):
        await reader.snapshot()


async def test_a_snapshot_written_whole_by_an_earlier_version_is_still_read(
    log: EventLog,
) -> None:
    await log.ensure_groups()
    last_id = await append_all(log, history(20, seed=3))
    await project_until(log, last_id)
    before = await state_dump(log)
    reader = StateReader(log.redis, log.keys)
    streams = [state async for states in reader.slices() for state in states]
    paths = {path: stream_id async for chunk in reader.paths() for path, stream_id in chunk.items()}
    # Format 1: the whole state in one field, as [streams, paths], msgpack and zlib.
    body = zlib.compress(msgspec.msgpack.encode([streams, paths]))
    await log.redis.hset(
        log.keys.snapshot,
        mapping={
            "format": 1,
            "position": last_id,
            "created_at_ms": 1,
            "streams": len(streams),
            "state": body,
        },
    )
    await delete_state(log)

    await replay(log)

    assert await state_dump(log) == before


async def test_the_consumer_snapshots_and_trims_and_replay_still_matches(
    log: EventLog, processes: Processes
) -> None:
    await log.ensure_groups()
    events: list[AnyEvent] = [e for e in history(150, seed=19) if not isinstance(e, FileWritten)]
    processes.start(
        "consumer",
        LOG_RETENTION_SNAPSHOT_INTERVAL_SECONDS="0.5",
        LOG_RETENTION_MIN_ENTRIES="0",
    )
    last_id = await append_all(log, events)

    async def trimmed_to_the_end() -> bool:
        snapshot = await StateReader(log.redis, log.keys).snapshot()
        return (
            snapshot is not None
            and snapshot.position == last_id
            and await log.redis.xlen(log.keys.events) == 1
        )

    await eventually(trimmed_to_the_end, 30, "a snapshot at the last entry and the log trimmed")
    processes.stop_all()
    projected = await state_dump(log)
    await delete_state(log)

    assert await replay(log) == 0  # all of it from the snapshot
    assert await state_dump(log) == projected


async def test_replay_refuses_a_trimmed_log_without_its_snapshot(log: EventLog) -> None:
    await log.ensure_groups()
    last_id = await append_all(log, history(10))
    for group in (UPLOADERS, STALE_CHECKER):
        await log.redis.xgroup_setid(log.keys.events, group, last_id)
    await project_until(log, last_id)
    assert await take_snapshot(log.redis, log.keys, last_id) is not None
    assert (await trim(log.redis, log.keys, min_entries=0)).entries > 0
    projected = await state_dump(log)
    await log.redis.delete(log.keys.snapshot)

    with pytest.raises(CefError, match="trimmed"):
        await replay(log)

    assert await state_dump(log) == projected


async def test_an_entry_a_dead_stale_checker_left_pending_does_not_hold_trimming_back(
    log: EventLog, processes: Processes
) -> None:
    await log.ensure_groups()
    await append_all(log, history(20, seed=23)[:40])
    # A stale checker that read an entry and was SIGKILLed before acknowledging it.
    await log.redis.xreadgroup(STALE_CHECKER, "gone", {log.keys.events: ">"}, count=1)
    left_pending = await first_id(log)
    await append_all(log, history(20, seed=23)[40:])
    processes.start(
        "consumer", LOG_RETENTION_SNAPSHOT_INTERVAL_SECONDS="0.5", LOG_RETENTION_MIN_ENTRIES="0"
    )

    async def trimmed_past_it() -> bool:
        return entry_id_tuple(await first_id(log)) > entry_id_tuple(left_pending)

    await eventually(trimmed_past_it, 30, "the log trimmed past the entry left pending")
    report = await log.redis.hgetall(log.keys.retention_report)
    assert b"stale-checker pending" not in report[b"held_by"]


def test_snapshots_take_at_most_a_tenth_of_the_projectors_time() -> None:
    # Quick snapshots follow the interval; a slow one (a large state) spaces them out.
    assert next_due_ms(0, 200, 300_000, done=True) == 200 + 300_000
    assert next_due_ms(0, 60_000, 300_000, done=True) == 60_000 + 540_000
    assert next_due_ms(0, 60_000, 300_000, done=False) == 60_000 + RETRY_SOON_MS
