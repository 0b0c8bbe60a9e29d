"""The projection folds events into a stream's state: pure, deterministic, idempotent."""

from __future__ import annotations

import functools

import pytest
from msgspec.structs import replace

from cefmp4.common.events import (
    AbortRequested,
    AnyEvent,
    FileClosed,
    FileCreated,
    FileDeleted,
    FileIdle,
    FileWritten,
    FinalizeRequested,
    LocalFileRemoved,
    PartUploaded,
    StreamAborted,
    StreamCompleted,
    StreamFailed,
    StreamFinalizing,
    StreamRecognized,
    StreamsPruned,
    UploadRetriggered,
    UploadStarted,
)
from cefmp4.common.statestore import summary_of
from cefmp4.common.streamstate import PartRecord, StreamState
from cefmp4.consumer.fold import Fold, apply
from cefmp4.consumer.pass_decision import FileFacts, Leave, decide

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
    assert summary_of(state).uploaded_bytes == 10 * MIB
    assert summary_of(state).part_count == 2


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
    FileClosed(at_ms=7_000, path=PATH, size=1, mtime_ns=1, inode=42, device=7),
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


def test_file_closed_updates_size_of_an_active_stream_as_file_idle_does() -> None:
    closed = FileClosed(at_ms=2_600, path=PATH, size=6 * MIB, mtime_ns=3, inode=42, device=7)

    state = fold_state([started(size=10), closed])

    assert (state.size_bytes, state.updated_at_ms, state.status) == (6 * MIB, 2_600, "active")


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


def test_a_failure_records_when_and_as_what_file_it_may_be_tried_again() -> None:
    failed = StreamFailed(
        at_ms=6_000, stream_id=SID, path=PATH, reason="x", retry_at_ms=9_000, size=77, mtime_ns=5
    )
    state = fold_state([started(), failed])

    assert (state.retry_at_ms, state.size_bytes, state.mtime_ns) == (9_000, 77, 5)


def test_a_failure_with_no_file_keeps_the_last_size_known() -> None:
    gone = StreamFailed(at_ms=6_000, stream_id=SID, path=PATH, reason="file deleted")
    state = fold_state([started(size=123), gone])

    assert (state.size_bytes, state.mtime_ns, state.retry_at_ms) == (123, 0, 0)


def recognized(at_ms: int = 9_000, stream_id: str = "s-2") -> StreamRecognized:
    return StreamRecognized(
        at_ms=at_ms,
        stream_id=stream_id,
        path=PATH,
        s3_key=f"rec/{PATH}",
        inode=42,
        device=7,
        size=11 * MIB,
        mtime_ns=3,
        etag='"f"',
        made_by=SID,
    )


def test_a_recognized_file_is_a_completed_stream_with_nothing_uploaded() -> None:
    state = apply(None, recognized())

    assert state == StreamState(
        stream_id="s-2",
        path=PATH,
        s3_key=f"rec/{PATH}",
        upload_id="",
        status="completed",
        size_bytes=11 * MIB,
        inode=42,
        device=7,
        created_at_ms=9_000,
        updated_at_ms=9_000,
        completed_at_ms=9_000,
        mtime_ns=3,
        etag='"f"',
        reason=f"already in S3, uploaded by stream {SID}",
    )
    assert state.uploaded_bytes == 0
    # The same file seen once more is left alone, as after an upload.
    assert decide(state, FileFacts(42, 7, 11 * MIB, 3), 10_000) == Leave()
    assert summary_of(state).status == "completed"


def test_recognized_twice_or_with_late_steps_changes_nothing() -> None:
    once = fold_state([recognized()])

    assert fold_state([recognized(), recognized()]) == once
    assert (
        fold_state(
            [
                recognized(),
                written(5, 9_500),
                FinalizeRequested(at_ms=9_600, stream_id="s-2", path=PATH),
            ]
        )
        == once
    )


def test_after_its_stream_was_pruned_a_path_is_recognized_as_a_new_stream() -> None:
    fold = Fold()
    history: list[AnyEvent] = [
        *HISTORY,
        StreamsPruned(at_ms=5_000, stream_ids=(SID,)),
        recognized(),
        FileIdle(at_ms=9_100, path=PATH, size=11 * MIB, mtime_ns=3, inode=42, device=7),
    ]
    for n, event in enumerate(history):
        fold.add(f"{n + 1}-0".encode(), event)
    changes = fold.take_changes()

    # The projector drops the pruned stream's path, then points it at the new stream.
    assert changes.pruned == [(SID, PATH)]
    assert changes.paths == {PATH: "s-2"}
    [(state, parts)] = changes.streams
    assert (state.stream_id, state.status, state.parts, parts) == ("s-2", "completed", {}, set())
    assert state.last_event_id == f"{len(history) - 1}-0"


def test_a_completed_streams_file_removed_after_upload_is_recorded_once() -> None:
    completed = StreamCompleted(
        at_ms=9_000, stream_id=SID, path=PATH, size=5 * MIB, etag="e", mtime_ns=8, ctime_ns=7
    )
    state = fold_state([started(), part(1, 2_000), completed])
    removed = LocalFileRemoved(at_ms=10_000, stream_id=SID, path=PATH, how="deleted")

    assert state.ctime_ns == 7
    assert apply(state, removed) == replace(state, local_file="deleted", updated_at_ms=10_000)
    gone = LocalFileRemoved(at_ms=11_000, stream_id=SID, path=PATH, how="gone")
    assert fold([removed, removed, gone], state) == apply(state, removed)


def test_a_file_removed_is_never_recorded_for_a_stream_that_did_not_complete() -> None:
    failed = fold_state(
        [started(), StreamFailed(at_ms=3_000, stream_id=SID, path=PATH, reason="x")]
    )

    assert apply(failed, LocalFileRemoved(stream_id=SID, path=PATH, how="deleted")) == failed
