"""What the producer knows about each recording, and which event a fresh look at it gives.

A growing file gives a FileWritten only when it holds a whole part more than the last one
reported, and at most one every `written_every_s`: uploaders send whole parts, so nothing
between them needs an event, and the log grows with the bytes, not with the writes. A file
that shrinks, or changes after it was reported idle or closed, is reported at once. A file
unchanged for `idle_after_s` gives one FileIdle (with its last size and mtime) until it
changes again. A file its writer closed, or that was moved in, gives one FileClosed at once
instead, with the same meaning: if it changes after that, the idle timer (or the next
close) ends it again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

from cefmp4.common.events import FileClosed, FileCreated, FileDeleted, FileIdle, FileWritten
from cefmp4.common.parts import part_at
from cefmp4.common.streamstate import StreamState


@dataclass
class Seen:
    size: int
    mtime_ns: int
    inode: int
    device: int
    changed_at_s: float
    idle_sent: bool = False
    reported_size: int = 0  # the size the last FileCreated/FileWritten said
    reported_at_s: float = 0.0

    def same_as(self, st: os.stat_result) -> bool:
        return (self.size, self.mtime_ns, self.inode, self.device) == (
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            st.st_dev,
        )


_Reported = TypeVar("_Reported", FileCreated, FileWritten)
_Event = TypeVar("_Event", FileCreated, FileWritten, FileIdle, FileClosed)


def _event(kind: type[_Event], path: str, seen: Seen) -> _Event:
    """The event of `kind` for `path` as `seen`."""
    return kind(
        path=path, size=seen.size, mtime_ns=seen.mtime_ns, inode=seen.inode, device=seen.device
    )


class Tracker:
    def __init__(self, idle_after_s: float, part_bytes: int, written_every_s: float = 1.0) -> None:
        self.idle_after_s = idle_after_s
        self.part_bytes = part_bytes
        self.written_every_s = written_every_s
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
            return self._written_due(path, known, now_s)
        seen = Seen(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, now_s)
        self.seen[path] = seen
        if known is None or known.inode != st.st_ino or known.device != st.st_dev:
            return self._reported(seen, _event(FileCreated, path, seen), now_s)
        seen.reported_size, seen.reported_at_s = known.reported_size, known.reported_at_s
        if st.st_size < known.reported_size or known.idle_sent:
            # Shrunk, or changed after it was reported idle (its object may be complete): at
            # once, so a regrowth's copies (consumer/regrowth.py) start while it is written.
            return self._reported(seen, _event(FileWritten, path, seen), now_s)
        return self._written_due(path, seen, now_s)

    def _written_due(self, path: str, seen: Seen, now_s: float) -> FileWritten | None:
        """FileWritten if `seen` holds a whole part more than reported and the time has come."""
        if self._whole_parts(seen.size) <= self._whole_parts(seen.reported_size):
            return None
        if now_s - seen.reported_at_s < self.written_every_s:
            return None
        return self._reported(seen, _event(FileWritten, path, seen), now_s)

    def _whole_parts(self, size: int) -> int:
        return part_at(size, self.part_bytes).number - 1

    @staticmethod
    def _reported(seen: Seen, event: _Reported, now_s: float) -> _Reported:
        seen.reported_size, seen.reported_at_s = event.size, now_s
        return event

    def settled(self, path: str, st: os.stat_result, now_s: float) -> None:
        """Take `path` as reported and idle as it is now: a look gives nothing until it changes."""
        self.seen[path] = Seen(
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            st.st_dev,
            now_s,
            idle_sent=True,
            reported_size=st.st_size,
            reported_at_s=now_s,
        )

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
        return _event(FileIdle, path, seen)

    def closed(self, path: str) -> FileClosed | None:
        """FileClosed for `path`, closed by its writer or moved in, unless it was reported
        idle or closed as it is now.

        Call right after `look` found the file there.
        """
        seen = self.seen.get(path)
        if seen is None or seen.idle_sent:
            return None
        seen.idle_sent = True
        return _event(FileClosed, path, seen)


def completed_as_is(state: StreamState, st: os.stat_result) -> bool:
    """Whether `state` is a completed stream of the file exactly as `st` finds it now."""
    return state.status == "completed" and state.is_file(st)
