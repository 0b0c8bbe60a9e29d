"""The producer on real processes: names it cannot use, restarts, a WATCH_DIR that goes away."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import (
    AbortRequested,
    AnyEvent,
    FileDeleted,
    FileEvent,
    FileIdle,
    StreamAborted,
    StreamFailed,
    UploadStarted,
    decode,
)
from cefmp4.common.keys import UPLOADERS
from cefmp4.common.s3 import Storage
from tests.conftest import Processes, eventually
from tests.test_pipeline import (
    assert_nothing_open,
    logged_events,
    parts_sent,
    recording,
    stream_of,
    wait_completed,
)

MIB = 1024 * 1024
PART = 5 * MIB  # STREAM_CHUNK_SIZE_MB in the tests' environment
UNDECODABLE = b"bad\xff\xfe.mp4"
SHOWN_AS = "bad\\xff\\xfe.mp4"
FINISHED = 20
QUIET_S = "10"  # the producer's idle time where recordings must stay open a while
ODD_NAMES = ("new\nline.mp4", "-leading-dash.mp4", "x" * 251 + ".mp4", "plain.mp4")


def write_undecodable(watch_dir: Path, data: bytes) -> None:
    fd = os.open(bytes(watch_dir) + b"/" + UNDECODABLE, os.O_CREAT | os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def producer_logs(processes: Processes) -> list[str]:
    return [
        path.read_bytes().decode(errors="replace")
        for path in sorted(processes.log_dir.glob("*-producer.log"))
    ]


async def test_a_name_that_is_not_utf8_is_skipped_and_logged_once_and_the_rest_goes_on(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    producer = processes.start("producer")
    processes.start("consumer")
    (watch_dir / "before.mp4").write_bytes(os.urandom(MIB))
    await wait_completed(log, storage, watch_dir, "before.mp4")

    write_undecodable(watch_dir, os.urandom(MIB))
    for name in ODD_NAMES:
        (watch_dir / name).write_bytes(os.urandom(MIB + len(name)))
    for name in ODD_NAMES:
        await wait_completed(log, storage, watch_dir, name)
    # It changes again, and again trips the watcher; it is not logged again.
    write_undecodable(watch_dir, os.urandom(1000))
    (watch_dir / "second.mp4").write_bytes(os.urandom(MIB))
    await wait_completed(log, storage, watch_dir, "second.mp4")
    assert producer.poll() is None, processes.output()

    async def name_logged() -> bool:
        return SHOWN_AS in producer_logs(processes)[0]

    # Closed files complete before the watcher's batch with the odd name comes in.
    await eventually(name_logged, 30, "the undecodable name logged")

    # A producer started with it already there finds it on its first look, and lives too.
    producer.send_signal(signal.SIGTERM)
    assert producer.wait(timeout=15) == 0, processes.output()
    producer = processes.start("producer")
    (watch_dir / "after.mp4").write_bytes(os.urandom(MIB))
    await wait_completed(log, storage, watch_dir, "after.mp4")
    assert producer.poll() is None, processes.output()

    paths = {e.path for e in await logged_events(log) if isinstance(e, FileEvent | FileDeleted)}
    assert paths == {"before.mp4", *ODD_NAMES, "second.mp4", "after.mp4"}
    for output in producer_logs(processes):
        naming = [line for line in output.splitlines() if SHOWN_AS in line]
        assert len(naming) == 1 and " WARNING " in naming[0], output
        assert "\ufffd" not in output  # no raw byte of the name reached the log
    await assert_nothing_open(storage)


async def log_end(log: EventLog) -> bytes:
    last: list[tuple[bytes, dict[bytes, bytes]]] = await log.redis.xrevrange(
        log.keys.events, count=1
    )  # type: ignore[assignment]
    return last[0][0] if last else b"0-0"


async def events_after(log: EventLog, entry_id: bytes) -> list[AnyEvent]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await log.redis.xrange(  # type: ignore[assignment]
        log.keys.events, min=b"(" + entry_id
    )
    return [decode(fields) for _, fields in entries]


async def test_a_restarted_producer_does_not_announce_finished_files_again(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    producer = processes.start("producer")
    processes.start("consumer")
    names = [f"cam{n % 4}/rec{n}.mp4" for n in range(FINISHED)]
    for n, name in enumerate(names):
        (watch_dir / name).parent.mkdir(exist_ok=True)
        (watch_dir / name).write_bytes(os.urandom(1000 + n))
    streams = {
        name: (await wait_completed(log, storage, watch_dir, name)).stream_id for name in names
    }
    producer.send_signal(signal.SIGKILL)
    producer.wait()
    restart_at = await log_end(log)

    # While it is down one file grows and one appears: those are reported, as before.
    grown, unchanged = names[0], names[1:]
    with (watch_dir / grown).open("ab") as f:
        f.write(os.urandom(500))
    (watch_dir / "new.mp4").write_bytes(os.urandom(1000))
    processes.start("producer")
    await wait_completed(log, storage, watch_dir, grown)
    await wait_completed(log, storage, watch_dir, "new.mp4")

    reported = [
        (type(e).__name__, e.path)
        for e in await events_after(log, restart_at)
        if isinstance(e, FileEvent | UploadStarted)
    ]
    paths = {path for _kind, path in reported}
    assert paths.isdisjoint(unchanged), reported
    assert {grown, "new.mp4"} <= paths, reported
    for name in unchanged:
        state = await stream_of(log, name)
        assert state is not None and state.stream_id == streams[name]
    restarted = producer_logs(processes)[-1]
    assert not [name for name in unchanged if name in restarted], restarted


async def uploaders_done(log: EventLog, watch_dir: Path, paths: list[str]) -> None:
    """Wait until every whole part of the files is sent and no uploader has anything in hand
    for them: no entry unread or pending, no pass running.

    (A pass that ran while the files are away would fail their streams: the uploaders take a
    missing file for a deleted one.)
    """

    async def done() -> bool:
        for path in paths:
            state = await stream_of(log, path)
            whole = (watch_dir / path).stat().st_size // PART * PART
            if state is None or state.sent_end < whole:  # the tail may have gone early
                return False
        groups = {g.name: g for g in await log.groups()}
        uploaders = groups[UPLOADERS]
        locks = await log.redis.exists(*(log.keys.path_lock(path) for path in paths))
        return uploaders.pending == 0 and uploaders.lag == 0 and locks == 0

    await eventually(done, 30, "the uploaders done with what was written")


def logged(processes: Processes, text: str) -> Callable[[], Awaitable[bool]]:
    async def found() -> bool:
        return text in producer_logs(processes)[0]

    return found


async def open_recordings_survive(
    processes: Processes,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    folder: str,
    take_away: Callable[[], object],
    bring_back: Callable[[], object],
    *,
    stale_after: str = "30",
) -> None:
    """Recordings under `folder` of WATCH_DIR are open when `take_away` makes every one of
    them vanish at once; once `bring_back` has run, each completes in the stream it had.

    With a `stale_after` (STREAM_TIMEOUT_SECONDS) shorter than they stay away, the stale
    checker meets them missing too, and must wait for them rather than abort them.
    """
    # Open a while after their writers closed them: neither the idle timer nor a close ends them.
    processes.start(
        "producer", WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE=QUIET_S, WATCH_FINALIZE_ON_CLOSE="false"
    )
    consumer = processes.start("consumer", STREAM_TIMEOUT_SECONDS=stale_after)
    names = [f"{folder}cam{n}.mp4" for n in range(4)]
    async with contextlib.AsyncExitStack() as recorders:
        for name in names:
            await recorders.enter_async_context(recording(watch_dir / name))
        for name in names:
            await parts_sent(log, name, 1)
    await uploaders_done(log, watch_dir, names)
    before = {name: await stream_of(log, name) for name in names}
    assert all(s is not None and s.status == "active" for s in before.values()), before
    away_at = await log_end(log)

    take_away()
    await eventually(logged(processes, "looks unmounted or emptied"), 20, "the warning")
    if float(stale_after) < 10:
        log_path = next(p.log_path for p in processes.processes() if p.process is consumer)

        async def stale_checker_waits() -> bool:
            return "looks unmounted or emptied" in log_path.read_text(errors="replace")

        await eventually(stale_checker_waits, 20, "the stale checker waiting for them")
    bring_back()
    await eventually(logged(processes, "is back"), 20, "the line saying it is back")
    # Seen at once, not at the next full rescan: the watcher works again.
    (watch_dir / folder / "after.mp4").write_bytes(os.urandom(MIB))
    await wait_completed(log, storage, watch_dir, f"{folder}after.mp4", timeout_s=20)

    for name in names:
        state = await wait_completed(log, storage, watch_dir, name)
        assert state.stream_id == before[name].stream_id  # type: ignore[union-attr]
    ended = [
        e
        for e in await events_after(log, away_at)
        if isinstance(e, FileDeleted | StreamFailed | StreamAborted | AbortRequested)
    ]
    assert ended == []
    output = producer_logs(processes)[0]
    assert output.count("looks unmounted or emptied") == 1, output
    assert output.count("is back") == 1, output
    await assert_nothing_open(storage)


async def test_open_recordings_moved_away_all_at_once_and_back_are_not_failed(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    aside = tmp_path / "aside"
    aside.mkdir()
    (watch_dir / "cams").mkdir()
    await open_recordings_survive(
        processes,
        log,
        storage,
        watch_dir,
        "cams/",
        lambda: (watch_dir / "cams").rename(aside / "cams"),
        lambda: (aside / "cams").rename(watch_dir / "cams"),
        stale_after="2",  # they stay away longer: the stale checker meets them missing
    )


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def unmount(where: Path, within_s: float = 10.0) -> None:
    """Unmount `where` as an operator would, trying again while umount answers "target is
    busy": an uploader reading a part, or the producer listing a folder, holds it for a
    moment (CI once met that)."""
    deadline = time.monotonic() + within_s
    while True:
        done = subprocess.run(["umount", str(where)], capture_output=True, text=True)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"umount {where}: {done.stderr.strip()}; held by: {_holders(where)}")
        time.sleep(0.1)


def _holders(where: Path) -> str:
    try:
        found = subprocess.run(["fuser", "-vm", str(where)], capture_output=True, text=True)
    except OSError as exc:
        return f"(fuser: {exc})"
    return found.stderr.strip()


@contextlib.contextmanager
def disk_mounted_at(where: Path, tmp_path: Path) -> Iterator[str]:
    """A fresh ext4 file system on a loop device, mounted at `where`; skips the test where
    that cannot be done."""
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(256 * MIB)
    try:
        run("mkfs.ext4", "-q", "-F", str(image))
        attached = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no loop device here: {exc}")
    device = attached.stdout.strip()
    try:
        try:
            run("mount", device, str(where))
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot mount here: {exc.stderr!r}")
        yield device
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=False, capture_output=True)
        subprocess.run(["losetup", "--detach", device], check=False, capture_output=True)


async def test_open_recordings_on_a_file_system_unmounted_and_mounted_again_are_not_failed(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    with disk_mounted_at(watch_dir, tmp_path) as device:
        await open_recordings_survive(
            processes,
            log,
            storage,
            watch_dir,
            "",
            lambda: unmount(watch_dir),
            lambda: run("mount", device, str(watch_dir)),
        )


async def test_file_events_a_failover_lost_are_reported_again(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    processes.start("producer")
    (watch_dir / "short.mp4").write_bytes(os.urandom(MIB))

    async def idle_logged() -> bool:
        return any(isinstance(e, FileIdle) for e in await logged_events(log))

    await eventually(idle_logged, 30, "FileIdle in the log")
    # What a replica promoted before the primary's newest entries reached it holds: the
    # log and its groups without them (and no record of their deletion).
    await log.redis.delete(log.keys.events)
    await log.ensure_groups()
    processes.start("consumer")

    await wait_completed(log, storage, watch_dir, "short.mp4")
    await assert_nothing_open(storage)
