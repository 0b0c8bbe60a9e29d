"""The tracker turns successive looks at real files into few, meaningful file events."""

from __future__ import annotations

import os
from pathlib import Path

from cefmp4.common.events import FileClosed, FileCreated, FileDeleted, FileIdle, FileWritten
from cefmp4.producer.tracker import Tracker

REL = "cam/rec.mp4"
PART = 4  # tiny parts, so a few bytes make a whole part


def write(path: Path, data: bytes) -> os.stat_result:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return os.stat(path)


def append(path: Path, data: bytes) -> os.stat_result:
    with path.open("ab") as f:
        f.write(data)
    return os.stat(path)


def test_first_look_gives_file_created(tmp_path: Path) -> None:
    st = write(tmp_path / REL, b"x" * 100)

    event = Tracker(idle_after_s=5, part_bytes=PART).look(REL, st, now_s=0.0)

    assert isinstance(event, FileCreated)
    assert (event.path, event.size, event.mtime_ns, event.inode, event.device) == (
        REL,
        100,
        st.st_mtime_ns,
        st.st_ino,
        st.st_dev,
    )


def test_unchanged_look_gives_nothing(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5, part_bytes=PART)
    tracker.look(REL, write(path, b"abc"), now_s=0.0)

    assert tracker.look(REL, os.stat(path), now_s=1.0) is None
    assert tracker.look(REL, os.stat(path), now_s=2.0) is None


def test_append_gives_one_file_written_with_the_new_size(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5, part_bytes=PART)
    tracker.look(REL, write(path, b"abc"), now_s=0.0)

    st = append(path, b"defg")
    event = tracker.look(REL, st, now_s=1.0)

    assert isinstance(event, FileWritten)
    assert (event.path, event.size, event.inode) == (REL, 7, st.st_ino)
    assert tracker.look(REL, os.stat(path), now_s=1.5) is None


def test_many_appends_between_two_looks_coalesce_into_one_file_written(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5, part_bytes=PART)
    tracker.look(REL, write(path, b"start"), now_s=0.0)

    for _ in range(50):
        append(path, b"0123456789")
    events = [tracker.look(REL, os.stat(path), now_s=t) for t in (1.0, 1.1, 1.2)]

    assert isinstance(events[0], FileWritten)
    assert events[0].size == 5 + 50 * 10
    assert events[1:] == [None, None]


def test_idle_only_after_idle_after_s_since_the_last_change(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5, part_bytes=PART)
    tracker.look(REL, write(path, b"abc"), now_s=100.0)

    assert tracker.idle(REL, now_s=100.0) is None
    assert tracker.idle(REL, now_s=104.9) is None
    idle = tracker.idle(REL, now_s=105.0)

    assert isinstance(idle, FileIdle)
    assert (idle.path, idle.size, idle.inode) == (REL, 3, os.stat(path).st_ino)


def test_idle_is_reported_once_until_the_file_changes_again(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5, part_bytes=PART)
    tracker.look(REL, write(path, b"abc"), now_s=0.0)
    assert isinstance(tracker.idle(REL, now_s=10.0), FileIdle)

    assert tracker.idle(REL, now_s=20.0) is None
    assert tracker.look(REL, os.stat(path), now_s=21.0) is None
    assert tracker.idle(REL, now_s=30.0) is None
    assert tracker.busy_paths() == []

    assert isinstance(tracker.look(REL, append(path, b"more"), now_s=40.0), FileWritten)
    assert tracker.busy_paths() == [REL]
    assert tracker.idle(REL, now_s=44.0) is None
    again = tracker.idle(REL, now_s=45.0)
    assert isinstance(again, FileIdle)
    assert again.size == 7


def test_idle_of_an_unknown_path_is_nothing() -> None:
    assert Tracker(idle_after_s=5, part_bytes=PART).idle("never/seen.mp4", now_s=1e9) is None


def test_deleted_file_gives_file_deleted_once(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5, part_bytes=PART)
    tracker.look(REL, write(path, b"abc"), now_s=0.0)
    path.unlink()

    first = tracker.look(REL, None, now_s=1.0)

    assert isinstance(first, FileDeleted)
    assert first.path == REL
    assert tracker.look(REL, None, now_s=2.0) is None
    assert tracker.idle(REL, now_s=100.0) is None
    assert tracker.busy_paths() == []


def test_never_seen_missing_file_gives_nothing() -> None:
    assert Tracker(idle_after_s=5, part_bytes=PART).look(REL, None, now_s=0.0) is None


def test_file_recreated_after_deletion_gives_file_created(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5, part_bytes=PART)
    tracker.look(REL, write(path, b"abc"), now_s=0.0)
    path.unlink()
    tracker.look(REL, None, now_s=1.0)

    event = tracker.look(REL, write(path, b"abc"), now_s=2.0)

    assert isinstance(event, FileCreated)
    assert event.size == 3


def test_replaced_file_gives_file_created(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5, part_bytes=PART)
    old = write(path, b"old content, long")
    tracker.look(REL, old, now_s=0.0)

    replacement = tmp_path / "cam" / "rec.mp4.tmp"
    write(replacement, b"new")
    os.replace(replacement, path)
    st = os.stat(path)
    event = tracker.look(REL, st, now_s=1.0)

    assert st.st_ino != old.st_ino
    assert isinstance(event, FileCreated)
    assert (event.size, event.inode) == (3, st.st_ino)
    assert tracker.look(REL, os.stat(path), now_s=2.0) is None


def test_paths_are_tracked_independently(tmp_path: Path) -> None:
    tracker = Tracker(idle_after_s=5, part_bytes=PART)
    a = tracker.look("a.mp4", write(tmp_path / "a.mp4", b"a"), now_s=0.0)
    b = tracker.look("b.mp4", write(tmp_path / "b.mp4", b"bb"), now_s=3.0)

    assert isinstance(a, FileCreated)
    assert isinstance(b, FileCreated)
    assert sorted(tracker.busy_paths()) == ["a.mp4", "b.mp4"]
    assert isinstance(tracker.idle("a.mp4", now_s=5.0), FileIdle)
    assert tracker.idle("b.mp4", now_s=5.0) is None
    assert tracker.busy_paths() == ["b.mp4"]


def test_growth_within_a_part_gives_no_event_until_a_whole_part_more(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5, part_bytes=10)
    tracker.look(REL, write(path, b"12345"), now_s=0.0)  # 0 whole parts

    assert tracker.look(REL, append(path, b"1234"), now_s=1.0) is None  # 9 bytes: still 0
    event = tracker.look(REL, append(path, b"12"), now_s=2.0)  # 11 bytes: one whole part

    assert isinstance(event, FileWritten) and event.size == 11


def test_at_most_one_file_written_a_second_and_the_late_one_still_comes(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5, part_bytes=10)
    tracker.look(REL, write(path, b""), now_s=0.0)
    first = tracker.look(REL, append(path, b"x" * 10), now_s=1.0)

    held = tracker.look(REL, append(path, b"x" * 10), now_s=1.5)  # a part more, too soon
    late = tracker.look(REL, os.stat(path), now_s=2.0)  # unchanged, but its second has come

    assert isinstance(first, FileWritten) and first.size == 10
    assert held is None
    assert isinstance(late, FileWritten) and late.size == 20
    assert tracker.look(REL, os.stat(path), now_s=3.0) is None


def test_a_file_that_shrank_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5, part_bytes=10)
    tracker.look(REL, write(path, b"x" * 35), now_s=0.0)

    os.truncate(path, 12)
    event = tracker.look(REL, os.stat(path), now_s=0.1)

    assert isinstance(event, FileWritten) and event.size == 12


def test_a_file_that_changes_after_it_was_idle_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5, part_bytes=10)
    tracker.look(REL, write(path, b"x" * 20), now_s=0.0)
    assert isinstance(tracker.idle(REL, now_s=5.0), FileIdle)

    event = tracker.look(REL, append(path, b"y"), now_s=5.1)  # far less than a part more

    assert isinstance(event, FileWritten) and event.size == 21
    assert tracker.look(REL, append(path, b"y"), now_s=5.2) is None  # growing again: as before


def test_a_close_is_reported_at_once_and_once_until_the_file_changes_again(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=60, part_bytes=PART)
    tracker.look(REL, write(path, b"abc"), now_s=0.0)

    closed = tracker.closed(REL)

    assert isinstance(closed, FileClosed)
    assert (closed.path, closed.size, closed.inode) == (REL, 3, os.stat(path).st_ino)
    assert tracker.closed(REL) is None
    assert tracker.idle(REL, now_s=100.0) is None  # the idle timer has nothing left to say
    assert tracker.busy_paths() == []

    assert isinstance(tracker.look(REL, append(path, b"more"), now_s=1.0), FileWritten)
    again = tracker.closed(REL)
    assert isinstance(again, FileClosed)
    assert again.size == 7


def test_a_close_after_the_idle_report_of_the_same_content_is_nothing(tmp_path: Path) -> None:
    tracker = Tracker(idle_after_s=5, part_bytes=PART)
    tracker.look(REL, write(tmp_path / REL, b"abc"), now_s=0.0)
    assert isinstance(tracker.idle(REL, now_s=10.0), FileIdle)

    assert tracker.closed(REL) is None
    assert tracker.closed("unknown.mp4") is None
