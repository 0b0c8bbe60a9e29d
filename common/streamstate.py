"""The projected state of one stream (one recording's upload): plain data, folded from events.

How it is stored in Redis is common/statestore.py's business alone.
"""

from __future__ import annotations

import os
from typing import Literal

import msgspec

Status = Literal["active", "finalizing", "completed", "failed", "aborted"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "aborted"})


class PartRecord(msgspec.Struct, frozen=True):
    offset: int
    length: int
    crc32: int
    etag: str
    # The file's ctime when the part was read, if the file had settled by then (else 0):
    # while the file's ctime is still this, the part's bytes are known without reading.
    ctime_ns: int = 0


class StreamState(msgspec.Struct, frozen=True, kw_only=True):
    stream_id: str
    path: str
    s3_key: str
    upload_id: str
    status: Status
    size_bytes: int
    inode: int
    device: int
    created_at_ms: int
    updated_at_ms: int
    completed_at_ms: int = 0
    mtime_ns: int = 0
    reason: str = ""
    etag: str = ""
    last_event_id: str = ""
    attempt: int = 0  # how many streams of this file failed before this one
    retry_at_ms: int = 0  # of a failed stream: see events.StreamFailed
    ctime_ns: int = 0  # of the file when the stream completed
    local_file: str = ""  # of a completed stream: "" (kept), "deleted", "moved" or "gone"
    parts: dict[int, PartRecord] = msgspec.field(default_factory=dict)

    @property
    def uploaded_bytes(self) -> int:
        return sum(part.length for part in self.parts.values())

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def sent_end(self) -> int:
        """Where the furthest part sent so far ends."""
        return max((p.offset + p.length for p in self.parts.values()), default=0)

    def is_file(self, st: os.stat_result) -> bool:
        """Whether `st` finds the file as this stream last saw it: the same inode on the same
        device, of the same size and mtime."""
        return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns) == (
            self.inode,
            self.device,
            self.size_bytes,
            self.mtime_ns,
        )
