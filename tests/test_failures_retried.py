"""A recording failed by a passing fault is not failed forever."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from cefmp4.common.eventlog import EventLog
from cefmp4.common.s3 import Storage
from tests.conftest import Processes
from tests.test_cli import cefmp4
from tests.test_faults import status_of
from tests.test_pipeline import (
    assert_nothing_open,
    parts_sent,
    recording,
    stream_of,
    wait_completed,
)

MIB = 1024 * 1024
# Root without capabilities cannot read a file of mode 000, as any user could not.
NO_CAPS = ("setpriv", "--inh-caps=-all", "--bounding-set=-all")
needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")


@needs_setpriv
async def test_a_file_unreadable_for_a_while_is_uploaded_once_it_can_be_read(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    processes.start("producer")
    processes.start(
        "consumer", prefix=NO_CAPS, RETRY_FAILED_AFTER_SECONDS="1", STREAM_TIMEOUT_SECONDS="4"
    )
    locked = watch_dir / "locked.mp4"
    locked.write_bytes(os.urandom(MIB))
    locked.chmod(0)
    await status_of(log, "locked.mp4", "failed")

    locked.chmod(0o644)  # the permission is fixed; the file itself is as it was

    await wait_completed(log, storage, watch_dir, "locked.mp4")
    await assert_nothing_open(storage)


async def test_a_recording_moved_out_and_back_is_uploaded(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    path = watch_dir / "cam.mp4"
    aside = tmp_path / "aside.mp4"
    async with recording(path):
        await parts_sent(log, "cam.mp4", 1)
    os.rename(path, aside)  # away before it went idle
    await status_of(log, "cam.mp4", "failed")

    os.rename(aside, path)  # back, as it was

    await wait_completed(log, storage, watch_dir, "cam.mp4")
    await assert_nothing_open(storage)


@needs_setpriv
async def test_retry_re_queues_failed_recordings_by_hand(
    processes: Processes,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    processes.start("producer")
    processes.start("consumer", prefix=NO_CAPS, RETRY_FAILED_AFTER_SECONDS="3600")
    names = ["a.mp4", "b.mp4", "c.mp4"]
    for name in names:
        (watch_dir / name).write_bytes(os.urandom(MIB))
        (watch_dir / name).chmod(0)
    for name in names:
        await status_of(log, name, "failed")
    for name in names:
        (watch_dir / name).chmod(0o644)

    one = await asyncio.to_thread(cefmp4, env, "retry", "a.mp4", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert "a.mp4: re-queued (it failed: cannot read file: Permission denied)" in one.stdout
    await wait_completed(log, storage, watch_dir, "a.mp4")
    b = await stream_of(log, "b.mp4")
    assert b is not None and b.status == "failed"  # the others wait for their hour

    rest = await asyncio.to_thread(cefmp4, env, "retry", "--failed", cwd=tmp_path)
    unknown = await asyncio.to_thread(cefmp4, env, "retry", "nope.mp4", cwd=tmp_path)

    assert rest.returncode == 0, rest.stderr
    assert sorted(line.split(":")[0] for line in rest.stdout.splitlines()) == ["b.mp4", "c.mp4"]
    for name in ("b.mp4", "c.mp4"):
        await wait_completed(log, storage, watch_dir, name)
    assert unknown.returncode == 1
    assert unknown.stderr.splitlines()[1] == "nope.mp4: no such recording"  # after the Redis
    await assert_nothing_open(storage)
