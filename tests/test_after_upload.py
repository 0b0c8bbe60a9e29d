"""AFTER_UPLOAD: a recording leaves WATCH_DIR only once its object is verified, unchanged."""

from __future__ import annotations

import os
import shutil
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cefmp4.common.config import Settings
from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import (
    AnyEvent,
    LocalFileRemoved,
    PartUploaded,
    StreamAborted,
    StreamCompleted,
    StreamFailed,
    UploadStarted,
    now_ms,
)
from cefmp4.common.files import watch_root
from cefmp4.common.s3 import SentPart, Storage
from cefmp4.common.streamstate import StreamState
from cefmp4.consumer.reclaim import Reclaimer
from cefmp4.status import gather
from ops.local_services import free_port
from tests.conftest import Processes, eventually
from tests.test_cli import cefmp4
from tests.test_metrics import scrape_when_up, value
from tests.test_pipeline import MIB, all_streams, logged_events, stream_of, wait_completed
from tests.test_projector import append_all, project_until

DELAY_S = "4"


def recording(watch_dir: Path, rel: str, size: int = MIB) -> bytes:
    data = os.urandom(size + len(rel))
    path = watch_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


async def removals(log: EventLog) -> dict[str, LocalFileRemoved]:
    return {e.path: e for e in await logged_events(log) if isinstance(e, LocalFileRemoved)}


async def wait_removed(log: EventLog, rel: str, timeout_s: float = 60) -> LocalFileRemoved:
    async def recorded() -> bool:
        return rel in await removals(log)

    await eventually(recorded, timeout_s, f"{rel} removed after upload")
    return (await removals(log))[rel]


async def test_delete_takes_only_verified_unchanged_files(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    port = free_port()
    processes.start("producer")
    processes.start(
        "consumer",
        AFTER_UPLOAD="delete",
        AFTER_UPLOAD_DELAY_SECONDS=DELAY_S,
        LOCAL_MIN_FREE_PERCENT="100",
        METRICS_PORT=str(port),
        METRICS_HOST="127.0.0.1",
    )
    # Completed, then its mode changed: the same bytes, but not provably unchanged (ctime).
    recording(watch_dir, "cam/touched.mp4")
    await wait_completed(log, storage, watch_dir, "cam/touched.mp4")
    (watch_dir / "cam/touched.mp4").chmod(0o600)
    # Completed, then its object replaced in S3: not verified.
    recording(watch_dir, "cam/replaced.mp4")
    replaced = await wait_completed(log, storage, watch_dir, "cam/replaced.mp4")
    await storage.put_object(replaced.s3_key, b"something else")
    # Completed, then deleted by someone: what a remover that died after the unlink leaves.
    recording(watch_dir, "cam/gone.mp4")
    await wait_completed(log, storage, watch_dir, "cam/gone.mp4")
    (watch_dir / "cam/gone.mp4").unlink()
    # Completed and left alone, two parts.
    data = recording(watch_dir, "cam/done.mp4", 7 * MIB)
    done = await wait_completed(log, storage, watch_dir, "cam/done.mp4")

    removed = await wait_removed(log, "cam/done.mp4")

    assert (removed.how, removed.stream_id) == ("deleted", done.stream_id)
    assert not (watch_dir / "cam/done.mp4").exists()
    assert await storage.read_object(done.s3_key) == data
    assert (await removals(log))["cam/gone.mp4"].how == "gone"
    # Decided before done.mp4, which completed after them: both kept.
    assert (watch_dir / "cam/touched.mp4").exists() and (watch_dir / "cam/replaced.mp4").exists()
    assert set(await removals(log)) == {"cam/done.mp4", "cam/gone.mp4"}
    assert "cam/replaced.mp4 kept in WATCH_DIR: its object" in processes.output(100_000)

    async def settled() -> bool:
        state = await stream_of(log, "cam/done.mp4")
        return state is not None and state.local_file == "deleted"

    await eventually(settled, 30, "the removal folded into the state")
    # The producer's FileDeleted harmed nothing: no new stream, nothing failed.
    streams = await all_streams(log)
    assert sorted(s.status for s in streams) == ["completed"] * 4
    report = await gather(log)
    shown = {s.path: s.local_file for s in report.streams}
    assert shown["cam/done.mp4"] == "deleted" and shown["cam/touched.mp4"] is None
    assert report.dead_letters == 0
    scraped = await scrape_when_up(port)
    assert value(scraped, "cefmp4_watch_dir_free_bytes") > 0
    assert value(scraped, "cefmp4_local_files_removed_total", how="deleted") == 1
    assert "is short of space" in processes.output(100_000)


async def test_move_keeps_the_file_under_move_dir_and_finishes_an_interrupted_move(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    (moved / "cam").mkdir(parents=True)
    (moved / "cam" / "taken.mp4").write_bytes(b"an older recording")
    processes.start("producer")
    processes.start(
        "consumer",
        AFTER_UPLOAD="move",
        AFTER_UPLOAD_MOVE_DIR=str(moved),
        AFTER_UPLOAD_DELAY_SECONDS=DELAY_S,
    )
    data = {rel: recording(watch_dir, rel) for rel in ("cam/a.mp4", "cam/taken.mp4")}
    states: dict[str, StreamState] = {}
    for rel in data:
        states[rel] = await wait_completed(log, storage, watch_dir, rel)
    # A move that linked the file and died before the unlink.
    data["cam/linked.mp4"] = recording(watch_dir, "cam/linked.mp4")
    states["cam/linked.mp4"] = await wait_completed(log, storage, watch_dir, "cam/linked.mp4")
    os.link(watch_dir / "cam/linked.mp4", moved / "cam/linked.mp4")

    found = {rel: await wait_removed(log, rel) for rel in data}

    taken_id = states["cam/taken.mp4"].stream_id
    assert {rel: (e.how, e.moved_to) for rel, e in found.items()} == {
        "cam/a.mp4": ("moved", "cam/a.mp4"),
        "cam/taken.mp4": ("moved", f"cam/taken.{taken_id}.mp4"),
        "cam/linked.mp4": ("moved", "cam/linked.mp4"),
    }
    for rel, event in found.items():
        assert not (watch_dir / rel).exists()
        assert (moved / event.moved_to).read_bytes() == data[rel]
    assert (moved / "cam/taken.mp4").read_bytes() == b"an older recording"
    assert sorted(s.stream_id for s in await all_streams(log)) == sorted(
        s.stream_id for s in states.values()
    )


def test_a_move_dir_inside_watch_dir_stops_the_consumer_with_one_line(
    env: dict[str, str], tmp_path: Path, watch_dir: Path
) -> None:
    (watch_dir / "done").mkdir()
    bad = {**env, "AFTER_UPLOAD": "move", "AFTER_UPLOAD_MOVE_DIR": str(watch_dir / "done")}

    result = cefmp4(bad, "consumer", cwd=tmp_path)

    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("cefmp4: invalid setting AFTER_UPLOAD_MOVE_DIR: ")
    assert "must be outside WATCH_DIR" in line


@pytest.fixture
def other_filesystem(watch_dir: Path) -> Iterator[Path]:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == watch_dir.stat().st_dev:
        pytest.skip("no /dev/shm on another filesystem than the tests' temporary folder")
    folder = shm / f"cefmp4-moved-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder)


async def test_move_to_another_filesystem_copies_checks_then_unlinks(
    processes: Processes,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    other_filesystem: Path,
) -> None:
    processes.start("producer")
    processes.start(
        "consumer",
        AFTER_UPLOAD="move",
        AFTER_UPLOAD_MOVE_DIR=str(other_filesystem),
        AFTER_UPLOAD_DELAY_SECONDS="1",
    )
    data = recording(watch_dir, "cam/far.mp4", 6 * MIB)
    await wait_completed(log, storage, watch_dir, "cam/far.mp4")

    removed = await wait_removed(log, "cam/far.mp4")

    assert (removed.how, removed.moved_to) == ("moved", "cam/far.mp4")
    assert not (watch_dir / "cam/far.mp4").exists()
    assert (other_filesystem / "cam/far.mp4").read_bytes() == data
    assert [p.name for p in (other_filesystem / "cam").iterdir()] == ["far.mp4"]


async def completed_by_hand(
    log: EventLog, storage: Storage, watch_dir: Path, rel: str, at_ms: int
) -> bytes:
    """A recording uploaded and its steps logged as an uploader would, completed at `at_ms`."""
    data = recording(watch_dir, rel)
    st = (watch_dir / rel).stat()
    stream_id = uuid.uuid4().hex[:20]
    upload_id = await storage.create_upload(rel, stream_id)
    crc = zlib.crc32(data)
    etag = await storage.upload_part(rel, upload_id, 1, data, crc)
    final = await storage.complete(rel, upload_id, [SentPart(1, etag, crc)])
    events: list[AnyEvent] = [
        UploadStarted(
            at_ms=at_ms - 900,
            s3_key=rel,
            upload_id=upload_id,
            inode=st.st_ino,
            device=st.st_dev,
            size=st.st_size,
            stream_id=stream_id,
            path=rel,
        ),
        PartUploaded(
            at_ms=at_ms - 500,
            part_number=1,
            offset=0,
            length=len(data),
            crc32=crc,
            etag=etag,
            file_size=len(data),
            stream_id=stream_id,
            path=rel,
        ),
        StreamCompleted(
            at_ms=at_ms,
            size=len(data),
            etag=final,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            stream_id=stream_id,
            path=rel,
        ),
    ]
    return await append_all(log, events)


async def test_a_completion_folded_after_a_later_one_is_not_passed_over(
    log: EventLog, storage: Storage, settings: Settings, watch_dir: Path
) -> None:
    await log.ensure_groups()
    configured = settings.model_copy(
        update={"after_upload": "delete", "after_upload_delay_seconds": 1.0}
    )
    reclaimer = Reclaimer(configured, log, storage, watch_root(configured))
    now = now_ms()
    await project_until(
        log, await completed_by_hand(log, storage, watch_dir, "b.mp4", now - 10_000)
    )
    await reclaimer.tick()
    assert not (watch_dir / "b.mp4").exists()

    # Completed before b.mp4 by another uploader's clock, folded after it.
    await project_until(
        log, await completed_by_hand(log, storage, watch_dir, "a.mp4", now - 30_000)
    )
    await reclaimer.tick()

    assert not (watch_dir / "a.mp4").exists()
    assert {rel: e.how for rel, e in (await removals(log)).items()} == {
        "a.mp4": "deleted",
        "b.mp4": "deleted",
    }


async def test_failed_and_aborted_recordings_keep_their_files(
    log: EventLog, storage: Storage, settings: Settings, watch_dir: Path
) -> None:
    await log.ensure_groups()
    configured = settings.model_copy(
        update={"after_upload": "delete", "after_upload_delay_seconds": 0.0}
    )
    at_ms = now_ms() - 60_000
    events: list[AnyEvent] = []
    for rel, end in (("failed.mp4", StreamFailed), ("aborted.mp4", StreamAborted)):
        recording(watch_dir, rel)
        st = (watch_dir / rel).stat()
        stream_id = uuid.uuid4().hex[:20]
        events.append(
            UploadStarted(
                at_ms=at_ms,
                stream_id=stream_id,
                path=rel,
                s3_key=rel,
                upload_id="u",
                inode=st.st_ino,
                device=st.st_dev,
                size=st.st_size,
            )
        )
        events.append(end(at_ms=at_ms + 1, stream_id=stream_id, path=rel, reason="x"))
    # And one that completed, so the look surely ran.
    await append_all(log, events)
    last = await completed_by_hand(log, storage, watch_dir, "done.mp4", at_ms + 2)
    await project_until(log, last)

    await Reclaimer(configured, log, storage, watch_root(configured)).tick()

    assert (watch_dir / "failed.mp4").exists() and (watch_dir / "aborted.mp4").exists()
    assert set(await removals(log)) == {"done.mp4"}
