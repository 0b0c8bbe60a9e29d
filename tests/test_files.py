"""Which files are recordings, and resolving event paths without leaving WATCH_DIR."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.files import matches, resolve_inside, settled_ctime, walk_recordings


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


@pytest.mark.parametrize("rel", ["../x.mp4", "/etc/passwd", "a/../../x", "", "sub/../x.mp4", "."])
def test_resolve_inside_rejects_paths_leaving_root(root: Path, rel: str) -> None:
    (root / "a").mkdir()
    (root / "sub").mkdir()

    assert resolve_inside(root, rel) is None


def test_resolve_inside_rejects_a_symlinked_directory_pointing_outside(
    root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.mp4").write_bytes(b"secret")
    (root / "link").symlink_to(outside, target_is_directory=True)

    assert resolve_inside(root, "link/x.mp4") is None


def test_resolve_inside_accepts_a_symlinked_directory_staying_inside(root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real", target_is_directory=True)

    assert resolve_inside(root, "alias/x.mp4") == root / "real" / "x.mp4"


def test_resolve_inside_accepts_a_unicode_path_with_spaces(root: Path) -> None:
    (root / "sub").mkdir()

    assert resolve_inside(root, "sub/ünï cödé.mp4") == root / "sub" / "ünï cödé.mp4"


def test_resolve_inside_accepts_a_file_at_the_root(root: Path) -> None:
    assert resolve_inside(root, "top.mp4") == root / "top.mp4"


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
