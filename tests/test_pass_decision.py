"""What a pass does with a path's latest stream, from the file on disk (pure logic)."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from cefmp4.common.events import (
    NEVER,
    AbortRequested,
    AnyEvent,
    FileClosed,
    FileCreated,
    FileDeleted,
    FileIdle,
    FileWritten,
    FinalizeRequested,
    PartUploaded,
    RetryRequested,
    StreamCompleted,
    StreamRecognized,
    UploadRetriggered,
)
from cefmp4.common.streamstate import PartRecord, StreamState
from cefmp4.consumer.pass_decision import (
    Fail,
    FileFacts,
    Leave,
    Mode,
    Restart,
    Send,
    Start,
    decide,
    mode_for,
)

MIB = 1024 * 1024
NOW = 1_000_000
OPEN = StreamState(
    stream_id="s-1",
    path="cam/rec.mp4",
    s3_key="cam/rec.mp4",
    upload_id="u-1",
    status="active",
    size_bytes=12 * MIB,
    inode=42,
    device=7,
    created_at_ms=1,
    updated_at_ms=2,
    parts={1: PartRecord(0, 5 * MIB, 1, '"a"'), 2: PartRecord(5 * MIB, 5 * MIB, 2, '"b"')},
)
COMPLETED = replace(OPEN, status="completed", mtime_ns=99)


def file(size: int, *, inode: int = 42, mtime_ns: int = 99) -> FileFacts:
    return FileFacts(inode=inode, device=7, size=size, mtime_ns=mtime_ns)


def test_a_new_file_starts_a_stream() -> None:
    assert decide(None, file(MIB), NOW) == Start()


def test_no_file_and_no_stream_leaves_it() -> None:
    assert decide(None, None, NOW) == Leave()
    assert decide(COMPLETED, None, NOW) == Leave()


def test_a_file_deleted_while_recording_fails_its_stream() -> None:
    assert decide(OPEN, None, NOW) == Fail("file deleted while recording")


def test_a_file_growing_under_its_open_stream_is_sent() -> None:
    assert decide(OPEN, file(20 * MIB), NOW) == Send()
    assert decide(OPEN, file(10 * MIB), NOW) == Send()  # exactly what was sent


def test_a_file_shorter_than_what_was_sent_restarts() -> None:
    assert decide(OPEN, file(10 * MIB - 1), NOW) == Restart("file truncated")


def test_another_file_under_the_same_name_restarts() -> None:
    assert decide(OPEN, file(20 * MIB, inode=43), NOW) == Restart("file replaced by a new one")


def test_a_completed_stream_stands_while_the_file_is_as_it_was() -> None:
    assert decide(COMPLETED, file(12 * MIB), NOW) == Leave()


@pytest.mark.parametrize(
    "changed", [file(13 * MIB), file(12 * MIB, mtime_ns=100), file(12 * MIB, inode=43)]
)
def test_a_completed_stream_is_followed_by_a_new_one_when_the_file_changed(
    changed: FileFacts,
) -> None:
    assert decide(COMPLETED, changed, NOW) == Start()


def test_an_aborted_stream_never_stands() -> None:
    assert decide(replace(OPEN, status="aborted"), file(12 * MIB), NOW) == Start()


def test_a_failed_stream_waits_for_its_retry_time_while_the_file_is_as_it_was() -> None:
    failed = replace(OPEN, status="failed", mtime_ns=99, retry_at_ms=NOW + 1)

    assert decide(failed, file(12 * MIB), NOW) == Leave()
    assert decide(failed, file(12 * MIB), NOW + 1) == Start()


@pytest.mark.parametrize(
    "changed", [file(13 * MIB), file(12 * MIB, mtime_ns=100), file(12 * MIB, inode=43)]
)
def test_a_failed_file_that_changed_or_was_touched_starts_at_once(changed: FileFacts) -> None:
    failed = replace(OPEN, status="failed", mtime_ns=99, retry_at_ms=NOW + 60_000)

    assert decide(failed, changed, NOW) == Start()


def test_a_final_failure_stands_until_the_file_changes_or_a_user_asks() -> None:
    final = replace(OPEN, status="failed", mtime_ns=99, retry_at_ms=NEVER)

    assert decide(final, file(12 * MIB), NOW + 10**9) == Leave()
    assert decide(final, file(12 * MIB), NOW, by_hand=True) == Start()
    assert decide(final, file(13 * MIB), NOW) == Start()


def test_a_file_deleted_then_back_as_it_was_starts_again() -> None:
    # A file gone while recording fails its stream with the retry time of that moment.
    gone = replace(OPEN, status="failed", retry_at_ms=NOW)

    assert decide(gone, None, NOW) == Leave()
    assert decide(gone, file(12 * MIB), NOW) == Start()


PATH = "cam/rec.mp4"


@pytest.mark.parametrize(
    ("event", "mode"),
    [
        (FileCreated(path=PATH, size=1, mtime_ns=1, inode=1, device=1), Mode.SYNC),
        (FileWritten(path=PATH, size=1, mtime_ns=1, inode=1, device=1), Mode.SYNC),
        (FileDeleted(path=PATH), Mode.SYNC),
        (UploadRetriggered(stream_id="s", path=PATH, size=1), Mode.SYNC),
        (AbortRequested(stream_id="s", path=PATH, reason="x"), Mode.SYNC),
        (FileIdle(path=PATH, size=1, mtime_ns=1, inode=1, device=1), Mode.FINAL),
        (FileClosed(path=PATH, size=1, mtime_ns=1, inode=1, device=1), Mode.FINAL),
        (FinalizeRequested(stream_id="s", path=PATH), Mode.FINAL),
        (RetryRequested(stream_id="s", path=PATH), Mode.FINAL),
        (RetryRequested(stream_id="s", path=PATH, by_hand=True), Mode.RETRY),
        (
            PartUploaded(
                stream_id="s",
                path=PATH,
                part_number=1,
                offset=0,
                length=1,
                crc32=1,
                etag="e",
                file_size=1,
            ),
            None,
        ),
        (StreamCompleted(stream_id="s", path=PATH, size=1, etag="e", mtime_ns=1), None),
        (
            StreamRecognized(
                stream_id="s",
                path=PATH,
                s3_key=PATH,
                inode=1,
                device=1,
                size=1,
                mtime_ns=1,
                etag="e",
                made_by="s0",
            ),
            None,
        ),
    ],
)
def test_file_events_and_requests_ask_for_passes_and_records_for_none(
    event: AnyEvent, mode: Mode | None
) -> None:
    assert mode_for(event) == mode
