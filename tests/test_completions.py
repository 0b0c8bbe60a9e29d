"""The public completions stream: one entry per completed recording, whatever crashes."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

from cefmp4.common.completions import VERSION, Completion, Publishing, completion_of, parse
from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import AnyEvent, FileWritten, StreamCompleted, decode
from cefmp4.common.keys import PROJECTOR
from cefmp4.common.s3 import Storage
from cefmp4.common.streamstate import PartRecord, StreamState
from cefmp4.consumer.fold import Fold
from cefmp4.consumer.replay import replay_fenced
from tests.conftest import Processes, eventually
from tests.test_pipeline import MIB, wait_completed
from tests.test_projection import PATH, SID, part, started
from tests.test_projector import append_all, history, project_until


async def completions(log: EventLog) -> list[Completion]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await log.redis.xrange(log.keys.completed)  # type: ignore[assignment]
    return [parse(fields) for _, fields in entries]


def test_a_stream_completed_twice_is_published_once() -> None:
    fold = Fold(keep_completed=True)
    completed = StreamCompleted(
        at_ms=9_000, stream_id=SID, path=PATH, size=5 * MIB, etag="e", mtime_ns=8_000_000_000
    )
    events: list[AnyEvent] = [started(at_ms=1_000), part(1, 2_000), completed, completed]
    for n, event in enumerate(events):
        fold.add(f"{n}-0".encode(), event)

    done = fold.take_changes()

    assert [s.stream_id for s in done.completed] == [SID]
    assert fold.take_changes().completed == ()


def test_a_completion_carries_the_object_checksum_and_the_writing_time() -> None:
    state = StreamState(
        stream_id=SID,
        path=PATH,
        s3_key="rec/" + PATH,
        upload_id="u",
        status="completed",
        size_bytes=10,
        inode=1,
        device=1,
        created_at_ms=1_000,
        updated_at_ms=9_000,
        completed_at_ms=9_000,
        mtime_ns=7_500_000_000,
        etag='"abc-2"',
        last_event_id="9000-1",
        # Part 3 was sent before the file shrank: it is not in the object.
        parts={
            1: PartRecord(0, 5, 0x01020304, "a"),
            2: PartRecord(5, 5, 0xA0B0C0D0, "b"),
            3: PartRecord(10, 5, 1, "c"),
        },
    )

    completion = completion_of(state, "bucket")

    assert completion == Completion(
        v=VERSION,
        event_id="9000-1",
        stream_id=SID,
        bucket="bucket",
        key="rec/" + PATH,
        path=PATH,
        size=10,
        etag='"abc-2"',
        crc32="iB/4Pw==-2",
        duration_s=6.5,
        started_at="1970-01-01T00:00:01.000Z",
        completed_at="1970-01-01T00:00:09.000Z",
    )
    assert parse({k.encode(): v.encode() for k, v in completion.fields().items()}) == completion


async def test_every_completion_is_published_once_across_projector_kills(
    log: EventLog, processes: Processes
) -> None:
    await log.ensure_groups()
    # Uploads' own events only: the uploaders ack them and leave S3 alone.
    events: list[AnyEvent] = [e for e in history(150, seed=3) if not isinstance(e, FileWritten)]
    rng = random.Random(5)
    last_id = b"0-0"

    async def projecting() -> bool:
        return await log.redis.exists(log.keys.lease(PROJECTOR)) == 1

    for start in range(0, len(events), 300):
        consumer = processes.start("consumer")
        await eventually(projecting, 30, "the consumer's projector to start")
        last_id = await append_all(log, events[start : start + 300])
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        consumer.send_signal(signal.SIGKILL)
        consumer.wait()
        await log.redis.delete(log.keys.lease(PROJECTOR))  # no waiting for the dead one's lease
    await project_until(log, last_id, Publishing("bucket", 1000))
    # What the whole log says was completed, in its order.
    fold = Fold(keep_completed=True)
    logged: list[tuple[bytes, dict[bytes, bytes]]] = await log.redis.xrange(log.keys.events)  # type: ignore[assignment]
    for entry_id, fields in logged:
        fold.add(entry_id, decode(fields))
    expected = [state.stream_id for state in fold.take_changes().completed]

    assert len(expected) == 30
    assert [c.stream_id for c in await completions(log)] == expected


async def test_a_recording_completed_is_in_the_stream_as_s3_has_it(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    group = "downstream"
    await log.redis.xgroup_create(log.keys.completed, group, id="0", mkstream=True)
    rel = "cam/rec.mp4"
    (watch_dir / "cam").mkdir()
    (watch_dir / rel).write_bytes(random.randbytes(12 * MIB + 345))

    state = await wait_completed(log, storage, watch_dir, rel)
    read: list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] = await log.redis.xreadgroup(  # type: ignore[assignment]
        group, "reader", {log.keys.completed: ">"}, count=10, block=10_000
    )
    facts = await storage.object_facts(state.s3_key)

    [(_, entries)] = read
    [(_, fields)] = entries
    completion = parse(fields)
    assert facts is not None
    assert completion.v == 1
    assert (completion.stream_id, completion.path, completion.key) == (
        state.stream_id,
        rel,
        state.s3_key,
    )
    assert completion.bucket == storage.bucket
    assert (completion.size, completion.etag) == (facts.size, facts.etag)
    assert completion.crc32 == facts.crc32 and completion.crc32.endswith("-3")
    assert 0 <= completion.duration_s < 60


async def test_a_replay_publishes_what_the_projector_had_not_and_nothing_twice(
    log: EventLog,
) -> None:
    await log.ensure_groups()
    events: list[AnyEvent] = list(history(100, seed=9))
    half = len(events) // 2
    publishing = Publishing("bucket", 1000)
    # The projector applied the first half; the replay takes over with the rest unapplied.
    await project_until(log, await append_all(log, events[:half]), publishing)
    before = [c.stream_id for c in await completions(log)]
    await append_all(log, events[half:])

    await replay_fenced(log, "test-replay", publishing)
    await replay_fenced(log, "test-replay-again", publishing)

    expected = [e.stream_id for e in events if isinstance(e, StreamCompleted)]
    published = await completions(log)
    assert 0 < len(before) < len(expected)
    assert [c.stream_id for c in published] == expected
    ids: list[tuple[bytes, dict[bytes, bytes]]] = await log.redis.xrange(log.keys.events)  # type: ignore[assignment]
    logged = [(entry_id.decode(), decode(fields)) for entry_id, fields in ids]
    completed_at = {e.stream_id: i for i, e in logged if isinstance(e, StreamCompleted)}
    assert all(c.event_id == completed_at[c.stream_id] for c in published)
