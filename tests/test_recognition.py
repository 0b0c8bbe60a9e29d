"""Nothing is uploaded twice because its stream was pruned: each completed object carries a
content tag, and a file seen again whose object matches it is recorded as complete."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cefmp4.common.config import CONTENT_TAG
from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import (
    AnyEvent,
    FileIdle,
    StreamCompleted,
    StreamRecognized,
    StreamsPruned,
    UploadStarted,
    decode,
)
from cefmp4.common.s3 import ObjectFacts, Storage
from cefmp4.common.statestore import StateReader
from cefmp4.common.streamstate import StreamState
from cefmp4.consumer.pruner import Pruner
from cefmp4.consumer.recognition import ContentIdentity, matches
from cefmp4.consumer.replay import replay
from cefmp4.status import gather
from tests.conftest import Processes, Services, eventually
from tests.s3edge import s3_edge
from tests.test_pipeline import assert_nothing_open, wait_completed
from tests.test_projector import append_all, project_until, state_dump
from tests.test_retention import delete_state

# 1,000 recordings take about a minute on a quiet 2-core box, two on a busy one.
RECORDINGS = 1_000
KEEP = "3600"  # FINISHED_STREAM_RETENTION_SECONDS once the files were seen again


def start_consumer(processes: Processes, retention_s: str) -> None:
    """A consumer made for many small files: more of them at once, no sidecars."""
    processes.start(
        "consumer",
        FINISHED_STREAM_RETENTION_SECONDS=retention_s,
        METADATA_SIDECAR="false",
        UPLOAD_CONCURRENCY="16",
    )


def write_recordings(watch_dir: Path, count: int) -> dict[str, bytes]:
    """`count` small files in 10 camera folders, each with its own bytes."""
    files: dict[str, bytes] = {}
    for n in range(count):
        rel = f"cam{n % 10}/rec{n:04d}.mp4"
        files[rel] = f"recording {n} ".encode() * (50 + n % 7)
        (watch_dir / rel).parent.mkdir(exist_ok=True)
        (watch_dir / rel).write_bytes(files[rel])
    return files


async def events_after(log: EventLog, entry_id: str) -> list[AnyEvent]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await log.redis.xrange(  # type: ignore[assignment]
        log.keys.events, min=f"({entry_id}"
    )
    return [decode(fields) for _, fields in entries]


async def last_entry(log: EventLog) -> str:
    info = await log.info()
    assert info.last_event_id is not None
    return info.last_event_id


async def wait_pruned(log: EventLog, count: int, timeout_s: float) -> None:
    reader = StateReader(log.redis, log.keys)

    async def pruned() -> bool:
        return await reader.pruned_count() >= count and await reader.stream_count() == 0

    await eventually(pruned, timeout_s, f"{count} finished streams pruned")


async def latest_streams(log: EventLog, paths: list[str]) -> dict[str, StreamState]:
    return await StateReader(log.redis, log.keys).latest_of(paths)


async def objects(storage: Storage, paths: list[str]) -> dict[str, ObjectFacts]:
    """What HeadObject says of each path's object (no S3_KEY_PREFIX here: the key is the path)."""
    found: dict[str, ObjectFacts] = {}
    for rel in paths:
        facts = await storage.object_facts(rel)
        assert facts is not None, rel
        found[rel] = facts
    return found


@pytest.mark.timeout(600)
async def test_a_producer_restart_over_pruned_recordings_uploads_none_of_them_again(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    processes.start("producer")
    start_consumer(processes, "1")
    files = write_recordings(watch_dir, RECORDINGS)
    paths = sorted(files)
    started_s = time.monotonic()
    await wait_pruned(log, RECORDINGS, 400)
    uploaded_s = time.monotonic() - started_s
    for rel, data in files.items():
        assert await storage.read_object(rel) == data
    before = await objects(storage, paths)
    tags = await storage.object_tags(paths[0])
    identity = ContentIdentity.from_tag(tags[CONTENT_TAG])
    st = (watch_dir / paths[0]).stat()
    assert identity == ContentIdentity(
        st.st_size, st.st_mtime_ns, before[paths[0]].crc32, before[paths[0]].stream_id
    )

    # Kept this time, so that the streams can be seen; then the producer rescans everything.
    processes.stop("consumer")
    start_consumer(processes, KEEP)
    restart_at = await last_entry(log)
    processes.restart("producer")
    started_s = time.monotonic()

    async def all_recognized() -> bool:
        latest = await latest_streams(log, paths)
        return len(latest) == RECORDINGS and all(s.status == "completed" for s in latest.values())

    await eventually(all_recognized, 300, "every recording recorded as completed again")
    recognized_s = time.monotonic() - started_s
    print(
        f"{RECORDINGS} uploaded and pruned in {uploaded_s:.1f}s, recognized in {recognized_s:.1f}s"
    )

    await eventually(lambda: _idle_seen(log, restart_at, RECORDINGS), 300, "every FileIdle read")
    since = await events_after(log, restart_at)
    assert [e for e in since if isinstance(e, UploadStarted)] == []
    assert sorted(e.path for e in since if isinstance(e, StreamRecognized)) == paths
    assert await objects(storage, paths) == before  # same ETag, LastModified, stream id
    latest = await latest_streams(log, paths)
    assert {s.upload_id for s in latest.values()} == {""}
    report = await gather(log, finished=RECORDINGS)
    assert report.totals["completed"] == RECORDINGS
    shown = {s.path: s for s in report.streams}
    assert shown[paths[0]].status == "completed" and shown[paths[0]].progress == 1.0
    await assert_nothing_open(storage)


async def _idle_seen(log: EventLog, after: str, count: int) -> bool:
    """Whether the uploaders acknowledged every FileIdle of the rescan (their passes ran)."""
    since = await events_after(log, after)
    idle = sum(isinstance(e, FileIdle) for e in since)
    groups = {g.name: g for g in await log.groups()}
    return idle >= count and groups["uploaders"].pending == 0


async def test_a_file_changed_after_its_stream_was_pruned_is_uploaded_again(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    processes.start("producer")
    start_consumer(processes, "1")
    content = {name: name.encode() * 20_000 for name in ("same", "touched", "rewritten", "grown")}
    for name, data in content.items():
        (watch_dir / f"{name}.mp4").write_bytes(data)
    await wait_pruned(log, len(content), 60)
    before = await objects(storage, [f"{name}.mp4" for name in content])

    processes.stop("producer")
    processes.stop("consumer")
    touched = watch_dir / "touched.mp4"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # same bytes
    rewritten = watch_dir / "rewritten.mp4"
    rewritten.write_bytes(content["rewritten"].upper())  # same size
    with (watch_dir / "grown.mp4").open("ab") as grown:
        grown.write(b"more")
    restart_at = await last_entry(log)
    start_consumer(processes, KEEP)
    processes.start("producer")

    for name in ("touched", "rewritten", "grown"):
        state = await wait_completed(log, storage, watch_dir, f"{name}.mp4")
        assert state.upload_id != ""
        after = await storage.object_facts(f"{name}.mp4")
        assert (
            after is not None
            and after.stream_id == state.stream_id != before[f"{name}.mp4"].stream_id
        )
    same = await wait_completed(log, storage, watch_dir, "same.mp4")
    assert same.upload_id == ""
    assert await storage.object_facts("same.mp4") == before["same.mp4"]
    since = await events_after(log, restart_at)
    assert sorted(e.path for e in since if isinstance(e, UploadStarted)) == [
        "grown.mp4",
        "rewritten.mp4",
        "touched.mp4",
    ]
    await assert_nothing_open(storage)


def warnings_per_consumer(processes: Processes, text: str) -> list[int]:
    """How often each consumer process started so far logged `text`."""
    logs = sorted(processes.log_dir.glob("*-consumer.log"), key=lambda p: int(p.name.split("-")[0]))
    return [path.read_text(errors="replace").count(text) for path in logs]


@pytest.mark.parametrize(("code", "status"), [("AccessDenied", 403), ("NotImplemented", 501)])
async def test_with_tagging_refused_objects_complete_and_files_seen_again_are_uploaded_again(
    processes: Processes,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    services: Services,
    code: str,
    status: int,
) -> None:
    names = ["a.mp4", "b.mp4"]
    async with s3_edge(services.s3_endpoint_url) as edge:
        for operation in ("GetObjectTagging", "PutObjectTagging"):
            edge.refuse(operation, code, status)
        processes.start("producer")
        processes.start("consumer", S3_ENDPOINT_URL=edge.url, FINISHED_STREAM_RETENTION_SECONDS="1")
        for name in names:
            (watch_dir / name).write_bytes(name.encode() * 100_000)
        await wait_pruned(log, len(names), 60)
        for name in names:
            assert await storage.read_object(name) == (watch_dir / name).read_bytes()
        before = await objects(storage, names)
        assert edge.count("PutObjectTagging") == 0

        processes.stop("consumer")
        processes.start(
            "consumer", S3_ENDPOINT_URL=edge.url, FINISHED_STREAM_RETENTION_SECONDS=KEEP
        )
        tagging_calls = edge.count("GetObjectTagging")
        restart_at = await last_entry(log)
        processes.restart("producer")
        for name in names:
            state = await wait_completed(log, storage, watch_dir, name)
            assert state.upload_id != ""  # uploaded again, as before tags
        after = await objects(storage, names)

    assert all(after[name].stream_id != before[name].stream_id for name in names)
    since = await events_after(log, restart_at)
    assert sorted(e.path for e in since if isinstance(e, UploadStarted)) == names
    # One warning a process, and then no more asking.
    assert warnings_per_consumer(processes, "S3 refuses object tagging") == [1, 1]
    assert edge.count("PutObjectTagging") == 0
    assert edge.count("GetObjectTagging") - tagging_calls <= len(names)
    assert await storage.object_tags("a.mp4") == {}
    await assert_nothing_open(storage)


async def test_a_tagging_error_leaves_the_recording_complete_and_a_passing_one_is_retried(
    processes: Processes,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    services: Services,
) -> None:
    async with s3_edge(services.s3_endpoint_url) as edge:
        edge.refuse("PutObjectTagging", "ServiceUnavailable", 503)
        processes.start("producer")
        processes.start("consumer", S3_ENDPOINT_URL=edge.url)
        (watch_dir / "a.mp4").write_bytes(b"a" * 300_000)
        await wait_completed(log, storage, watch_dir, "a.mp4")
        assert await storage.object_tags("a.mp4") == {}

        edge.allow_all()
        edge.refuse("PutObjectTagging", "ServiceUnavailable", 503, times=1)
        (watch_dir / "b.mp4").write_bytes(b"b" * 300_000)
        await wait_completed(log, storage, watch_dir, "b.mp4")

    st = (watch_dir / "b.mp4").stat()
    tagged = ContentIdentity.from_tag((await storage.object_tags("b.mp4")).get(CONTENT_TAG))
    assert tagged is not None and (tagged.size, tagged.mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert warnings_per_consumer(processes, "cannot tag a.mp4 with its content") == [1]
    assert warnings_per_consumer(processes, "S3 refuses object tagging") == [0]


def test_a_content_tag_is_read_back_and_matches_only_its_own_object_and_file() -> None:
    identity = ContentIdentity(1234, 1_700_000_000_123_456_789, "hiRQdA==-3", "s-1")
    facts = ObjectFacts(size=1234, etag='"e-3"', stream_id="s-1", crc32="hiRQdA==-3")

    assert ContentIdentity.from_tag(identity.tag_value()) == identity
    assert matches(identity, facts, 1234, 1_700_000_000_123_456_789)
    assert not matches(identity, facts, 1234, 1_700_000_000_123_456_790)  # touched
    assert not matches(identity, facts, 1235, 1_700_000_000_123_456_789)  # grown
    assert not matches(identity, facts._replace(stream_id="s-2"), 1234, identity.mtime_ns)
    assert not matches(identity, facts._replace(crc32="AAAAAA==-3"), 1234, identity.mtime_ns)
    assert not matches(None, facts, 1234, identity.mtime_ns)
    for value in (None, "", "v2:1:2:c:s", "v1:x:2:c:s", "v1:1:2:c:", "v1:1:2:c"):
        assert ContentIdentity.from_tag(value) is None


async def test_a_recognized_stream_is_projected_and_replayed_as_a_completed_one(
    log: EventLog,
) -> None:
    await log.ensure_groups()
    path = "cam1/rec.mp4"
    events: list[AnyEvent] = [
        UploadStarted(
            stream_id="s1", path=path, s3_key=path, upload_id="u", inode=1, device=1, size=0
        ),
        StreamCompleted(stream_id="s1", path=path, size=10, etag='"e"', mtime_ns=7),
        StreamsPruned(stream_ids=("s1",)),
        StreamRecognized(
            stream_id="s2",
            path=path,
            s3_key=path,
            inode=1,
            device=1,
            size=10,
            mtime_ns=7,
            etag='"e"',
            made_by="s1",
        ),
    ]
    last_id = await append_all(log, events)
    await project_until(log, last_id)
    reader = StateReader(log.redis, log.keys)

    state = await reader.latest(path)
    assert state is not None
    assert (state.stream_id, state.status, state.upload_id, state.parts) == (
        "s2",
        "completed",
        "",
        {},
    )
    assert await reader.count_by_status() == {
        "active": 0,
        "finalizing": 0,
        "completed": 1,
        "failed": 0,
        "aborted": 0,
    }
    projected = await state_dump(log)
    await delete_state(log)
    await replay(log)
    assert await state_dump(log) == projected
    # And it is pruned like any completed stream.
    assert await Pruner(log, retention_s=0.001).due() == ["s2"]
