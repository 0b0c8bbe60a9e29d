"""A file its writer closes, or one moved in, is completed at once: not on the idle timer.

The idle timer is set far beyond each test's bounded waits (60 s), so only the close can
have completed the object in time. Real producer and consumer processes, Redis and S3.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cefmp4.common.errors import FileChanged
from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import FileClosed, FileIdle, StreamCompleted
from cefmp4.common.s3 import Storage
from cefmp4.consumer.finalize import _settled
from tests.conftest import Processes, eventually
from tests.test_hostile_files import dead_reasons, settled
from tests.test_pipeline import (
    PART,
    assert_nothing_open,
    logged_events,
    stream_of,
    wait_completed,
)

MIB = 1024 * 1024
IDLE_S = "60"
CLOSE_TO_COMPLETE_S = 5.0  # "within a couple of seconds", with room for a busy shared box


def start(processes: Processes, log_level: str = "INFO") -> None:
    for role in ("producer", "consumer"):
        processes.start(
            role, WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE=IDLE_S, PYTHON_LOG_LEVEL=log_level
        )


def in_log(processes: Processes, name: str, text: str) -> Callable[[], Awaitable[bool]]:
    async def there() -> bool:
        path = next(p.log_path for p in processes.processes() if p.name == name)
        return text in path.read_text(errors="replace")

    return there


async def watching_closes(processes: Processes) -> None:
    """Wait until the producer's close watcher is in place."""
    await eventually(
        in_log(processes, "producer", "for closed and moved-in files"),
        30,
        "the producer watching for closes",
    )


async def completed_soon_after(
    log: EventLog, storage: Storage, watch_dir: Path, rel: str, closed_at_s: float
) -> float:
    """Wait (bounded) for `rel`'s object to equal the file; seconds from `closed_at_s`."""
    state = await wait_completed(log, storage, watch_dir, rel, timeout_s=CLOSE_TO_COMPLETE_S + 5)
    assert state.completed_at_ms is not None
    took_s = state.completed_at_ms / 1000 - closed_at_s
    print(f"{rel}: completed {took_s:.2f} s after its close")
    assert took_s <= CLOSE_TO_COMPLETE_S, f"{rel} completed {took_s:.1f}s after its close"
    return took_s


async def closes_of(log: EventLog, rel: str) -> list[FileClosed]:
    return [e for e in await logged_events(log) if isinstance(e, FileClosed) and e.path == rel]


async def completions_of(log: EventLog, rel: str) -> list[StreamCompleted]:
    events = await logged_events(log)
    return [e for e in events if isinstance(e, StreamCompleted) and e.path == rel]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
async def test_an_ffmpeg_recording_completes_as_ffmpeg_exits(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    start(processes)
    await watching_closes(processes)
    out = watch_dir / "cam1" / "rec.mp4"
    out.parent.mkdir()
    recorder = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
        "-f", "lavfi", "-i", "anoisesrc=a=0.5",
        "-t", "5", "-c:v", "mpeg4", "-q:v", "1", "-c:a", "aac", str(out),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, errors = await recorder.communicate()
    exited_at_s = time.time()
    assert recorder.returncode == 0, errors.decode()
    assert out.stat().st_size > PART  # parts were sent while it recorded

    await completed_soon_after(log, storage, watch_dir, "cam1/rec.mp4", exited_at_s)

    assert [e.size for e in await closes_of(log, "cam1/rec.mp4")] == [out.stat().st_size]
    assert not [e for e in await logged_events(log) if isinstance(e, FileIdle)]
    await assert_nothing_open(storage)


async def test_a_file_moved_in_whole_completes_at_once(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    start(processes)
    await watching_closes(processes)
    staged = tmp_path / "staged.mp4"
    staged.write_bytes(os.urandom(2 * PART + 777))

    staged.rename(watch_dir / "moved.mp4")
    moved_at_s = time.time()

    await completed_soon_after(log, storage, watch_dir, "moved.mp4", moved_at_s)
    assert len(await closes_of(log, "moved.mp4")) == 1
    await assert_nothing_open(storage)


async def test_a_writer_that_closes_reopens_and_appends_ends_with_the_whole_file(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    start(processes)
    await watching_closes(processes)
    path = watch_dir / "sessions.mp4"
    with path.open("wb") as f:
        f.write(os.urandom(PART + 1000))
    first_close_s = time.time()
    await completed_soon_after(log, storage, watch_dir, "sessions.mp4", first_close_s)

    with path.open("ab") as f:  # the next session
        f.write(os.urandom(PART // 2))
    second_close_s = time.time()

    await completed_soon_after(log, storage, watch_dir, "sessions.mp4", second_close_s)
    completions = await completions_of(log, "sessions.mp4")
    assert [c.size for c in completions] == [PART + 1000, PART + 1000 + PART // 2]
    assert len({c.stream_id for c in completions}) == 2  # the second brought the object up to date
    await assert_nothing_open(storage)


async def test_two_writers_one_closing_long_before_the_other_end_with_the_whole_file(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    start(processes)
    await watching_closes(processes)
    path = watch_dir / "two.mp4"
    with path.open("ab") as second:
        with path.open("ab") as first:
            first.write(os.urandom(PART + 100))
        # The first writer closed; the second still holds the file open.
        await eventually(
            lambda: _closed_with(log, "two.mp4", PART + 100), 10, "the first writer's close"
        )
        for _ in range(8):  # the second writes on for a while after
            second.write(os.urandom(MIB))
            second.flush()
            await asyncio.sleep(0.25)
    last_close_s = time.time()

    await completed_soon_after(log, storage, watch_dir, "two.mp4", last_close_s)
    assert path.stat().st_size == PART + 100 + 8 * MIB
    await settled(log)
    state = await stream_of(log, "two.mp4")
    assert state is not None and state.size_bytes == path.stat().st_size
    assert await storage.read_object(state.s3_key) == path.read_bytes()
    await assert_nothing_open(storage)


async def _closed_with(log: EventLog, rel: str, size: int) -> bool:
    return any(e.size == size for e in await closes_of(log, rel))


async def test_closes_are_heard_in_folders_created_after_the_start(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    start(processes, log_level="DEBUG")  # each folder watched is logged
    await watching_closes(processes)
    folder = watch_dir / "site" / "2026-11-30" / "cam7"
    folder.mkdir(parents=True)
    await eventually(
        in_log(processes, "producer", f"watching {folder} for closed files"),
        10,
        "the new folder watched",
    )
    with (folder / "late.mp4").open("wb") as f:
        f.write(os.urandom(PART + 5))
    closed_at_s = time.time()
    await completed_soon_after(
        log, storage, watch_dir, "site/2026-11-30/cam7/late.mp4", closed_at_s
    )

    # A folder moved in from elsewhere is watched too (its files already there end on
    # the idle timer: they may still be written).
    outside = tmp_path / "outside" / "cam8"
    outside.mkdir(parents=True)
    outside.rename(watch_dir / "cam8")
    await eventually(
        in_log(processes, "producer", f"watching {watch_dir / 'cam8'} for closed files"),
        10,
        "the moved-in folder watched",
    )
    with (watch_dir / "cam8" / "rec.mp4").open("wb") as f:
        f.write(os.urandom(1000))
    closed_at_s = time.time()
    await completed_soon_after(log, storage, watch_dir, "cam8/rec.mp4", closed_at_s)
    await assert_nothing_open(storage)


async def test_odd_names_and_symlinked_folders_give_no_close_while_their_neighbour_does(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    start(processes)
    await watching_closes(processes)
    outside = tmp_path / "outside"
    outside.mkdir()
    (watch_dir / "linked").symlink_to(outside, target_is_directory=True)
    bad = os.fsencode(watch_dir) + b"/bad\xff.mp4"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"not valid UTF-8")
    os.close(fd)
    (outside / "behind.mp4").write_bytes(b"behind a symlink")

    with (watch_dir / "good.mp4").open("wb") as f:
        f.write(os.urandom(1000))
    closed_at_s = time.time()

    await completed_soon_after(log, storage, watch_dir, "good.mp4", closed_at_s)
    await settled(log)
    closed = {e.path for e in await logged_events(log) if isinstance(e, FileClosed)}
    assert closed == {"good.mp4"}
    assert await dead_reasons(log) == []
    assert "Traceback" not in processes.output()


async def test_with_finalize_on_close_off_only_the_idle_timer_completes(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    idle_s = 8
    for role in ("producer", "consumer"):
        processes.start(
            role, WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE=str(idle_s), WATCH_FINALIZE_ON_CLOSE="false"
        )
    await eventually(
        in_log(processes, "producer", "a file is finished by the idle timer alone"),
        30,
        "the producer saying the idle timer alone decides",
    )
    with (watch_dir / "off.mp4").open("wb") as f:
        f.write(os.urandom(PART + 10))
    closed_at_s = time.time()

    state = await wait_completed(log, storage, watch_dir, "off.mp4", timeout_s=idle_s + 20)

    events = await logged_events(log)
    assert not [e for e in events if isinstance(e, FileClosed)]
    idle = [e for e in events if isinstance(e, FileIdle) and e.path == "off.mp4"]
    assert len(idle) == 1
    assert state.completed_at_ms is not None and state.completed_at_ms >= idle[0].at_ms
    assert idle[0].at_ms / 1000 - closed_at_s >= idle_s - 1  # the timer, not the close
    await assert_nothing_open(storage)


async def test_a_write_in_place_right_after_the_final_check_is_caught_before_completing(
    tmp_path: Path,
) -> None:
    """A second writer patching bytes in place just after the first one closed: same size,
    and within one clock tick the same mtime. The final pass waits for the ctime to settle
    and looks again before it completes."""
    path = tmp_path / "shared.mp4"
    path.write_bytes(os.urandom(4096))
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        check = asyncio.create_task(_settled(fd, st))
        with path.open("r+b") as f:  # the other writer, while the final pass waits
            f.write(b"patched")
        with pytest.raises(FileChanged):
            await asyncio.wait_for(check, 5)
    finally:
        os.close(fd)
