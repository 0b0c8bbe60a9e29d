"""The projection folds events into a stream's state: pure, deterministic, idempotent."""

from __future__ import annotations

import functools

import pytest
from msgspec.structs import replace

from common.events import (
    AbortRequested,
    AnyEvent,
    FileCreated,
    FileDeleted,
    FileIdle,
    FileWritten,
    FinalizeRequested,
    PartUploaded,
    StreamAborted,
    StreamCompleted,
    StreamFailed,
    StreamFinalizing,
    UploadRetriggered,
    UploadStarted,
)
from common.state import PartRecord, StreamState, state_from_hashes
from consumer.projection import apply

MIB = 1024 * 1024
SID = "s-1"
PATH = "cam1/2024-01-01.mp4"


def started(at_ms: int = 1_000, stream_id: str = SID, size: int = 0) -> UploadStarted:
    return UploadStarted(
        at_ms=at_ms,
        stream_id=stream_id,
        path=PATH,
        s3_key=f"rec/{PATH}",
        upload_id="upload-abc",
        inode=42,
        device=7,
        size=size,
    )


def part(number: int, at_ms: int, *, etag: str = "", length: int = 5 * MIB) -> PartUploaded:
    return PartUploaded(
        at_ms=at_ms,
        stream_id=SID,
        path=PATH,
        part_number=number,
        offset=(number - 1) * 5 * MIB,
        length=length,
        crc32=1000 + number,
        etag=etag or f'"etag-{number}"',
        file_size=number * 5 * MIB + 17,
    )


def written(size: int, at_ms: int) -> FileWritten:
    return FileWritten(
        at_ms=at_ms, path=PATH, size=size, mtime_ns=at_ms * 1_000_000, inode=42, device=7
    )


def fold(events: list[AnyEvent], state: StreamState | None = None) -> StreamState | None:
    return functools.reduce(apply, events, state)


def fold_state(events: list[AnyEvent]) -> StreamState:
    state = fold(events)
    assert state is not None
    return state


def test_upload_started_creates_an_active_state() -> None:
    state = apply(None, started(at_ms=1_000, size=123))

    assert state == StreamState(
        stream_id=SID,
        path=PATH,
        s3_key=f"rec/{PATH}",
        upload_id="upload-abc",
        status="active",
        size_bytes=123,
        inode=42,
        device=7,
        created_at_ms=1_000,
        updated_at_ms=1_000,
    )
    assert state.parts == {}
    assert state.uploaded_bytes == 0
    assert not state.terminal


def test_same_upload_started_twice_is_idempotent() -> None:
    once = apply(None, started())

    assert apply(once, started()) == once
    assert apply(once, started(at_ms=9_999, size=999)) == once


def test_part_uploaded_adds_the_part_and_its_bytes() -> None:
    state = fold_state([started(), part(1, 2_000), part(2, 3_000, length=MIB)])

    assert state.parts == {
        1: PartRecord(0, 5 * MIB, 1001, '"etag-1"'),
        2: PartRecord(5 * MIB, MIB, 1002, '"etag-2"'),
    }
    assert state.uploaded_bytes == 6 * MIB
    assert state.size_bytes == 2 * 5 * MIB + 17
    assert state.updated_at_ms == 3_000
    assert state.status == "active"


def test_resent_part_number_replaces_the_record_without_double_counting() -> None:
    state = fold_state(
        [started(), part(1, 2_000), part(2, 3_000), part(2, 4_000, etag='"etag-2-again"')]
    )

    assert len(state.parts) == 2
    assert state.parts[2].etag == '"etag-2-again"'
    assert state.uploaded_bytes == 10 * MIB
    assert state.scalar_fields()["uploaded_bytes"] == 10 * MIB
    assert state.scalar_fields()["part_count"] == 2


def test_stream_finalizing_sets_status_and_size() -> None:
    state = fold_state(
        [started(), StreamFinalizing(at_ms=5_000, stream_id=SID, path=PATH, size=777)]
    )

    assert (state.status, state.size_bytes, state.updated_at_ms) == ("finalizing", 777, 5_000)
    assert not state.terminal


def test_stream_completed_sets_status_size_etag_and_times() -> None:
    done = StreamCompleted(
        at_ms=6_000, stream_id=SID, path=PATH, size=888, etag='"final-2"', mtime_ns=55
    )
    state = fold_state([started(), part(1, 2_000), done])

    assert state.status == "completed"
    assert (state.size_bytes, state.etag, state.mtime_ns) == (888, '"final-2"', 55)
    assert (state.completed_at_ms, state.updated_at_ms) == (6_000, 6_000)
    assert state.terminal


@pytest.mark.parametrize(
    ("event", "status"),
    [
        (StreamFailed(at_ms=6_000, stream_id=SID, path=PATH, reason="file deleted"), "failed"),
        (StreamAborted(at_ms=6_000, stream_id=SID, path=PATH, reason="file deleted"), "aborted"),
    ],
)
def test_stream_failed_or_aborted_sets_status_and_reason(event: AnyEvent, status: str) -> None:
    state = fold_state([started(), event])

    assert (state.status, state.reason, state.updated_at_ms) == (status, "file deleted", 6_000)
    assert state.terminal


TERMINALS: list[AnyEvent] = [
    StreamCompleted(at_ms=6_000, stream_id=SID, path=PATH, size=10, etag='"e"', mtime_ns=1),
    StreamFailed(at_ms=6_000, stream_id=SID, path=PATH, reason="gone"),
    StreamAborted(at_ms=6_000, stream_id=SID, path=PATH, reason="gone"),
]

LATER: list[AnyEvent] = [
    part(3, 7_000),
    StreamFinalizing(at_ms=7_000, stream_id=SID, path=PATH, size=1),
    *TERMINALS,
    written(999, 7_000),
    FileCreated(at_ms=7_000, path=PATH, size=1, mtime_ns=1, inode=42, device=7),
    FileIdle(at_ms=7_000, path=PATH, size=1, mtime_ns=1, inode=42, device=7),
    FileDeleted(at_ms=7_000, path=PATH),
    FinalizeRequested(at_ms=7_000, stream_id=SID, path=PATH),
    UploadRetriggered(at_ms=7_000, stream_id=SID, path=PATH, size=1),
    AbortRequested(at_ms=7_000, stream_id=SID, path=PATH, reason="x"),
    started(at_ms=7_000),
]


@pytest.mark.parametrize("terminal", TERMINALS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("later", LATER, ids=lambda e: type(e).__name__)
def test_events_after_a_terminal_status_change_nothing(terminal: AnyEvent, later: AnyEvent) -> None:
    final = fold_state([started(), part(1, 2_000), terminal])

    assert apply(final, later) == final


def test_file_written_updates_size_of_an_active_stream() -> None:
    state = fold_state([started(size=10), written(4 * MIB, 2_500)])

    assert (state.size_bytes, state.updated_at_ms) == (4 * MIB, 2_500)
    assert state.status == "active"
    assert state.parts == {}


def test_file_written_updates_size_of_a_finalizing_stream() -> None:
    finalizing = StreamFinalizing(at_ms=2_000, stream_id=SID, path=PATH, size=100)
    state = fold_state([started(), finalizing, written(200, 3_000)])

    assert (state.status, state.size_bytes) == ("finalizing", 200)


@pytest.mark.parametrize(
    "event",
    [
        part(1, 2_000),
        written(5, 2_000),
        FileDeleted(at_ms=2_000, path=PATH),
        StreamCompleted(at_ms=2_000, stream_id=SID, path=PATH, size=1, etag='"e"', mtime_ns=1),
        StreamFailed(at_ms=2_000, stream_id=SID, path=PATH, reason="x"),
        FinalizeRequested(at_ms=2_000, stream_id=SID, path=PATH),
        AbortRequested(at_ms=2_000, stream_id=SID, path=PATH, reason="x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_events_before_upload_started_give_no_state(event: AnyEvent) -> None:
    assert apply(None, event) is None


@pytest.mark.parametrize(
    "event",
    [
        FileDeleted(at_ms=2_000, path=PATH),
        FinalizeRequested(at_ms=2_000, stream_id=SID, path=PATH),
        UploadRetriggered(at_ms=2_000, stream_id=SID, path=PATH, size=1),
        AbortRequested(at_ms=2_000, stream_id=SID, path=PATH, reason="x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_requests_and_deletions_alone_leave_an_active_state_unchanged(event: AnyEvent) -> None:
    state = fold_state([started(), part(1, 1_500)])

    assert apply(state, event) == state


HISTORY: list[AnyEvent] = [
    started(at_ms=1_000),
    written(6 * MIB, 1_100),
    part(1, 1_200),
    written(11 * MIB, 1_300),
    part(2, 1_400),
    FileIdle(at_ms=1_500, path=PATH, size=11 * MIB, mtime_ns=3, inode=42, device=7),
    FinalizeRequested(at_ms=1_600, stream_id=SID, path=PATH),
    StreamFinalizing(at_ms=1_700, stream_id=SID, path=PATH, size=11 * MIB),
    part(3, 1_800, length=MIB),
    StreamCompleted(at_ms=1_900, stream_id=SID, path=PATH, size=11 * MIB, etag='"f"', mtime_ns=3),
]


def test_fold_of_a_whole_history_is_deterministic() -> None:
    first = fold_state(list(HISTORY))
    second = fold_state(list(HISTORY))

    assert first == second
    assert first.status == "completed"
    assert sorted(first.parts) == [1, 2, 3]
    assert first.uploaded_bytes == 11 * MIB
    assert first.size_bytes == 11 * MIB


def test_duplicate_part_uploaded_right_after_itself_changes_nothing() -> None:
    events: list[AnyEvent] = [started(), part(1, 2_000), part(2, 3_000)]
    with_duplicate = [*events, part(2, 3_000)]

    assert fold_state(with_duplicate) == fold_state(events)


@pytest.mark.parametrize("index", range(len(HISTORY)))
def test_every_event_of_a_history_delivered_twice_in_a_row_changes_nothing(index: int) -> None:
    doubled = [*HISTORY[: index + 1], HISTORY[index], *HISTORY[index + 1 :]]

    assert fold_state(doubled) == fold_state(list(HISTORY))


def test_duplicate_part_uploaded_after_later_parts_changes_nothing() -> None:
    events: list[AnyEvent] = [started(), part(1, 2_000), part(2, 3_000)]
    with_late_duplicate = [*events, part(1, 2_000)]

    assert fold_state(with_late_duplicate) == fold_state(events)


@pytest.mark.parametrize("history_length", [1, 3, 5, 8, len(HISTORY)])
def test_state_round_trips_through_the_redis_hash_layout(history_length: int) -> None:
    state = fold_state(HISTORY[:history_length])
    state = replace(
        state,
        path="sub/ünï cödé, 1.mp4",
        reason="a, b",
        last_event_id="1700000000000-3",
        parts={
            **state.parts,
            9: PartRecord(1, 2, 3, '"etag,with,commas"'),
            10: PartRecord(4, 5, 6, '"etag,with,commas"', ctime_ns=1_700_000_000_123_456_789),
        },
    )
    scalar_hash = {
        name.encode(): str(value).encode() for name, value in state.scalar_fields().items()
    }
    parts_hash = {str(n).encode(): record.encode().encode() for n, record in state.parts.items()}

    assert state_from_hashes(scalar_hash, parts_hash) == state


def test_empty_stream_hash_is_no_state() -> None:
    assert state_from_hashes({}, {}) is None
