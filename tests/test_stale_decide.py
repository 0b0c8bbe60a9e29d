"""What the stale checker asks for a quiet stream, from its file's size on disk."""

from __future__ import annotations

import os
from pathlib import Path

from cefmp4.common.config import Settings
from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import (
    AbortRequested,
    FinalizeRequested,
    StreamFailed,
    StreamRecognized,
    UploadRetriggered,
    UploadStarted,
)
from cefmp4.consumer.stale import Open, StaleChecker, decide

MIB = 1024 * 1024
PART = 5 * MIB
SID = "stream-1"
REL = "cam/rec.mp4"


def stat_of_size(tmp_path: Path, size: int) -> os.stat_result:
    path = tmp_path / "rec.mp4"
    path.touch()
    os.truncate(path, size)  # sparse: no bytes written
    return os.stat(path)


def sent(sent_bytes: int, next_part: int) -> Open:
    return Open(path=REL, sent_bytes=sent_bytes, next_part=next_part, last_activity_s=0.0)


def test_missing_file_asks_for_abort() -> None:
    decision = decide(SID, sent(2 * PART, 3), None, PART)

    assert decision == AbortRequested(
        at_ms=decision.at_ms, stream_id=SID, path=REL, reason="file missing"
    )


def test_file_smaller_than_what_was_sent_asks_for_abort(tmp_path: Path) -> None:
    decision = decide(SID, sent(2 * PART, 3), stat_of_size(tmp_path, 2 * PART - 1), PART)

    assert decision == AbortRequested(
        at_ms=decision.at_ms, stream_id=SID, path=REL, reason="file truncated"
    )


def test_file_equal_to_what_was_sent_asks_for_finalize(tmp_path: Path) -> None:
    decision = decide(SID, sent(2 * PART, 3), stat_of_size(tmp_path, 2 * PART), PART)

    assert decision == FinalizeRequested(at_ms=decision.at_ms, stream_id=SID, path=REL)


def test_file_bigger_by_less_than_a_part_asks_for_finalize(tmp_path: Path) -> None:
    decision = decide(SID, sent(2 * PART, 3), stat_of_size(tmp_path, 3 * PART - 1), PART)

    assert decision == FinalizeRequested(at_ms=decision.at_ms, stream_id=SID, path=REL)


def test_file_bigger_by_a_whole_part_asks_to_upload_again(tmp_path: Path) -> None:
    decision = decide(SID, sent(2 * PART, 3), stat_of_size(tmp_path, 3 * PART), PART)

    assert decision == UploadRetriggered(
        at_ms=decision.at_ms, stream_id=SID, path=REL, size=3 * PART
    )


def test_empty_stream_with_an_empty_file_asks_for_finalize(tmp_path: Path) -> None:
    decision = decide(SID, sent(0, 1), stat_of_size(tmp_path, 0), PART)

    assert isinstance(decision, FinalizeRequested)


def test_whole_part_is_measured_with_the_next_parts_size(tmp_path: Path) -> None:
    # part 901 starts the second tier, where parts are twice the base size
    st = stat_of_size(tmp_path, PART + 1)

    assert isinstance(decide(SID, sent(0, 1), st, PART), UploadRetriggered)
    assert isinstance(decide(SID, sent(0, 901), st, PART), FinalizeRequested)


def test_a_failed_recording_recognized_in_s3_is_not_retried_any_more(
    settings: Settings, log: EventLog
) -> None:
    checker = StaleChecker(settings, log, "c1")
    checker.observe(
        UploadStarted(
            stream_id=SID, path=REL, s3_key=REL, upload_id="u", inode=1, device=1, size=0
        ),
        0.0,
    )
    checker.observe(StreamFailed(stream_id=SID, path=REL, reason="x", retry_at_ms=5_000), 1.0)
    assert REL in checker.retries

    recognized = StreamRecognized(
        stream_id="stream-2",
        path=REL,
        s3_key=REL,
        inode=1,
        device=1,
        size=10,
        mtime_ns=7,
        etag='"e"',
        made_by="stream-0",
    )
    checker.observe(recognized, 2.0)

    assert checker.retries == {}
    assert checker.open == {}
    assert checker.by_path == {}
