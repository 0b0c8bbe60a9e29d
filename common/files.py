"""Which files under WATCH_DIR are recordings, and opening them without leaving WATCH_DIR.

An event's path is looked at and opened only relative to WATCH_DIR, never through a
symlink in any component: the file's folder is opened with openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS) where the kernel has it, else one folder at a time with O_NOFOLLOW;
the file itself with O_NOFOLLOW | O_NONBLOCK, so a FIFO or device under a recording's
name never blocks a reader, and only a regular file is read.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import functools
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from cefmp4.common.config import Settings
from cefmp4.common.errors import ConfigError, FileChanged


def watch_root(settings: Settings) -> Path:
    root = settings.watch_dir.expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"invalid setting WATCH_DIR: {settings.watch_dir} is not a directory")
    return root


def matches(name: str, globs: tuple[str, ...]) -> bool:
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, glob.lower()) for glob in globs)


def decodable(name: str) -> bool:
    """Whether `name` was valid UTF-8 on disk.

    Python gives each byte that is not as a lone surrogate (`surrogateescape`); such a name
    can be neither an event's path nor an S3 key.
    """
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def relative_path(root: Path, path: Path) -> str | None:
    """`path` relative to `root` with `/` separators, or None when it is not under root."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def stat_recording(full: Path) -> os.stat_result | None:
    """lstat of a regular file, None for anything else (missing, symlink, directory)."""
    try:
        st = os.lstat(full)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


# --- paths from events ----------------------------------------------------------------

RECORDING_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
_ROOT_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_FOLDER_FLAGS = _ROOT_FLAGS | os.O_NOFOLLOW

_SYS_OPENAT2 = 437  # the same number on every Linux architecture but alpha
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08

# Cleared when the kernel (or a seccomp filter) turns openat2 down: folders are then
# opened one at a time with O_NOFOLLOW.
use_openat2 = sys.platform == "linux"


def inside_parts(rel: str) -> list[str] | None:
    """The folders and file name of an event's path; None when it cannot name a file
    under WATCH_DIR: empty, absolute, with `.`, `..` or empty parts, or holding a NUL.
    """
    parts = rel.split("/")
    if "\x00" in rel or any(part in ("", ".", "..") for part in parts):
        return None
    return parts


def stat_inside(root: Path, rel: str) -> os.stat_result | None:
    """lstat of the regular file `rel` names under `root`; None for anything else.

    None when it is missing, not a regular file, unreadable, or reached only through a
    symlink. `root` must already be resolved.
    """
    try:
        with folder_inside(root, rel) as (folder, name):
            st = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except OSError:  # also a path that names nothing under WATCH_DIR
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def open_inside(root: Path, rel: str, expected: tuple[int, int] | None = None) -> int:
    """A read-only descriptor of the regular file `rel` names under `root`.

    No symlink is followed on the way and a FIFO or device is never waited on. OSError
    when it cannot be opened (missing; ELOOP or ENOTDIR through a symlink); FileChanged
    when it is not a regular file, or not the file `expected` (inode, device) names: it
    changed since it was looked at.
    """
    with folder_inside(root, rel) as (folder, name):
        fd = os.open(name, RECORDING_FLAGS, dir_fd=folder)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileChanged(f"{rel} is not a regular file")
        if expected is not None and (st.st_ino, st.st_dev) != expected:
            raise FileChanged(f"{rel} is no longer the file looked at")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def folder_inside(root: Path, rel: str) -> Iterator[tuple[int, str]]:
    """A descriptor of the folder holding `rel` under `root`, reached through no symlink,
    and the file's name in it: act on the file with `dir_fd=`. OSError if it cannot be
    reached."""
    parts = inside_parts(rel)
    if parts is None:
        raise OSError(errno.EXDEV, "not a path under WATCH_DIR", rel)
    with _folder_of(root, parts) as folder:
        yield folder, parts[-1]


@contextlib.contextmanager
def _folder_of(root: Path, parts: list[str]) -> Iterator[int]:
    """A descriptor of the folder holding the last of `parts`, closed on leaving."""
    folder = os.open(root, _ROOT_FLAGS)
    try:
        if len(parts) > 1:
            inner = _open_folders(folder, parts[:-1])
            os.close(folder)
            folder = inner
        yield folder
    finally:
        os.close(folder)


def _open_folders(top: int, names: list[str]) -> int:
    global use_openat2
    if use_openat2:
        try:
            return _openat2(top, "/".join(names), _FOLDER_FLAGS)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            use_openat2 = False
    folder = top
    try:
        for name in names:
            inner = os.open(name, _FOLDER_FLAGS, dir_fd=folder)
            if folder != top:
                os.close(folder)
            folder = inner
    except BaseException:
        if folder != top:
            os.close(folder)
        raise
    return folder


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


@functools.cache
def _syscall() -> Callable[..., int]:
    function = ctypes.CDLL(None, use_errno=True).syscall
    function.restype = ctypes.c_long
    function.argtypes = (
        ctypes.c_long,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.POINTER(_OpenHow),
        ctypes.c_size_t,
    )
    return function


def _openat2(dir_fd: int, path: str, flags: int) -> int:
    """openat2(2) refusing symlinks and anything outside `dir_fd`."""
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS)
    while True:
        fd = _syscall()(
            _SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)
        )
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code), path)


def walk_recordings(
    root: Path, globs: tuple[str, ...], undecodable: Callable[[str], object] = lambda rel: None
) -> Iterator[str]:
    """Relative paths of every matching regular file under root, not following symlinks.

    A matching file whose path is not valid UTF-8 is handed to `undecodable` instead.
    """
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            if not matches(name, globs):
                continue
            full = Path(dirpath) / name
            rel = relative_path(root, full)
            if rel is None or stat_recording(full) is None:
                continue
            if decodable(rel):
                yield rel
            else:
                undecodable(rel)


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
    return st.st_ctime_ns if settle_wait_ns(st, now_ns) == 0 else 0


def settle_wait_ns(st: os.stat_result, now_ns: int) -> int:
    """How long until `st`'s ctime is old enough to be trusted (see `settled_ctime`); 0: it is."""
    ctime = st.st_ctime_ns
    coarse = ctime % 10_000_000 == 0
    wait = SETTLED_AFTER_COARSE_NS if coarse else SETTLED_AFTER_NS
    return max(0, wait - (now_ns - ctime))
