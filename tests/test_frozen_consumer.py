"""A consumer frozen past its lock (SIGSTOP, a VM migration, a long GC) and then resumed
cannot leave a wrong object, abort the new holder's upload or fail the recording."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from cefmp4.common.eventlog import EventLog
from cefmp4.common.s3 import Storage
from tests.conftest import Processes, Services
from tests.s3edge import s3_edge
from tests.test_pipeline import assert_nothing_open, parts_sent, stream_of, wait_completed

MIB = 1024 * 1024


async def test_a_consumer_frozen_mid_pass_and_resumed_spoils_nothing(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    processes.start("producer")
    # Its lock lapses a second after it stops renewing it.
    frozen = processes.start("consumer", CLAIM_IDLE_SECONDS="2", UPLOAD_CONCURRENCY="1")
    staged = tmp_path / "cam.mp4"
    staged.write_bytes(os.urandom(120 * MIB))
    os.rename(staged, watch_dir / "cam.mp4")  # one long pass: 24 parts, one at a time
    await parts_sent(log, "cam.mp4", 2)
    frozen.send_signal(signal.SIGSTOP)
    first = await stream_of(log, "cam.mp4")
    assert first is not None
    with (watch_dir / "cam.mp4").open("r+b") as f:  # the header patched, as ffmpeg does
        f.seek(40)
        f.write(os.urandom(8))

    processes.start("consumer", CLAIM_IDLE_SECONDS="2", UPLOAD_CONCURRENCY="1")
    await wait_completed(log, storage, watch_dir, "cam.mp4", timeout_s=120)
    frozen.send_signal(signal.SIGCONT)
    frozen.send_signal(signal.SIGTERM)  # whatever it does late, it does before it exits
    assert await asyncio.to_thread(frozen.wait, 60) == 0

    state = await wait_completed(log, storage, watch_dir, "cam.mp4", timeout_s=120)
    assert state.status == "completed"
    assert await log.redis.xlen(log.keys.dead) == 0
    await assert_nothing_open(storage)


async def test_complete_answering_invalid_part_sends_every_part_again_and_finishes(
    processes: Processes,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    env: dict[str, str],
    services: Services,
) -> None:
    # What AWS S3 answers when a part was overwritten by a late sender (weed never does).
    async with s3_edge(services.s3_endpoint_url) as edge:
        edge.refuse("CompleteMultipartUpload", "InvalidPart", 400, times=1)
        processes.start("producer")
        processes.start("consumer", S3_ENDPOINT_URL=edge.url)
        (watch_dir / "cam.mp4").write_bytes(os.urandom(12 * MIB))

        done = await wait_completed(log, storage, watch_dir, "cam.mp4", timeout_s=60)

        assert edge.count("CompleteMultipartUpload") == 2
        assert edge.count("UploadPart") == 6  # every part once, then every part again
    assert done.attempt == 0  # the same stream finished: nothing failed
    await assert_nothing_open(storage)
