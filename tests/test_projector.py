"""The projector and replay against a real Redis: state is a fold of the log, exactly once."""

from __future__ import annotations

import asyncio
import random
import signal
from typing import Any

from cefmp4.common.completions import Publishing
from cefmp4.common.eventlog import EventLog, entry_id_tuple
from cefmp4.common.events import (
    FIELD,
    AnyEvent,
    FileWritten,
    PartUploaded,
    StreamAborted,
    StreamCompleted,
    StreamFailed,
    StreamFinalizing,
    UploadStarted,
    encode,
)
from cefmp4.common.keys import PROJECTOR
from cefmp4.common.statestore import StateReader
from cefmp4.consumer.projector import Projector
from cefmp4.consumer.replay import replay, replay_fenced
from tests.conftest import Processes, eventually


def history(streams: int, seed: int = 7) -> list[AnyEvent]:
    """Interleaved events of many streams: completed, failed, aborted and still in flight."""
    rng = random.Random(seed)
    per_stream: list[list[AnyEvent]] = []
    for n in range(streams):
        sid, path = f"s{n:04d}", f"cam{n % 7}/rec{n}.mp4"
        events: list[AnyEvent] = [
            UploadStarted(
                stream_id=sid, path=path, s3_key=path, upload_id=f"u{n}", inode=n, device=1, size=0
            )
        ]
        parts = rng.randint(1, 30)
        for p in range(1, parts + 1):
            events.append(FileWritten(path=path, size=p * 100, mtime_ns=p, inode=n, device=1))
            events.append(
                PartUploaded(
                    stream_id=sid,
                    path=path,
                    part_number=p,
                    offset=(p - 1) * 100,
                    length=100,
                    crc32=rng.getrandbits(32),
                    etag=f"e{p}",
                    file_size=p * 100,
                )
            )
        fate = n % 5
        if fate in (0, 3):
            events.append(StreamFinalizing(stream_id=sid, path=path, size=parts * 100))
        if fate == 0:
            events.append(
                StreamCompleted(stream_id=sid, path=path, size=parts * 100, etag="x", mtime_ns=9)
            )
        elif fate == 1:
            events.append(StreamFailed(stream_id=sid, path=path, reason="file deleted"))
        elif fate == 2:
            events.append(StreamAborted(stream_id=sid, path=path, reason="file truncated"))
        per_stream.append(events)
    merged: list[AnyEvent] = []
    while per_stream:
        events = rng.choice(per_stream)
        merged.append(events.pop(0))
        if not events:
            per_stream.remove(events)
    return merged


async def append_all(log: EventLog, events: list[AnyEvent]) -> bytes:
    last = b"0-0"
    for start in range(0, len(events), 500):
        async with log.redis.pipeline(transaction=False) as pipe:
            for event in events[start : start + 500]:
                pipe.xadd(log.keys.events, {FIELD: encode(event)})
            ids = await pipe.execute()
        last = ids[-1]
    return last


async def state_dump(log: EventLog) -> dict[str, Any]:
    """Every projected key and its content (the retention snapshot aside)."""
    dump: dict[str, Any] = {}
    async for key in log.redis.scan_iter(match=f"{log.keys.prefix}*", count=1000):
        name = key.decode()
        if name == log.keys.snapshot:
            continue
        kind = await log.redis.type(key)
        if kind == b"hash":
            dump[name] = await log.redis.hgetall(key)
        elif kind == b"zset":
            dump[name] = await log.redis.zrange(key, 0, -1, withscores=True)
    return dump


async def project_until(
    log: EventLog, last_id: bytes, publishing: Publishing | None = None
) -> None:
    stop = asyncio.Event()
    projector = Projector(log, "test-projector", publishing=publishing)
    task = asyncio.create_task(projector.run(stop))

    async def caught_up() -> bool:
        # At or past it: a consumer that ran meanwhile may have recorded steps of its own.
        position = await StateReader(log.redis, log.keys).position()
        return entry_id_tuple(position) >= entry_id_tuple(last_id)

    try:
        await eventually(caught_up, 60, "projector caught up")
    finally:
        stop.set()
        await task


async def test_replay_rebuilds_state_identical_to_the_projection(log: EventLog) -> None:
    await log.ensure_groups()
    last_id = await append_all(log, history(300))
    await project_until(log, last_id)
    projected = await state_dump(log)
    statuses = {
        v[b"status"] for k, v in projected.items() if isinstance(v, dict) and b"status" in v
    }
    assert statuses == {b"active", b"finalizing", b"completed", b"failed", b"aborted"}

    keys = [k async for k in log.redis.scan_iter(match=log.keys.stream("*"))]
    await log.redis.delete(*keys, log.keys.streams, log.keys.paths, log.keys.projector_position)
    count = await replay(log)

    assert count == await log.redis.xlen(log.keys.events)
    assert await state_dump(log) == projected
    assert await StateReader(log.redis, log.keys).position() == last_id


async def test_projector_killed_at_random_points_neither_skips_nor_repeats(
    log: EventLog, processes: Processes
) -> None:
    await log.ensure_groups()
    events = history(150, seed=3)
    rng = random.Random(5)
    last_id = b"0-0"
    for start in range(0, len(events), 300):
        consumer = processes.start("consumer")
        last_id = await append_all(log, events[start : start + 300])
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        consumer.send_signal(signal.SIGKILL)
        consumer.wait()
        await log.redis.delete(log.keys.lease(PROJECTOR))  # no waiting for the dead one's lease
    await project_until(log, last_id)
    projected = await state_dump(log)

    await replay(log)

    assert await state_dump(log) == projected


# Atomically: every indexed stream has its hash, its parts, and no event past the position.
_CHECK_CONSISTENT = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local pms, pseq = parse(redis.call('GET', KEYS[1]) or '0-0')
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local key = ARGV[1] .. id
  local fields = redis.call('HMGET', key, 'last_event_id', 'part_count')
  if not fields[1] then
    return 'stream ' .. id .. ' is indexed but has no hash'
  end
  if redis.call('HLEN', key .. ':parts') ~= tonumber(fields[2]) then
    return 'stream ' .. id .. ' has parts missing'
  end
  local ms, seq = parse(fields[1])
  if ms > pms or (ms == pms and seq > pseq) then
    return 'stream ' .. id .. ' has an event past the position'
  end
end
return ''
"""


async def test_replay_while_the_pipeline_runs_leaves_the_state_the_projector_makes(
    log: EventLog, processes: Processes
) -> None:
    await log.ensure_groups()
    # Uploads' own events only: the uploaders ack them and leave S3 alone.
    events: list[AnyEvent] = [e for e in history(200, seed=11) if not isinstance(e, FileWritten)]
    check = log.redis.register_script(_CHECK_CONSISTENT)
    processes.start("consumer")

    async def projector_running() -> bool:
        return await log.redis.exists(log.keys.lease(PROJECTOR)) == 1

    await eventually(projector_running, 30, "the consumer's projector to start")
    last_id = b"0-0"
    replays_done = asyncio.Event()
    appended = asyncio.Event()
    seen: list[str] = []

    async def append_in_bursts() -> None:
        nonlocal last_id
        for start in range(0, len(events), 100):
            last_id = await append_all(log, events[start : start + 100])
            if not replays_done.is_set():
                await asyncio.sleep(0.02)
        appended.set()

    async def replay_three_times() -> None:
        for n in range(3):
            await replay_fenced(log, f"test-replay-{n}")
            await asyncio.sleep(0.1)
        replays_done.set()

    async def read_while_it_runs() -> None:
        while not appended.is_set():
            problem = await check(
                keys=[log.keys.projector_position, log.keys.streams], args=[log.keys.stream("")]
            )
            seen.append(problem.decode())

    await asyncio.gather(append_in_bursts(), replay_three_times(), read_while_it_runs())

    async def projector_caught_up() -> bool:
        return await StateReader(log.redis, log.keys).position() == last_id

    await eventually(projector_caught_up, 60, "the consumer's projector to take over again")
    processes.stop_all()
    after_replays = await state_dump(log)
    keys = [k async for k in log.redis.scan_iter(match=log.keys.stream("*"))]
    await log.redis.delete(*keys, log.keys.streams, log.keys.paths, log.keys.projector_position)
    await log.redis.delete(log.keys.snapshot)
    await project_until(log, last_id)

    assert replays_done.is_set() and seen
    assert {problem for problem in seen if problem} == set()
    assert await state_dump(log) == after_replays
    assert len(after_replays) > 200


async def test_a_projector_whose_writes_a_failover_lost_starts_again_from_what_redis_kept(
    log: EventLog,
) -> None:
    await log.ensure_groups()
    events = history(60, seed=13)
    first = await append_all(log, events[:300])
    stop = asyncio.Event()
    running = asyncio.create_task(Projector(log, "test-projector").run(stop))
    reader = StateReader(log.redis, log.keys)

    async def caught_up_with_first() -> bool:
        return await reader.position() == first

    await eventually(caught_up_with_first, 60, "projector caught up")
    # What a replica promoted before the projector's writes reached it holds: the log, not
    # the state folded from it.
    lost = [k async for k in log.redis.scan_iter(match=log.keys.stream("*"))]
    await log.redis.delete(*lost, log.keys.streams, log.keys.paths, log.keys.projector_position)
    async for key in log.redis.scan_iter(match=log.keys.status_index("*")):
        await log.redis.delete(key)
    last = await append_all(log, events[300:])

    try:
        await eventually(lambda: _done(running), 30, "the projector to stop on the moved state")
    finally:
        stop.set()
        await running
    await project_until(log, last)  # as the lease holder starts it again
    projected = await state_dump(log)
    await replay(log)

    assert await state_dump(log) == projected


async def _done(task: asyncio.Task[None]) -> bool:
    return task.done()
