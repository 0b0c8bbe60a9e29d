"""Retention: snapshot, trim, and a replay from the snapshot gives the same state."""

from __future__ import annotations

from typing import Any

import pytest

from common.config import Settings
from common.errors import CefError
from common.events import AnyEvent, FileWritten
from common.keys import PROJECTOR, STALE_CHECKER, UPLOADERS
from common.log import EventLog
from consumer.projector import load_position, replay
from consumer.retention import (
    Retention,
    SnapshotError,
    decode_snapshot,
    load_snapshot,
    take_snapshot,
    trim,
)
from tests.conftest import Processes, eventually
from tests.test_projector import append_all, history, project_until, state_dump


async def delete_state(log: EventLog) -> None:
    keys = [k async for k in log.redis.scan_iter(match=log.keys.stream("*"))]
    await log.redis.delete(*keys, log.keys.streams, log.keys.paths, log.keys.projector_position)


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
    assert await load_position(log.redis, log.keys) == last_id


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
    assert await load_snapshot(log.redis, log.keys) is None


def test_a_snapshot_of_an_unknown_format_is_refused() -> None:
    with pytest.raises(SnapshotError, match="format 9"):
        decode_snapshot({b"format": b"9", b"position": b"1-0", b"state": b""})
    with pytest.raises(SnapshotError, match="cannot be decoded"):
        decode_snapshot({b"format": b"1", b"position": b"1-0", b"state": b"junk"})


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
        snapshot = await load_snapshot(log.redis, log.keys)
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
