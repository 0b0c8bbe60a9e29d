"""How the projected state is encoded in Redis: the fields, the part records, the snapshot."""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, get_args

import msgspec

from cefmp4.common.errors import SnapshotError
from cefmp4.common.streamstate import TERMINAL, PartRecord, Status, StreamState

BATCH = 500  # streams read or written a round trip
PATH_BATCH = 10 * BATCH  # entries of the paths index a round trip: each is small
STATUSES: tuple[str, ...] = get_args(Status)
OPEN_STATUSES: tuple[str, ...] = tuple(s for s in STATUSES if s not in TERMINAL)
FINISHED_STATUSES: tuple[str, ...] = tuple(s for s in STATUSES if s in TERMINAL)

# Fields of the stream hash kept as text; every other one is a number.
_TEXT_FIELDS = frozenset(
    {
        "stream_id",
        "path",
        "s3_key",
        "upload_id",
        "status",
        "reason",
        "etag",
        "last_event_id",
        "local_file",
    }
)

# --- part records: one compact msgpack array each -------------------------------------
# [offset, length, crc32, etag, ctime_ns]; an ETag that is a quoted MD5 (the usual case)
# is kept as its 16 bytes, so a record is about 40 bytes: small enough for Redis to keep a
# stream's parts hash in its compact encoding.

_MD5_ETAG = re.compile(r'"[0-9a-f]{32}"')
_part_encoder = msgspec.msgpack.Encoder()
_part_decoder = msgspec.msgpack.Decoder(tuple[int, int, int, Any, int])


def part_value(record: PartRecord) -> bytes:
    etag: bytes | str = record.etag
    if _MD5_ETAG.fullmatch(record.etag):
        etag = bytes.fromhex(record.etag[1:-1])
    return _part_encoder.encode((record.offset, record.length, record.crc32, etag, record.ctime_ns))


def part_record(raw: bytes) -> PartRecord:
    offset, length, crc, etag, ctime = _part_decoder.decode(raw)
    text = f'"{etag.hex()}"' if isinstance(etag, bytes) else str(etag)
    return PartRecord(offset, length, crc, text, ctime)


# --- the stream hash ------------------------------------------------------------------


def stream_fields(state: StreamState) -> dict[str, str | int]:
    fields: dict[str, str | int] = {
        name: getattr(state, name) for name in state.__struct_fields__ if name != "parts"
    }
    fields["uploaded_bytes"] = state.uploaded_bytes
    fields["part_count"] = len(state.parts)
    return fields


def state_of(fields: Mapping[bytes, bytes], parts: Mapping[bytes, bytes]) -> StreamState | None:
    if not fields:
        return None
    values: dict[str, object] = {}
    for raw_name, raw_value in fields.items():
        name = raw_name.decode()
        if name not in StreamState.__struct_fields__ or name == "parts":
            continue
        value = raw_value.decode()
        values[name] = value if name in _TEXT_FIELDS else int(value)
    values["parts"] = {int(n): part_record(raw) for n, raw in parts.items()}
    return msgspec.convert(values, StreamState)


class StreamSummary(msgspec.Struct, frozen=True):
    """One stream as the stream hash alone tells it (its parts are not read)."""

    stream_id: str
    path: str
    s3_key: str
    status: str
    size_bytes: int
    uploaded_bytes: int
    part_count: int
    created_at_ms: int
    updated_at_ms: int
    completed_at_ms: int
    reason: str
    retry_at_ms: int
    local_file: str = ""


SUMMARY_FIELDS: tuple[str, ...] = StreamSummary.__struct_fields__


def decode_summary(values: Sequence[bytes | None]) -> StreamSummary | None:
    """The summary from an HMGET of SUMMARY_FIELDS; None when the hash does not exist."""
    if values[0] is None:
        return None
    raw = dict(zip(SUMMARY_FIELDS, values, strict=True))

    def text(name: str) -> str:
        value = raw[name]
        return value.decode() if value is not None else ""

    def number(name: str) -> int:
        value = raw[name]
        return int(value) if value else 0

    return StreamSummary(
        stream_id=text("stream_id"),
        path=text("path"),
        s3_key=text("s3_key"),
        status=text("status"),
        size_bytes=number("size_bytes"),
        uploaded_bytes=number("uploaded_bytes"),
        part_count=number("part_count"),
        created_at_ms=number("created_at_ms"),
        updated_at_ms=number("updated_at_ms"),
        completed_at_ms=number("completed_at_ms"),
        reason=text("reason"),
        retry_at_ms=number("retry_at_ms"),
        local_file=text("local_file"),
    )


def summary_of(state: StreamState) -> StreamSummary:
    """The summary of a state held in memory, as Redis would give it."""
    fields = stream_fields(state)
    summary = decode_summary([str(fields[name]).encode() for name in SUMMARY_FIELDS])
    assert summary is not None
    return summary


# --- the snapshot: a small hash pointing at pieces, so no value grows with history --------
#
# snapshot                hash    format 2, generation, position, created_at_ms, streams,
#                                 stream_chunks, path_chunks
# snapshot:<gen>:s<n>     string  zlib-compressed msgpack list of up to BATCH stream states
# snapshot:<gen>:p<n>     string  zlib-compressed msgpack map of up to 10 x BATCH paths
#
# Format 1 (one hash holding the whole state in a field `state`) is still read.

SNAPSHOT_FORMAT = 2
STREAM_CHUNK = "s"
PATH_CHUNK = "p"

_states_encoder = msgspec.msgpack.Encoder()
_states_decoder = msgspec.msgpack.Decoder(list[StreamState])
_paths_decoder = msgspec.msgpack.Decoder(dict[str, str])


class Snapshot(NamedTuple):
    position: bytes
    created_at_ms: int
    streams: list[StreamState]
    paths: dict[str, str]


class SnapshotInfo(msgspec.Struct, frozen=True):
    position: str
    created_at_ms: int
    streams: int


def encode_chunk(value: list[StreamState] | dict[str, str]) -> bytes:
    return zlib.compress(_states_encoder.encode(value), 1)


def decode_states(raw: bytes) -> list[StreamState]:
    try:
        return _states_decoder.decode(zlib.decompress(raw))
    except (zlib.error, msgspec.DecodeError) as exc:
        raise SnapshotError(f"a snapshot piece cannot be decoded: {exc}") from exc


def decode_paths(raw: bytes) -> dict[str, str]:
    try:
        return _paths_decoder.decode(zlib.decompress(raw))
    except (zlib.error, msgspec.DecodeError) as exc:
        raise SnapshotError(f"a snapshot piece cannot be decoded: {exc}") from exc


class _SnapshotBodyV1(msgspec.Struct, array_like=True):
    streams: list[StreamState]
    paths: dict[str, str]


_v1_decoder = msgspec.msgpack.Decoder(_SnapshotBodyV1)


def decode_snapshot_v1(fields: Mapping[bytes, bytes]) -> Snapshot:
    """A snapshot of format 1, written whole in one hash field by earlier versions."""
    try:
        body = _v1_decoder.decode(zlib.decompress(fields[b"state"]))
        return Snapshot(
            fields[b"position"], int(fields[b"created_at_ms"]), body.streams, body.paths
        )
    except (KeyError, ValueError, zlib.error, msgspec.DecodeError) as exc:
        raise SnapshotError(f"snapshot cannot be decoded: {exc}") from exc


def snapshot_format(fields: Mapping[bytes, bytes]) -> int:
    try:
        kind = int(fields[b"format"])
    except (KeyError, ValueError) as exc:
        raise SnapshotError(f"snapshot cannot be decoded: {exc}") from exc
    if kind not in (1, SNAPSHOT_FORMAT):
        raise SnapshotError(f"snapshot format {kind} is not {SNAPSHOT_FORMAT}")
    return kind
