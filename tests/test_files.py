"""Which files are recordings, and looking at event paths without leaving WATCH_DIR."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from cefmp4.common import files
from cefmp4.common.errors import FileChanged
from cefmp4.common.files import (
    inside_parts,
    matches,
    open_inside,
    settle_wait_ns,
    settled_ctime,
    stat_inside,
    walk_recordings,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = (tmp_path / "watch").resolve()
    root.mkdir()
    return root


@pytest.mark.parametrize(
    ("name", "globs", "expected"),
    [
        ("a.mp4", ("*.mp4",), True),
        ("A.MP4", ("*.mp4",), True),
        ("clip.Mp4", ("*.MP4",), True),
        ("a.txt", ("*.mp4",), False),
        ("a.mp4.part", ("*.mp4",), False),
        ("b.MOV", ("*.mp4", "*.mov"), True),
        ("b.mkv", ("*.mp4", "*.mov"), False),
    ],
)
def test_matches_is_case_insensitive_on_the_name(
    name: str, globs: tuple[str, ...], expected: bool
) -> None:
    assert matches(name, globs) is expected


@pytest.mark.parametrize(
    "rel",
    ["../x.mp4", "/etc/passwd", "a/../../x", "", "sub/../x.mp4", ".", "a//x.mp4", "a/./x.mp4",
     "sub/", "x\x00.mp4"],
)  # fmt: skip
def test_paths_that_could_leave_root_are_refused_before_any_look(root: Path, rel: str) -> None:
    (root / "a").mkdir()
    (root / "sub").mkdir()

    assert inside_parts(rel) is None
    assert stat_inside(root, rel) is None
    with pytest.raises(OSError):
        os.close(open_inside(root, rel))


@pytest.fixture(params=["openat2", "walk"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with openat2, and again with the walk that opens one folder at a time."""
    if request.param == "openat2":
        if not files.use_openat2:
            pytest.skip("no openat2 on this system")
    else:

        def no_openat2(*args: object) -> int:
            raise AssertionError("openat2 used where the walk was forced")

        monkeypatch.setattr(files, "use_openat2", False)
        monkeypatch.setattr(files, "_openat2", no_openat2)
    return str(request.param)


def test_a_nested_unicode_path_is_looked_at_and_read(root: Path, way: str) -> None:
    rel = "site a/камера 1/ünï cödé.mp4"
    (root / rel).parent.mkdir(parents=True)
    (root / rel).write_bytes(b"recording")

    st = stat_inside(root, rel)
    fd = open_inside(root, rel, (st.st_ino, st.st_dev) if st else None)

    assert st is not None and st.st_size == 9
    try:
        assert os.read(fd, 100) == b"recording"
    finally:
        os.close(fd)
    if way == "openat2":
        assert files.use_openat2  # the kernel took it


def test_a_file_at_the_root_is_read(root: Path, way: str) -> None:
    (root / "top.mp4").write_bytes(b"t")

    fd = open_inside(root, "top.mp4")

    try:
        assert os.read(fd, 10) == b"t"
    finally:
        os.close(fd)


@pytest.mark.parametrize("rel", ["gone/x.mp4", "x.mp4", "cam/x.mp4/y.mp4"])
def test_a_missing_folder_or_file_is_missing_not_outside(root: Path, way: str, rel: str) -> None:
    (root / "cam").mkdir()
    (root / "cam" / "x.mp4").write_bytes(b"x")

    assert inside_parts(rel) is not None
    assert stat_inside(root, rel) is None
    with pytest.raises((FileNotFoundError, NotADirectoryError)):
        open_inside(root, rel)


def test_no_symlink_is_followed_in_any_component(root: Path, tmp_path: Path, way: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.mp4").write_bytes(b"secret")
    (root / "real").mkdir()
    (root / "real" / "x.mp4").write_bytes(b"inside")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    (root / "deep").mkdir()
    (root / "deep" / "link").symlink_to(outside, target_is_directory=True)
    (root / "file.mp4").symlink_to(root / "real" / "x.mp4")

    for rel in ("link/x.mp4", "alias/x.mp4", "deep/link/x.mp4", "file.mp4"):
        assert stat_inside(root, rel) is None, rel
        with pytest.raises(OSError) as refused:
            open_inside(root, rel)
        assert refused.value.errno in (errno.ELOOP, errno.ENOTDIR), rel
    assert stat_inside(root, "real/x.mp4") is not None


def test_a_fifo_or_folder_named_like_a_recording_is_refused_without_blocking(
    root: Path, way: str
) -> None:
    os.mkfifo(root / "pipe.mp4")  # no writer: a blocking open would wait forever
    (root / "folder.mp4").mkdir()

    for rel in ("pipe.mp4", "folder.mp4"):
        assert stat_inside(root, rel) is None
        with pytest.raises(FileChanged):
            open_inside(root, rel)


def test_a_file_swapped_between_look_and_open_is_refused(root: Path, way: str) -> None:
    (root / "cam").mkdir()
    path = root / "cam" / "rec.mp4"
    path.write_bytes(b"first")
    looked = stat_inside(root, "cam/rec.mp4")
    assert looked is not None
    (root / "cam" / "other.mp4").write_bytes(b"second")
    (root / "cam" / "other.mp4").rename(path)

    with pytest.raises(FileChanged):
        open_inside(root, "cam/rec.mp4", (looked.st_ino, looked.st_dev))
    fd = open_inside(root, "cam/rec.mp4")
    os.close(fd)


def test_a_kernel_without_openat2_falls_back_to_the_walk(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def enosys(*args: object) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(files, "use_openat2", True)
    monkeypatch.setattr(files, "_syscall", lambda: enosys)
    (root / "cam").mkdir()
    (root / "cam" / "x.mp4").write_bytes(b"x")

    assert stat_inside(root, "cam/x.mp4") is not None
    assert files.use_openat2 is False


def test_walk_recordings_lists_nested_matches_only(root: Path, tmp_path: Path) -> None:
    (root / "cam1" / "day2").mkdir(parents=True)
    (root / "cam1" / "a.mp4").write_bytes(b"a")
    (root / "cam1" / "day2" / "B.MP4").write_bytes(b"b")
    (root / "top.mp4").write_bytes(b"t")
    (root / "notes.txt").write_bytes(b"n")
    (root / "cam1" / "day2" / "log.txt").write_bytes(b"l")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.mp4").write_bytes(b"o")
    (root / "inside-link.mp4").symlink_to(root / "top.mp4")
    (root / "outside-link.mp4").symlink_to(outside / "o.mp4")
    (root / "dir-link").symlink_to(outside, target_is_directory=True)

    found = sorted(walk_recordings(root, ("*.mp4",)))

    assert found == ["cam1/a.mp4", "cam1/day2/B.MP4", "top.mp4"]


def test_walk_recordings_of_an_empty_root_is_empty(root: Path) -> None:
    assert list(walk_recordings(root, ("*.mp4",))) == []


def test_walk_recordings_skips_matching_directories(root: Path) -> None:
    (root / "folder.mp4").mkdir()
    (root / "folder.mp4" / "inner.mp4").write_bytes(b"x")
    os.mkfifo(root / "pipe.mp4")

    assert list(walk_recordings(root, ("*.mp4",))) == ["folder.mp4/inner.mp4"]


def test_walk_recordings_hands_names_that_are_not_utf8_aside(root: Path) -> None:
    (root / "good.mp4").write_bytes(b"x")
    (root / "new\nline.mp4").write_bytes(b"x")
    os.mkdir(bytes(root) + b"/dir\xe9")
    for bad in (b"/bad\xff.mp4", b"/dir\xe9/inner.mp4", b"/bad\xff.txt"):
        with open(bytes(root) + bad, "wb") as f:
            f.write(b"x")
    undecodable: list[str] = []

    found = sorted(walk_recordings(root, ("*.mp4",), undecodable.append))

    assert found == ["good.mp4", "new\nline.mp4"]
    assert sorted(undecodable) == ["bad\udcff.mp4", "dir\udce9/inner.mp4"]


def _stat_with_ctime(ctime_ns: int) -> os.stat_result:
    fields = list(os.stat(__file__))  # the 10 classic fields; the ns fields come after
    return os.stat_result((*fields, 0, 0, 0, 0, 0, ctime_ns))


@pytest.mark.parametrize(
    ("ctime_ns", "age_ns", "settled"),
    [
        (1_700_000_000_123_456_789, 99_999_999, False),  # changed within the last ticks
        (1_700_000_000_123_456_789, 100_000_000, True),
        (1_700_000_000_120_000_000, 2_000_000_000, False),  # FAT-like: 2 s timestamps
        (1_700_000_000_120_000_000, 2_500_000_000, True),
    ],
)
def test_a_ctime_is_trusted_only_once_it_is_old_enough(
    ctime_ns: int, age_ns: int, settled: bool
) -> None:
    st = _stat_with_ctime(ctime_ns)
    assert st.st_ctime_ns == ctime_ns
    assert settled_ctime(st, ctime_ns + age_ns) == (ctime_ns if settled else 0)
    assert (settle_wait_ns(st, ctime_ns + age_ns) == 0) == settled
