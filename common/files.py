"""Which files under WATCH_DIR are recordings, and opening them without leaving WATCH_DIR."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from common.config import Settings
from common.errors import ConfigError


def watch_root(settings: Settings) -> Path:
    root = settings.watch_dir.expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"invalid setting WATCH_DIR: {settings.watch_dir} is not a directory")
    return root


def matches(name: str, globs: tuple[str, ...]) -> bool:
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, glob.lower()) for glob in globs)


def relative_path(root: Path, path: Path) -> str | None:
    """`path` relative to `root` with `/` separators, or None when it is not under root."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def resolve_inside(root: Path, rel: str) -> Path | None:
    """The absolute path of `rel` under `root`, or None if `rel` would leave root.

    Rejects absolute paths, `..` parts, and paths whose directories are symlinks out
    of root. `root` must already be resolved.
    """
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or "\x00" in rel:
        return None
    full = root.joinpath(*pure.parts)
    try:
        parent = full.parent.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if parent != root and root not in parent.parents:
        return None
    return parent / full.name


def stat_recording(full: Path) -> os.stat_result | None:
    """lstat of a regular file, None for anything else (missing, symlink, directory)."""
    try:
        st = os.lstat(full)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def open_recording(full: Path) -> int:
    """A read-only descriptor that refuses to follow a symlink swapped in at the last moment."""
    return os.open(full, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))


def walk_recordings(root: Path, globs: tuple[str, ...]) -> Iterator[str]:
    """Relative paths of every matching regular file under root, not following symlinks."""
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            if not matches(name, globs):
                continue
            full = Path(dirpath) / name
            rel = relative_path(root, full)
            if rel is not None and stat_recording(full) is not None:
                yield rel


# A write within the same clock tick as the one before it may leave ctime as it was, so
# a ctime is trusted only once it is older than many ticks; FAT keeps 2 s timestamps,
# recognisable as whole multiples of 10 ms.
SETTLED_AFTER_NS = 100_000_000
SETTLED_AFTER_COARSE_NS = 2_500_000_000


def settled_ctime(st: os.stat_result, now_ns: int) -> int:
    """`st`'s ctime if the file had been still long enough when `st` was taken, else 0.

    Any later write then moves the ctime: a part read after such a `st`, while the ctime
    is unchanged, still holds the bytes read. (ctime, unlike mtime, cannot be set back.)
    """
    ctime = st.st_ctime_ns
    coarse = ctime % 10_000_000 == 0
    wait = SETTLED_AFTER_COARSE_NS if coarse else SETTLED_AFTER_NS
    return ctime if now_ns - ctime >= wait else 0
