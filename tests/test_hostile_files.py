"""Hostile or odd files under WATCH_DIR, and forged events: nothing hangs, nothing leaks."""

from __future__ import annotations

import os
from pathlib import Path

from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import FileClosed, FileCreated, FileIdle
from cefmp4.common.keys import UPLOADERS
from cefmp4.common.s3 import Storage
from tests.conftest import Processes, eventually
from tests.test_pipeline import MIB, all_streams, assert_nothing_open, wait_completed


async def forge(log: EventLog, rel: str, target: Path) -> None:
    """Append the producer's events for `rel` straight to the log, as a hostile writer could,
    describing `target` as it is on disk."""
    st = os.lstat(target)
    for kind in (FileCreated, FileIdle, FileClosed):
        await log.append(
            kind(
                path=rel,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                inode=st.st_ino,
                device=st.st_dev,
            )
        )


async def settled(log: EventLog) -> None:
    async def nothing_pending() -> bool:
        groups = {g.name: g for g in await log.groups()}
        return groups[UPLOADERS].pending == 0 and groups[UPLOADERS].lag == 0

    await eventually(nothing_pending, 30, "every uploader entry acknowledged")


async def dead_reasons(log: EventLog) -> list[str]:
    dead: list[tuple[bytes, dict[bytes, bytes]]] = await log.redis.xrange(log.keys.dead)  # type: ignore[assignment]
    return [fields[b"reason"].decode() for _, fields in dead]


async def test_fifos_and_symlinked_folders_neither_hang_nor_leak(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (watch_dir / "real").mkdir()
    (watch_dir / "linked").symlink_to(outside, target_is_directory=True)
    (watch_dir / "alias").symlink_to(watch_dir / "real", target_is_directory=True)
    os.mkfifo(watch_dir / "x.mp4")  # a reader opening it would wait for a writer forever
    (watch_dir / "cam").mkdir()
    os.mkfifo(watch_dir / "cam" / "pipe.mp4")
    (outside / "a.mp4").write_bytes(os.urandom(MIB))
    (watch_dir / "real" / "r.mp4").write_bytes(os.urandom(MIB + 1))
    (watch_dir / "cam" / "rec.mp4").write_bytes(os.urandom(2 * MIB))
    # What the producer never reports, reported anyway.
    await forge(log, "x.mp4", watch_dir / "x.mp4")
    await forge(log, "cam/pipe.mp4", watch_dir / "cam" / "pipe.mp4")
    await forge(log, "linked/a.mp4", outside / "a.mp4")
    await forge(log, "alias/r.mp4", watch_dir / "real" / "r.mp4")
    (watch_dir / "after.mp4").write_bytes(os.urandom(MIB))

    await wait_completed(log, storage, watch_dir, "real/r.mp4")
    await wait_completed(log, storage, watch_dir, "cam/rec.mp4")
    await wait_completed(log, storage, watch_dir, "after.mp4")
    await settled(log)

    assert {s.path for s in await all_streams(log)} == {"real/r.mp4", "cam/rec.mp4", "after.mp4"}
    for key in ("x.mp4", "cam/pipe.mp4", "linked/a.mp4", "alias/r.mp4"):
        assert await storage.object_facts(key) is None, key
    await assert_nothing_open(storage)


async def test_a_forged_event_for_a_file_the_globs_do_not_match_is_set_aside(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    (watch_dir / "secret.txt").write_bytes(b"not a recording, never to be uploaded")
    await forge(log, "secret.txt", watch_dir / "secret.txt")
    (watch_dir / "after.mp4").write_bytes(os.urandom(MIB))

    await wait_completed(log, storage, watch_dir, "after.mp4")
    await settled(log)

    reasons = await dead_reasons(log)
    assert reasons == ["not matched by WATCH_FILTER_GLOBS: 'secret.txt'"] * 3
    assert {s.path for s in await all_streams(log)} == {"after.mp4"}
    assert await storage.object_facts("secret.txt") is None
    await assert_nothing_open(storage)
