"""A camera's folder deleted or renamed while it records: a missing path is not a bad one."""

from __future__ import annotations

import shutil
from pathlib import Path

from cefmp4.common.eventlog import EventLog
from cefmp4.common.s3 import Storage
from cefmp4.common.statestore import StateReader
from tests.conftest import Processes, eventually
from tests.test_hostile_files import dead_reasons, settled
from tests.test_pipeline import (
    assert_nothing_open,
    parts_sent,
    recording,
    stream_of,
    wait_completed,
)


async def ended(log: EventLog, rel: str) -> str:
    """Wait until `rel`'s latest stream is failed or aborted; its status."""

    async def over() -> bool:
        state = await stream_of(log, rel)
        return state is not None and state.status in ("failed", "aborted")

    await eventually(over, 30, f"the stream of {rel} failed or aborted")
    state = await stream_of(log, rel)
    assert state is not None
    return state.status


async def test_a_folder_removed_while_recording_fails_its_stream_without_dead_letters(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    async with recording(watch_dir / "cam1" / "rec.mp4"):
        await parts_sent(log, "cam1/rec.mp4", 1)
        shutil.rmtree(watch_dir / "cam1")  # the recorder keeps writing to its open file

        assert await ended(log, "cam1/rec.mp4") == "failed"

    await settled(log)
    assert await dead_reasons(log) == []
    await assert_nothing_open(storage)


async def test_a_folder_renamed_while_recording_ends_the_old_stream_and_starts_a_new_one(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    async with recording(watch_dir / "cam2" / "rec.mp4"):
        await parts_sent(log, "cam2/rec.mp4", 1)
        old = await stream_of(log, "cam2/rec.mp4")
        (watch_dir / "cam2").rename(watch_dir / "cam2b")  # the recorder keeps writing

        await ended(log, "cam2/rec.mp4")

    # The producer's full rescan (every 30 s) may be what finds the new name.
    new = await wait_completed(log, storage, watch_dir, "cam2b/rec.mp4", timeout_s=90)

    assert old is not None and new.stream_id != old.stream_id
    assert new.s3_key == "cam2b/rec.mp4"
    streams = await StateReader(log.redis, log.keys).open_streams()
    assert streams == []
    await settled(log)
    assert await dead_reasons(log) == []
    await assert_nothing_open(storage)
