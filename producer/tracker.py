"""What the producer knows about each recording, and which event a fresh look at it gives.

Many writes to one file between two looks become one FileWritten; a file unchanged for
`idle_after_s` gives one FileIdle until it changes again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from common.events import FileCreated, FileDeleted, FileIdle, FileWritten


@dataclass
class Seen:
    size: int
    mtime_ns: int
    inode: int
    device: int
    changed_at_s: float
    idle_sent: bool = False

    def same_as(self, st: os.stat_result) -> bool:
        return (self.size, self.mtime_ns, self.inode, self.device) == (
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            st.st_dev,
        )


def _fields(path: str, st: os.stat_result) -> dict[str, int | str]:
    return {
        "path": path,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "inode": st.st_ino,
        "device": st.st_dev,
    }


class Tracker:
    def __init__(self, idle_after_s: float) -> None:
        self.idle_after_s = idle_after_s
        self.seen: dict[str, Seen] = {}

    def look(
        self, path: str, st: os.stat_result | None, now_s: float
    ) -> FileCreated | FileWritten | FileDeleted | None:
        """The event for `path` given its stat now (None: gone or not a recording)."""
        known = self.seen.get(path)
        if st is None:
            if known is None:
                return None
            del self.seen[path]
            return FileDeleted(path=path)
        if known is not None and known.same_as(st):
            return None
        self.seen[path] = Seen(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, now_s)
        if known is None or known.inode != st.st_ino or known.device != st.st_dev:
            return FileCreated(**_fields(path, st))  # type: ignore[arg-type]
        return FileWritten(**_fields(path, st))  # type: ignore[arg-type]

    def busy_paths(self) -> list[str]:
        """Paths that have not been reported idle since they last changed."""
        return [path for path, seen in self.seen.items() if not seen.idle_sent]

    def idle(self, path: str, now_s: float) -> FileIdle | None:
        """FileIdle for `path` if it has been quiet long enough and was not reported yet.

        Call right after `look` found the file unchanged.
        """
        seen = self.seen.get(path)
        if seen is None or seen.idle_sent or now_s - seen.changed_at_s < self.idle_after_s:
            return None
        seen.idle_sent = True
        return FileIdle(
            path=path,
            size=seen.size,
            mtime_ns=seen.mtime_ns,
            inode=seen.inode,
            device=seen.device,
        )
