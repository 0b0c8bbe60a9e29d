"""Retention: a snapshot of the projected state, so the log's older entries can go.

The projector role takes a snapshot every LOG_RETENTION_SNAPSHOT_INTERVAL_SECONDS: every
stream hash, its parts and the paths index, at the log position they were folded up
to, msgpack-encoded and compressed in one hash (`<prefix>snapshot`). Then it trims the
log (XTRIM MINID) to the oldest of: the snapshot's position, the projector's position,
every consumer group's last delivered entry and oldest pending entry, and the newest
LOG_RETENTION_MIN_ENTRIES entries. So no group loses an entry it still has to read or
acknowledge, and a replay starts from the snapshot and folds what follows it.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any, NamedTuple, cast

import msgspec
from redis.exceptions import RedisError, WatchError

from common.config import Settings
from common.errors import CefError
from common.events import now_ms
from common.keys import Keys
from common.lease import Lease
from common.log import EventLog, Redis
from common.state import StreamState
from common.status import read_streams

logger = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
RETRY_AFTER_FAILURE_S = 60.0
RETRY_SOON_MS = 5_000

# Everything in one script, so no group can move between the look and the trim.
_TRIM = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local floor = redis.call('HGET', KEYS[2], 'position')
local position = redis.call('GET', KEYS[3])
if not floor or not position then
  return {0, ''}
end
local function lower(id)
  local ms, seq = parse(id)
  local fms, fseq = parse(floor)
  if ms < fms or (ms == fms and seq < fseq) then
    floor = id
  end
end
lower(position)
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name
  for i = 1, #group, 2 do
    if group[i] == 'name' then
      name = group[i + 1]
    elseif group[i] == 'last-delivered-id' then
      lower(group[i + 1])
    end
  end
  local pending = redis.call('XPENDING', KEYS[1], name)
  if pending[1] > 0 then
    lower(pending[2])
  end
end
local keep = tonumber(ARGV[1])
if keep > 0 then
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', keep)
  if #newest < keep then
    return {0, floor}
  end
  lower(newest[#newest][1])
end
return {redis.call('XTRIM', KEYS[1], 'MINID', floor), floor}
"""


class SnapshotError(CefError):
    """The snapshot cannot be read; replay cannot start from it."""


class _Body(msgspec.Struct, array_like=True):
    streams: list[StreamState]
    paths: dict[str, str]


class Snapshot(NamedTuple):
    position: bytes
    created_at_ms: int
    streams: list[StreamState]
    paths: dict[str, str]


class Trimmed(NamedTuple):
    entries: int
    min_id: str


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Body)


def encode_snapshot(snapshot: Snapshot) -> dict[str, bytes | int | str]:
    """The snapshot hash's fields."""
    body = _encoder.encode(_Body(snapshot.streams, snapshot.paths))
    return {
        "format": SNAPSHOT_FORMAT,
        "position": snapshot.position.decode(),
        "created_at_ms": snapshot.created_at_ms,
        "streams": len(snapshot.streams),
        "state": zlib.compress(body, 1),
    }


def decode_snapshot(fields: dict[bytes, bytes]) -> Snapshot:
    try:
        kind = int(fields[b"format"])
        if kind != SNAPSHOT_FORMAT:
            raise SnapshotError(f"snapshot format {kind} is not {SNAPSHOT_FORMAT}")
        body = _decoder.decode(zlib.decompress(fields[b"state"]))
        return Snapshot(
            fields[b"position"], int(fields[b"created_at_ms"]), body.streams, body.paths
        )
    except (KeyError, ValueError, zlib.error, msgspec.DecodeError) as exc:
        raise SnapshotError(f"snapshot cannot be decoded: {exc}") from exc


async def load_snapshot(redis: Redis, keys: Keys) -> Snapshot | None:
    fields = cast(dict[bytes, bytes], await redis.hgetall(keys.snapshot))
    return decode_snapshot(fields) if fields else None


async def snapshot_info(redis: Redis, keys: Keys) -> dict[str, Any] | None:
    """Position, time and size of the snapshot, without reading its state."""
    raw: list[Any] = await redis.hmget(keys.snapshot, ["position", "created_at_ms", "streams"])
    position, created_at_ms, streams = raw
    if position is None or created_at_ms is None or streams is None:
        return None
    return {
        "position": position.decode(),
        "created_at_ms": int(created_at_ms),
        "streams": int(streams),
        "bytes": int(await redis.hstrlen(keys.snapshot, "state")),
    }


async def read_projection(redis: Redis, keys: Keys) -> tuple[list[StreamState], dict[str, str]]:
    """Every stream's state and the paths index, read in pipelined batches."""
    states = await read_streams(redis, keys)
    paths = {
        path.decode(): stream_id.decode()
        async for path, stream_id in redis.hscan_iter(keys.paths, count=1000)
    }
    return states, paths


async def take_snapshot(
    redis: Redis, keys: Keys, position: bytes, lease: Lease | None = None
) -> Snapshot | None:
    """Snapshot the projected state, which must stand at `position`.

    Call from the projector between two batches. The write is dropped (None) if the
    projection moved from `position` meanwhile, or if `lease` was taken over.
    """
    states, paths = await read_projection(redis, keys)
    snapshot = Snapshot(position, now_ms(), states, paths)
    fields = encode_snapshot(snapshot)
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.watch(keys.projector_position)
        if await pipe.get(keys.projector_position) != position:
            return None
        if lease is not None and not await lease.fence(pipe):
            return None
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.delete(keys.snapshot)
        pipe.hset(keys.snapshot, mapping=fields)  # type: ignore[arg-type]
        try:
            await pipe.execute()
        except WatchError:
            return None
    return snapshot


async def trim(redis: Redis, keys: Keys, min_entries: int) -> Trimmed:
    """Drop the entries nobody needs any more: see the module docstring."""
    script = redis.register_script(_TRIM)
    removed, floor = await script(
        keys=[keys.events, keys.snapshot, keys.projector_position], args=[min_entries]
    )
    return Trimmed(int(removed), floor.decode() if isinstance(floor, bytes) else str(floor))


class Retention:
    """Periodic snapshot and trim, run by the projector between two batches."""

    def __init__(self, settings: Settings, log: EventLog, lease: Lease | None = None) -> None:
        self.enabled = settings.log_retention_enabled
        self.interval_ms = int(settings.log_retention_snapshot_interval_seconds * 1000)
        self.min_entries = settings.log_retention_min_entries
        self.redis = log.redis
        self.keys = log.keys
        self.lease = lease
        self._due_ms: int | None = None

    async def tick(self, position: bytes) -> None:
        """Snapshot and trim if the interval has passed since the last snapshot."""
        if not self.enabled:
            return
        now = now_ms()
        try:
            if self._due_ms is None:
                info = await snapshot_info(self.redis, self.keys)
                self._due_ms = info["created_at_ms"] + self.interval_ms if info else now
            if now < self._due_ms:
                return
            done = await self.run(position)
            self._due_ms = now_ms() + (self.interval_ms if done else RETRY_SOON_MS)
        except (RedisError, SnapshotError) as exc:
            logger.warning("log retention failed: %s; trying again later", exc)
            self._due_ms = now + min(self.interval_ms, int(RETRY_AFTER_FAILURE_S * 1000))

    async def run(self, position: bytes) -> Trimmed | None:
        started = time.monotonic()
        snapshot = await take_snapshot(self.redis, self.keys, position, self.lease)
        if snapshot is None:
            return None  # the projection moved or the lease went; the next tick retries
        trimmed = await trim(self.redis, self.keys, self.min_entries)
        logger.info(
            "snapshot at %s (%d streams) in %.2fs; trimmed %d entries older than %s",
            position.decode(),
            len(snapshot.streams),
            time.monotonic() - started,
            trimmed.entries,
            trimmed.min_id,
        )
        return trimmed
