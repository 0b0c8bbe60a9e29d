"""The projected state of one stream (one recording's upload) and its Redis hash layout."""

from __future__ import annotations

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

    def encode(self) -> str:
        settled = f"@{self.ctime_ns}," if self.ctime_ns else ""
        return f"{self.offset},{self.length},{self.crc32},{settled}{self.etag}"

    @classmethod
    def decode(cls, raw: bytes | str) -> PartRecord:
        text = raw.decode() if isinstance(raw, bytes) else raw
        offset, length, crc, etag = text.split(",", 3)
        ctime = "0"
        if etag.startswith("@"):
            ctime, _, etag = etag[1:].partition(",")
        return cls(int(offset), int(length), int(crc), etag, int(ctime))


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
    parts: dict[int, PartRecord] = msgspec.field(default_factory=dict)

    @property
    def uploaded_bytes(self) -> int:
        return sum(part.length for part in self.parts.values())

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def scalar_fields(self) -> dict[str, str | int]:
        """The stream hash: every field but the parts, which live in their own hash."""
        fields: dict[str, str | int] = {
            name: getattr(self, name) for name in self.__struct_fields__ if name != "parts"
        }
        fields["uploaded_bytes"] = self.uploaded_bytes
        fields["part_count"] = len(self.parts)
        return fields


_INT_FIELDS = {
    "size_bytes",
    "inode",
    "device",
    "created_at_ms",
    "updated_at_ms",
    "completed_at_ms",
    "mtime_ns",
}


def state_from_hashes(fields: dict[bytes, bytes], parts: dict[bytes, bytes]) -> StreamState | None:
    if not fields:
        return None
    values: dict[str, object] = {}
    for raw_name, raw_value in fields.items():
        name = raw_name.decode()
        if name not in StreamState.__struct_fields__ or name == "parts":
            continue
        value = raw_value.decode()
        values[name] = int(value) if name in _INT_FIELDS else value
    values["parts"] = {int(n): PartRecord.decode(raw) for n, raw in parts.items()}
    return msgspec.convert(values, StreamState)
