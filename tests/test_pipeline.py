"""End to end: real producer and consumer processes, a real directory, Redis and S3."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import AnyEvent, FileIdle, PartUploaded, decode
from cefmp4.common.s3 import Storage
from cefmp4.common.statestore import StateReader
from cefmp4.common.streamstate import StreamState
from tests.conftest import Processes, eventually

MIB = 1024 * 1024
PART = 5 * MIB


async def stream_of(log: EventLog, rel: str) -> StreamState | None:
    return await StateReader(log.redis, log.keys).latest(rel)


async def all_streams(log: EventLog) -> list[StreamState]:
    return [s async for states in StateReader(log.redis, log.keys).slices() for s in states]


async def wait_completed(
    log: EventLog, storage: Storage, watch_dir: Path, rel: str, timeout_s: float = 60
) -> StreamState:
    """Wait until `rel`'s stream is completed as the file is now, then compare the bytes."""
    path = watch_dir / rel

    async def done() -> bool:
        state = await stream_of(log, rel)
        st = path.stat()
        return (
            state is not None
            and state.status == "completed"
            and (state.size_bytes, state.mtime_ns) == (st.st_size, st.st_mtime_ns)
        )

    await eventually(done, timeout_s, f"{rel} completed")
    state = await stream_of(log, rel)
    assert state is not None
    assert await storage.read_object(state.s3_key) == path.read_bytes()
    return state


async def parts_sent(log: EventLog, rel: str, count: int) -> None:
    async def enough() -> bool:
        state = await stream_of(log, rel)
        return state is not None and len(state.parts) >= count

    await eventually(enough, 30, f"{count} parts of {rel} sent")


async def logged_events(log: EventLog) -> list[AnyEvent]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await log.redis.xrange(log.keys.events)  # type: ignore[assignment]
    return [decode(fields) for _, fields in entries]


async def assert_nothing_open(storage: Storage) -> None:
    assert await storage.open_uploads() == []


async def append_slowly(path: Path, chunks: list[bytes], pause_s: float = 0.02) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        for chunk in chunks:
            f.write(chunk)
            f.flush()
            await asyncio.sleep(pause_s)


async def test_file_written_in_many_small_appends_becomes_an_identical_object(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    chunks = [os.urandom(64 * 1024 + i) for i in range(200)]  # ~12.5 MiB in 200 writes
    await append_slowly(watch_dir / "cam1.mp4", chunks, pause_s=0.005)

    state = await wait_completed(log, storage, watch_dir, "cam1.mp4")

    assert len(state.parts) == 3
    await assert_nothing_open(storage)


async def record(path: Path, stop: asyncio.Event, chunk: int = 256 * 1024) -> None:
    """Append like a recorder (about 5 MiB/s) until `stop` is set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        while not stop.is_set():
            f.write(os.urandom(chunk))
            f.flush()
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def recording(path: Path) -> AsyncIterator[None]:
    """A recorder appending to `path` for as long as the block runs."""
    stop = asyncio.Event()
    writer = asyncio.create_task(record(path, stop))
    try:
        yield
    finally:
        stop.set()
        await writer


async def test_parts_are_sent_while_the_file_grows(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    async with recording(watch_dir / "live.mp4"):
        await parts_sent(log, "live.mp4", 2)
        state = await stream_of(log, "live.mp4")
        assert state is not None and state.status == "active"

    await wait_completed(log, storage, watch_dir, "live.mp4")
    await assert_nothing_open(storage)


@pytest.mark.parametrize("size", [PART - 1, PART, PART + 1, 2 * PART + 1])
async def test_sizes_around_the_part_boundary_are_exact(
    size: int, pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    (watch_dir / "edge.mp4").write_bytes(os.urandom(size))

    state = await wait_completed(log, storage, watch_dir, "edge.mp4")

    assert len(state.parts) == -(-size // PART)
    await assert_nothing_open(storage)


async def test_empty_and_one_byte_files_become_objects_of_the_same_size(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    (watch_dir / "empty.mp4").write_bytes(b"")
    (watch_dir / "one.mp4").write_bytes(b"\x01")

    await wait_completed(log, storage, watch_dir, "empty.mp4")
    await wait_completed(log, storage, watch_dir, "one.mp4")
    await assert_nothing_open(storage)


async def test_header_rewritten_after_parts_were_sent_is_sent_again(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    """What ffmpeg's mov muxer does when it closes: patch the mdat size near offset 40."""
    path = watch_dir / "patched.mp4"
    async with recording(path):
        await parts_sent(log, "patched.mp4", 2)
    with path.open("r+b") as f:
        f.seek(40)
        f.write(b"\xde\xad\xbe\xef" * 4)

    await wait_completed(log, storage, watch_dir, "patched.mp4")

    entries: list[tuple[bytes, dict[bytes, bytes]]] = await log.redis.xrange(log.keys.events)  # type: ignore[assignment]
    sends_of_part_1 = [
        e
        for e in (decode(fields) for _, fields in entries)
        if isinstance(e, PartUploaded) and e.part_number == 1
    ]
    assert len(sends_of_part_1) == 2
    await assert_nothing_open(storage)


async def test_a_file_moved_in_whole_is_not_read_again_at_the_end(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    staged = tmp_path / "whole.mp4"
    staged.write_bytes(os.urandom(3 * PART + 4096))
    staged.rename(watch_dir / "whole.mp4")

    state = await wait_completed(log, storage, watch_dir, "whole.mp4")

    assert [p.ctime_ns != 0 for _, p in sorted(state.parts.items())] == [True] * 4

    async def completion_logged() -> bool:
        return "completed whole.mp4" in pipeline.output()

    # The uploader logs the completion after recording it.
    await eventually(completion_logged, 30, "the completion in the consumer's log")
    # The whole parts had settled, so at most the tail is read at the end (none when the
    # tail too went early, the file having been quiet long enough).
    found = re.search(
        r"whole\.mp4 \(15732736 bytes, 4 parts, (\d+) read at the end\)", pipeline.output()
    )
    assert found is not None and int(found[1]) <= 1


async def test_a_settled_part_rewritten_before_the_end_is_sent_again(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    # Idle after 3 s, so the rewrite below comes before the end (checked below); not
    # finished on close, or the move-in itself would end it.
    for role in ("producer", "consumer"):
        processes.start(
            role, WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE="3", WATCH_FINALIZE_ON_CLOSE="false"
        )
    staged = tmp_path / "rewritten.mp4"
    staged.write_bytes(os.urandom(3 * PART + 4096))
    staged.rename(watch_dir / "rewritten.mp4")

    async def part_1_settled() -> bool:
        state = await stream_of(log, "rewritten.mp4")
        return state is not None and 1 in state.parts and state.parts[1].ctime_ns != 0

    await eventually(part_1_settled, 30, "part 1 sent after the file settled")
    with (watch_dir / "rewritten.mp4").open("r+b") as f:
        f.seek(40)
        f.write(b"\xde\xad\xbe\xef" * 4)
    rewritten_ms = time.time_ns() // 1_000_000

    state = await wait_completed(log, storage, watch_dir, "rewritten.mp4")

    events = await logged_events(log)
    idle_ms = [e.at_ms for e in events if isinstance(e, FileIdle)]
    assert idle_ms and min(idle_ms) > rewritten_ms, "the file went idle before the rewrite"
    sends_of_part_1 = [
        e
        for e in events
        if isinstance(e, PartUploaded) and e.part_number == 1 and e.stream_id == state.stream_id
    ]
    assert len(sends_of_part_1) == 2  # read again at the end, as its ctime had moved
    await assert_nothing_open(storage)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
async def test_ffmpeg_faststart_recording_is_identical(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    out = watch_dir / "ffmpeg" / "rec.mp4"
    out.parent.mkdir()
    recorder = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
        "-f", "lavfi", "-i", "anoisesrc=a=0.5",
        "-t", "6", "-c:v", "mpeg4", "-q:v", "1", "-c:a", "aac",
        "-movflags", "+faststart", str(out),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, errors = await recorder.communicate()
    assert recorder.returncode == 0, errors.decode()
    assert out.stat().st_size > PART  # more than one part, so parts were sent while recording

    await wait_completed(log, storage, watch_dir, "ffmpeg/rec.mp4")
    await assert_nothing_open(storage)


async def test_nested_folders_and_unicode_names_keep_their_path_as_key(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    rel = "site a/2026-11-25/камера 1/ünï cödé 🎥.MP4"
    path = watch_dir / rel
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(PART + 123))

    state = await wait_completed(log, storage, watch_dir, rel)

    assert state.s3_key == rel
    await assert_nothing_open(storage)


async def test_other_files_and_symlinks_out_of_watch_dir_are_not_uploaded(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"not yours")
    (watch_dir / "notes.txt").write_text("not a recording")
    (watch_dir / "link.mp4").symlink_to(outside)
    (watch_dir / "linkdir").symlink_to(tmp_path)
    (watch_dir / "real.mp4").write_bytes(b"a recording")

    await wait_completed(log, storage, watch_dir, "real.mp4")

    paths = {s.path for s in await all_streams(log)}
    assert paths == {"real.mp4"}
    await assert_nothing_open(storage)


async def test_two_consumers_share_the_recordings(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    processes.start("producer")
    processes.start("consumer")
    processes.start("consumer")
    names = [f"multi/{i}.mp4" for i in range(6)]
    await asyncio.gather(
        *(append_slowly(watch_dir / n, [os.urandom(MIB) for _ in range(7)]) for n in names)
    )

    for name in names:
        await wait_completed(log, storage, watch_dir, name)
    assert len(await all_streams(log)) == len(names)
    await assert_nothing_open(storage)


async def test_stale_checker_finalizes_a_recording_whose_idle_event_never_came(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    # The producer never reports idle (nor the close) here; only the stale checker can
    # finish the stream.
    processes.start(
        "producer", WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE="3600", WATCH_FINALIZE_ON_CLOSE="false"
    )
    processes.start("consumer", STREAM_TIMEOUT_SECONDS="2")
    await append_slowly(watch_dir / "quiet.mp4", [os.urandom(MIB) for _ in range(7)])

    await wait_completed(log, storage, watch_dir, "quiet.mp4")
    await assert_nothing_open(storage)


async def test_file_deleted_while_recording_fails_its_stream_and_aborts_the_upload(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    path = watch_dir / "gone.mp4"
    await append_slowly(path, [os.urandom(MIB) for _ in range(6)])

    async def started() -> bool:
        return await stream_of(log, "gone.mp4") is not None

    await eventually(started, 20, "stream started")
    path.unlink()

    async def failed() -> bool:
        state = await stream_of(log, "gone.mp4")
        return state is not None and state.status == "failed"

    await eventually(failed, 20, "stream failed")
    await assert_nothing_open(storage)
