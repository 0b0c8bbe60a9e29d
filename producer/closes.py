"""Files under WATCH_DIR that a writer closed, or that were renamed or moved in: inotify's
IN_CLOSE_WRITE and IN_MOVED_TO, which watchfiles sees but drops.

Every folder under WATCH_DIR is watched, folders created, renamed or moved in later too.
What comes out are only hints: the producer looks at each path again, as safely as at any
other (no symlink followed, nothing outside WATCH_DIR), before it reports anything. So a
watch that a race placed on a folder behind a symlink can name a path, never have it read.

Linux only (`AVAILABLE`); elsewhere, and on file systems that raise no such events (network
mounts, FUSE), nothing comes out and the idle timer alone ends a recording.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from cefmp4.common.printable import printable

logger = logging.getLogger(__name__)

AVAILABLE = sys.platform == "linux"

if TYPE_CHECKING or AVAILABLE:
    from asyncinotify import Event, Inotify, Mask

    # Folders are watched for the files closed or moved into them, and for folders that
    # appear or leave; ONLYDIR and DONT_FOLLOW keep a watch off a symlink put in a folder's place.
    _WATCH_MASK = (
        Mask.CLOSE_WRITE
        | Mask.MOVED_TO
        | Mask.MOVED_FROM
        | Mask.CREATE
        | Mask.ONLYDIR
        | Mask.DONT_FOLLOW
    )


class WatcherGone(Exception):
    """WATCH_DIR itself was deleted, moved or unmounted: the watches are worth nothing now."""


class Closes:
    """Watches every folder under `root` for files closed after writing, or moved in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._inotify = Inotify()
        self._root_wd: int | None = None
        self._full_warned = False

    def __enter__(self) -> Self:
        self._root_wd = self._watch_tree(self.root)
        if self._root_wd is None:
            self._inotify.close()
            raise WatcherGone(f"cannot watch {self.root}")
        logger.info("watching %d folders for closed and moved-in files", len(self._inotify.watches))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._inotify.close()

    async def closed(self) -> AsyncIterator[Path]:
        """Each file closed after writing or moved into a watched folder, as it happens.

        Raises WatcherGone when WATCH_DIR itself goes away.
        """
        while True:
            event = await self._inotify.get()
            path = self._handle(event)
            if path is not None:
                yield path

    def _handle(self, event: Event) -> Path | None:
        """What one inotify event says: a file to look at (None: nothing to look at)."""
        mask = event.mask
        if Mask.Q_OVERFLOW in mask:
            # Events were lost; the idle timer ends the recordings whose close was among
            # them. Folders created meanwhile are watched from now on.
            logger.info("inotify queue overflowed: some closes were missed")
            self._watch_tree(self.root)
            return None
        watch = event.watch
        root_gone = mask & (Mask.IGNORED | Mask.UNMOUNT | Mask.DELETE_SELF | Mask.MOVE_SELF)
        if root_gone and watch is not None and watch.wd == self._root_wd:
            raise WatcherGone(f"{self.root} went away")
        path = event.path
        if path is None:
            return None
        if Mask.ISDIR in mask:
            if Mask.MOVED_FROM in mask:
                self._unwatch_tree(path)
            elif mask & (Mask.CREATE | Mask.MOVED_TO):
                # A folder renamed within WATCH_DIR is dropped above and watched again
                # under its new name; its files are not taken as finished, since a camera's
                # folder may be renamed while it records.
                self._watch_tree(path)
            return None
        if mask & (Mask.CLOSE_WRITE | Mask.MOVED_TO):
            return path
        return None

    def _watch_tree(self, top: Path) -> int | None:
        """Watch `top` and every folder below it, not through symlinks; `top`'s watch.

        Each folder is watched before it is listed, so a folder created meanwhile is
        either listed or reported by its parent's watch.
        """
        top_wd = None
        folders = [top]
        while folders:
            folder = folders.pop()
            wd = self._watch_folder(folder)
            if wd is None:
                continue
            if folder == top:
                top_wd = wd
            try:
                with os.scandir(folder) as entries:
                    folders.extend(
                        Path(entry.path) for entry in entries if entry.is_dir(follow_symlinks=False)
                    )
            except OSError:
                continue  # gone or unreadable meanwhile
        return top_wd

    def _watch_folder(self, folder: Path) -> int | None:
        try:
            watch = self._inotify.add_watch(folder, _WATCH_MASK)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and not self._full_warned:
                self._full_warned = True
                logger.warning(
                    "cannot watch %s for closed files: the inotify watch limit is reached "
                    "(fs.inotify.max_user_watches); recordings there end on the idle timer",
                    folder,
                )
            return None  # gone, not a folder (a symlink), or not ours to read
        # A folder watched already (renamed while its move went unseen) keeps its watch:
        # name it as it is called now.
        watch.path = folder
        logger.debug("watching %s for closed files", printable(str(folder)))
        return watch.wd

    def _unwatch_tree(self, top: Path) -> None:
        """Stop watching `top` and the folders below it: they left, or are moving."""
        for watch in self._inotify.watches:
            if watch.path == top or top in watch.path.parents:
                try:
                    self._inotify.rm_watch(watch)
                except OSError:
                    continue  # already dropped by the kernel
