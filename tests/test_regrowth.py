"""A file that grows after its object was completed: only what changed or was added is sent
again, the rest copied on the server from the completed object (consumer/regrowth.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from msgspec.structs import replace

from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import PartUploaded
from cefmp4.common.s3 import Storage
from cefmp4.common.streamstate import PartRecord, StreamState
from cefmp4.consumer.regrowth import copy_candidates
from ops.local_services import free_port
from tests.conftest import Processes, Services
from tests.s3edge import s3_edge
from tests.test_metrics import Scrape, scrape, scrape_when_up, value
from tests.test_pipeline import assert_nothing_open, logged_events, wait_completed

MIB = 1024 * 1024
PART = 5 * MIB  # STREAM_CHUNK_SIZE_MB of the tests' deployment
RECORDING = 8 * PART  # 40 MiB: eight whole parts
SENT = "cefmp4_uploaded_bytes_total"
COPIED = "cefmp4_copied_bytes_total"


def completed(size: int, lengths: list[int]) -> StreamState:
    parts: dict[int, PartRecord] = {}
    offset = 0
    for number, length in enumerate(lengths, 1):
        parts[number] = PartRecord(offset, length, number, f"e{number}")
        offset += length
    return StreamState(
        stream_id="s1",
        path="cam.mp4",
        s3_key="cam.mp4",
        upload_id="u1",
        status="completed",
        size_bytes=size,
        inode=1,
        device=1,
        created_at_ms=0,
        updated_at_ms=0,
        parts=parts,
    )


def test_whole_parts_of_the_previous_object_are_candidates_its_short_last_part_is_not() -> None:
    previous = completed(2 * PART + MIB, [PART, PART, MIB])
    candidates = copy_candidates(previous, 3 * PART, PART)
    assert [(p.number, p.offset, p.length) for p, _ in candidates] == [
        (1, 0, PART),
        (2, PART, PART),
    ]
    assert [record.etag for _, record in candidates] == ["e1", "e2"]


def test_only_parts_the_file_still_holds_whole_are_candidates() -> None:
    previous = completed(3 * PART, [PART, PART, PART])
    assert [p.number for p, _ in copy_candidates(previous, 2 * PART + 1, PART)] == [1, 2]


def test_no_candidates_from_an_unfinished_stream_or_another_part_size() -> None:
    previous = completed(2 * PART, [PART, PART])
    assert copy_candidates(replace(previous, status="failed"), 3 * PART, PART) == []
    assert copy_candidates(None, 3 * PART, PART) == []
    assert copy_candidates(previous, 3 * PART, 2 * PART) == []


async def grown(
    log: EventLog, storage: Storage, watch_dir: Path, port: int, *, change: bool
) -> tuple[Scrape, Scrape]:
    """Complete a 40 MiB recording, then add 1 MiB to it (first rewriting a few bytes of its
    second part if `change`); the consumer's metrics before and after the growth."""
    await scrape_when_up(port)
    path = watch_dir / "cam.mp4"
    path.write_bytes(os.urandom(RECORDING))
    await wait_completed(log, storage, watch_dir, "cam.mp4")
    before = await asyncio.to_thread(scrape, port)
    with path.open("r+b") as f:
        if change:
            f.seek(PART + 1000)
            f.write(os.urandom(1000))
        f.seek(0, os.SEEK_END)
        f.write(os.urandom(MIB))
    await wait_completed(log, storage, watch_dir, "cam.mp4")
    return before, await asyncio.to_thread(scrape, port)


def consumer_log(processes: Processes) -> str:
    return next(p for p in processes.processes() if p.name == "consumer").log_path.read_text()


def moved(before: Scrape, after: Scrape, name: str) -> float:
    return value(after, name) - value(before, name)


async def test_a_recording_that_grows_after_completion_sends_only_the_new_bytes(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    port = free_port()
    processes.start("producer")
    processes.start("consumer", METRICS_PORT=str(port), METRICS_HOST="127.0.0.1")

    before, after = await grown(log, storage, watch_dir, port, change=False)

    assert moved(before, after, SENT) == MIB
    assert moved(before, after, COPIED) == RECORDING
    await assert_nothing_open(storage)


async def test_a_part_rewritten_before_the_growth_is_sent_not_copied(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    port = free_port()
    processes.start("producer")
    processes.start("consumer", METRICS_PORT=str(port), METRICS_HOST="127.0.0.1")

    before, after = await grown(log, storage, watch_dir, port, change=True)

    events = [e for e in await logged_events(log) if isinstance(e, PartUploaded)]
    first_stream = events[0].stream_id
    regrown = [e for e in events if e.stream_id != first_stream]
    assert not any(e.copied for e in regrown if e.part_number == 2)
    assert any(e.copied for e in regrown if e.part_number == 1)
    # The rewritten part and the new MiB, nothing else.
    assert moved(before, after, SENT) == PART + MIB
    await assert_nothing_open(storage)


async def test_copies_refused_by_s3_fall_back_to_sending_the_file(
    processes: Processes, services: Services, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    port = free_port()
    async with s3_edge(services.s3_endpoint_url) as edge:
        edge.refuse("UploadPartCopy", "NotImplemented", 501)
        processes.start("producer")
        processes.start(
            "consumer", METRICS_PORT=str(port), METRICS_HOST="127.0.0.1", S3_ENDPOINT_URL=edge.url
        )

        before, after = await grown(log, storage, watch_dir, port, change=False)

        assert edge.count("UploadPartCopy") >= 1
    assert moved(before, after, SENT) == RECORDING + MIB
    assert moved(before, after, COPIED) == 0
    assert consumer_log(processes).count("S3 refused to copy parts of cam.mp4") == 1
    await assert_nothing_open(storage)


async def test_an_object_overwritten_since_its_completion_is_not_copied_from(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    port = free_port()
    processes.start("producer")
    processes.start("consumer", METRICS_PORT=str(port), METRICS_HOST="127.0.0.1")
    await scrape_when_up(port)
    path = watch_dir / "cam.mp4"
    path.write_bytes(os.urandom(RECORDING))
    state = await wait_completed(log, storage, watch_dir, "cam.mp4")
    # Someone else's object of the same size under the key: its bytes are not the file's.
    await storage.put_object(state.s3_key, os.urandom(RECORDING))
    before = await asyncio.to_thread(scrape, port)

    with path.open("ab") as f:
        f.write(os.urandom(MIB))
    await wait_completed(log, storage, watch_dir, "cam.mp4")

    after = await asyncio.to_thread(scrape, port)
    assert moved(before, after, COPIED) == 0
    assert moved(before, after, SENT) == RECORDING + MIB
    assert "not the one its last stream completed" in consumer_log(processes)
