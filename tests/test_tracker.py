"""The tracker turns successive looks at real files into few, meaningful file events."""

from __future__ import annotations

import os
from pathlib import Path

from common.events import FileCreated, FileDeleted, FileIdle, FileWritten
from producer.tracker import Tracker

REL = "cam/rec.mp4"


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

    event = Tracker(idle_after_s=5).look(REL, st, now_s=0.0)

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
    tracker = Tracker(idle_after_s=5)
    tracker.look(REL, write(path, b"abc"), now_s=0.0)

    assert tracker.look(REL, os.stat(path), now_s=1.0) is None
    assert tracker.look(REL, os.stat(path), now_s=2.0) is None


def test_append_gives_one_file_written_with_the_new_size(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5)
    tracker.look(REL, write(path, b"abc"), now_s=0.0)

    st = append(path, b"defg")
    event = tracker.look(REL, st, now_s=1.0)

    assert isinstance(event, FileWritten)
    assert (event.path, event.size, event.inode) == (REL, 7, st.st_ino)
    assert tracker.look(REL, os.stat(path), now_s=1.5) is None


def test_many_appends_between_two_looks_coalesce_into_one_file_written(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5)
    tracker.look(REL, write(path, b"start"), now_s=0.0)

    for _ in range(50):
        append(path, b"0123456789")
    events = [tracker.look(REL, os.stat(path), now_s=t) for t in (1.0, 1.1, 1.2)]

    assert isinstance(events[0], FileWritten)
    assert events[0].size == 5 + 50 * 10
    assert events[1:] == [None, None]


def test_idle_only_after_idle_after_s_since_the_last_change(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5)
    tracker.look(REL, write(path, b"abc"), now_s=100.0)

    assert tracker.idle(REL, now_s=100.0) is None
    assert tracker.idle(REL, now_s=104.9) is None
    idle = tracker.idle(REL, now_s=105.0)

    assert isinstance(idle, FileIdle)
    assert (idle.path, idle.size, idle.inode) == (REL, 3, os.stat(path).st_ino)


def test_idle_is_reported_once_until_the_file_changes_again(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5)
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
    assert Tracker(idle_after_s=5).idle("never/seen.mp4", now_s=1e9) is None


def test_deleted_file_gives_file_deleted_once(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5)
    tracker.look(REL, write(path, b"abc"), now_s=0.0)
    path.unlink()

    first = tracker.look(REL, None, now_s=1.0)

    assert isinstance(first, FileDeleted)
    assert first.path == REL
    assert tracker.look(REL, None, now_s=2.0) is None
    assert tracker.idle(REL, now_s=100.0) is None
    assert tracker.busy_paths() == []


def test_never_seen_missing_file_gives_nothing() -> None:
    assert Tracker(idle_after_s=5).look(REL, None, now_s=0.0) is None


def test_file_recreated_after_deletion_gives_file_created(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5)
    tracker.look(REL, write(path, b"abc"), now_s=0.0)
    path.unlink()
    tracker.look(REL, None, now_s=1.0)

    event = tracker.look(REL, write(path, b"abc"), now_s=2.0)

    assert isinstance(event, FileCreated)
    assert event.size == 3


def test_replaced_file_gives_file_created(tmp_path: Path) -> None:
    path = tmp_path / REL
    tracker = Tracker(idle_after_s=5)
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
    tracker = Tracker(idle_after_s=5)
    a = tracker.look("a.mp4", write(tmp_path / "a.mp4", b"a"), now_s=0.0)
    b = tracker.look("b.mp4", write(tmp_path / "b.mp4", b"bb"), now_s=3.0)

    assert isinstance(a, FileCreated)
    assert isinstance(b, FileCreated)
    assert sorted(tracker.busy_paths()) == ["a.mp4", "b.mp4"]
    assert isinstance(tracker.idle("a.mp4", now_s=5.0), FileIdle)
    assert tracker.idle("b.mp4", now_s=5.0) is None
    assert tracker.busy_paths() == ["b.mp4"]
