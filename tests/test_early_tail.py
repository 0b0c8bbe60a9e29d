"""A growing file gone quiet has its tail sent before the idle timer ends the recording, so
that many recordings stopping at once do not all send their tails after it.

Closes are off and the idle timer is at 8 s (so the tail goes after 2 s of quiet): only
the early look can have sent the tail before FileIdle. Real processes, Redis and S3.
"""

from __future__ import annotations

import os
from pathlib import Path

from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import (
    FileIdle,
    PartUploaded,
    StreamAborted,
    StreamCompleted,
    StreamFailed,
)
from cefmp4.common.s3 import Storage
from tests.conftest import Processes, eventually
from tests.test_pipeline import (
    PART,
    assert_nothing_open,
    logged_events,
    stream_of,
    wait_completed,
)

MIB = 1024 * 1024


async def start(processes: Processes, log: EventLog) -> None:
    for role in ("producer", "consumer"):
        processes.start(
            role, WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE="8", WATCH_FINALIZE_ON_CLOSE="false"
        )
    await uploader_reading(log)


async def uploader_reading(log: EventLog) -> None:
    """Wait until an uploader reads the log: a file written from now on is seen at once, not
    found already quiet by a consumer still starting."""

    async def reading() -> bool:  # it reports itself as it starts serving the log
        return bool(await log.redis.hlen(log.keys.consumer_reports))

    await eventually(reading, 30, "an uploader serving the log")


async def part_uploads(log: EventLog, rel: str) -> list[tuple[int, int]]:
    """(part number, length) of every part recorded for `rel`, in the log's order."""
    return [
        (e.part_number, e.length)
        for e in await logged_events(log)
        if isinstance(e, PartUploaded) and e.path == rel
    ]


async def test_a_quiet_files_tail_is_sent_before_the_idle_timer(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    await start(processes, log)
    (watch_dir / "cam.mp4").write_bytes(os.urandom(PART + 3 * MIB))

    await wait_completed(log, storage, watch_dir, "cam.mp4")
    events = await logged_events(log)
    idle_at = next(i for i, e in enumerate(events) if isinstance(e, FileIdle))
    tails = [
        i
        for i, e in enumerate(events)
        if isinstance(e, PartUploaded) and (e.part_number, e.length) == (2, 3 * MIB)
    ]
    assert tails and tails[0] < idle_at, "the tail waited for the idle timer"
    assert sorted(await part_uploads(log, "cam.mp4")) == [(1, PART), (2, 3 * MIB)]  # once each
    await assert_nothing_open(storage)


async def test_a_file_written_again_after_its_early_tail_ends_equal_to_the_file(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    await start(processes, log)
    path = watch_dir / "cam.mp4"
    with path.open("wb") as recorder:
        recorder.write(os.urandom(PART + 3 * MIB))
        recorder.flush()

        async def tail_sent() -> bool:
            return (2, 3 * MIB) in await part_uploads(log, "cam.mp4")

        await eventually(tail_sent, 6, "the early tail, before the 8 s idle timer")
        recorder.write(os.urandom(4 * MIB))  # the recorder had only paused

    await wait_completed(log, storage, watch_dir, "cam.mp4")  # compares the bytes
    sent = await part_uploads(log, "cam.mp4")
    assert (2, PART) in sent, "part 2 was not sent again whole"
    assert (3, 2 * MIB) in sent
    completions = [e for e in await logged_events(log) if isinstance(e, StreamCompleted)]
    assert len(completions) == 1, "completed before it was written again"
    await assert_nothing_open(storage)


async def test_an_early_look_at_recordings_moved_away_leaves_their_streams_open(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    # The look comes 5 s after the writes (a quarter of the consumer's 20 s); the producer
    # ends the recordings 15 s after them, by which time the folder is back.
    processes.start(
        "producer", WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE="15", WATCH_FINALIZE_ON_CLOSE="false"
    )
    processes.start("consumer", WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE="20")
    await uploader_reading(log)
    (watch_dir / "cams").mkdir()
    names = [f"cams/cam{n}.mp4" for n in range(4)]
    for name in names:
        (watch_dir / name).write_bytes(os.urandom(PART + MIB))

    async def whole_parts_sent() -> bool:
        states = [await stream_of(log, name) for name in names]
        return all(s is not None and s.sent_end == PART for s in states)

    await eventually(whole_parts_sent, 20, "the whole parts sent")
    streams = {name: await stream_of(log, name) for name in names}
    (watch_dir / "cams").rename(tmp_path / "cams")

    async def ended() -> list[StreamFailed | StreamAborted]:
        events = await logged_events(log)
        return [e for e in events if isinstance(e, StreamFailed | StreamAborted)]

    async def looked_while_away() -> bool:
        return "left to the file's events" in processes.output() or bool(await ended())

    await eventually(looked_while_away, 20, "the early look finding them away")
    assert await ended() == []
    (tmp_path / "cams").rename(watch_dir / "cams")

    for name in names:
        state = await wait_completed(log, storage, watch_dir, name)
        assert state.stream_id == streams[name].stream_id  # type: ignore[union-attr]
    assert await ended() == []
    await assert_nothing_open(storage)
