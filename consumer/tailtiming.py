"""When a growing file's tail may be sent before the idle timer ends its recording. Pure.

A part other than the last must be at least 5 MiB, so while a file grows only whole parts
go; the tail waits for the final pass. When many recordings stop at once, their tails then
all wait for the idle timer and queue behind one another for the uplink. So once a file has
been quiet for a while, its tail is sent early, as the last part it would be; if the file
grows after all, that part number is sent again with the whole part (a cost of at most the
tail's bytes), and the final pass finds the tail sent when nothing changed.

How long "a while" is comes from the recorder itself: twice the longest pause seen in this
file so far (a file seen quiet for a time and then written again), at least a quarter of
the idle setting and at most all of it. Each tail sent in vain doubles the wait for the
next, so a recorder that pauses often soon gets none sent early.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from cefmp4.common.recent import Recent

MIN_SHARE_OF_IDLE = 0.25
PAUSE_FACTOR = 2
MAX_FILES = 10_000  # paths followed at once; beyond this the oldest are forgotten


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    seen_ns: int
    longest_pause_ns: int


class TailTiming:
    """Growing files followed by one uploader: the pauses seen and when each tail is due."""

    def __init__(self, idle_ns: int) -> None:
        self.idle_ns = idle_ns
        self._files: Recent[str, _Seen] = Recent(MAX_FILES)
        self._due: list[tuple[int, str]] = []  # (due ns, path), a heap; forgotten ones skipped

    def wait_ns(self, path: str) -> int:
        """How long `path` must be quiet before its tail is sent early."""
        seen = self._files.get(path)
        pause = seen.longest_pause_ns if seen is not None else 0
        floor = int(self.idle_ns * MIN_SHARE_OF_IDLE)
        return min(self.idle_ns, max(floor, PAUSE_FACTOR * pause))

    def observe(self, path: str, size: int, mtime_ns: int, now_ns: int) -> None:
        """The file as a pass found it: a change after a quiet look is a pause seen."""
        seen = self._files.get(path)
        if seen is None:
            seen = _Seen(size, mtime_ns, now_ns, 0)
        elif (size, mtime_ns) != (seen.size, seen.mtime_ns):
            pause = max(0, seen.seen_ns - seen.mtime_ns)
            seen = _Seen(size, mtime_ns, now_ns, max(seen.longest_pause_ns, pause))
        else:
            seen.seen_ns = now_ns
        self._files.put(path, seen)

    def quiet_enough(self, path: str, mtime_ns: int, now_ns: int) -> bool:
        """Whether the file, last written at `mtime_ns`, may have its tail sent now."""
        return now_ns - mtime_ns >= self.wait_ns(path)

    def schedule(self, path: str, mtime_ns: int) -> None:
        """Look at `path` again when it will have been quiet long enough."""
        heapq.heappush(self._due, (mtime_ns + self.wait_ns(path), path))

    def forget(self, path: str) -> None:
        """The recording is finished: no tail to send early."""
        self._files.pop(path)

    def pop_due(self, now_ns: int) -> list[str]:
        """Paths whose look is due at `now_ns`, each once."""
        due: set[str] = set()
        while self._due and self._due[0][0] <= now_ns:
            _, path = heapq.heappop(self._due)
            if self._files.get(path) is not None:
                due.add(path)
        return sorted(due)
