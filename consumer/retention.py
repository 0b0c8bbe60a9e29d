"""Retention: a snapshot of the projected state, so the log's older entries can go.

The projector role takes a snapshot every LOG_RETENTION_SNAPSHOT_INTERVAL_SECONDS: every
kept stream, its parts and the paths index, at the log position they were folded up
to, written a slice at a time in compressed pieces (common/statestore). Then it trims the
log (XTRIM MINID) to the oldest of: the snapshot's position, the projector's position,
every consumer group's last delivered entry and oldest pending entry, and the newest
LOG_RETENTION_MIN_ENTRIES entries. So no group loses an entry it still has to read or
acknowledge, and a replay starts from the snapshot and folds what follows it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import msgspec

from cefmp4.common.config import Settings
from cefmp4.common.errors import LogError, SnapshotError
from cefmp4.common.eventlog import EventLog, Redis, text_of
from cefmp4.common.events import now_ms
from cefmp4.common.keys import Keys
from cefmp4.common.lease import Lease
from cefmp4.common.statestore import StateReader, StateWriter

logger = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_S = 60.0
RETRY_SOON_MS = 5_000
# The projector folds nothing while it snapshots: snapshots take at most this share of its time.
MAX_DUTY = 0.1

# Everything in one script, so no group can move between the look and the trim. It also
# records how far it could trim and what held it back, for `cefmp4 status`.
_TRIM = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
-- ARGV[2], ARGV[3]: the snapshot's and the projector's positions, read just before: both
-- only ever move forward, so an older value only makes the trim keep more.
local floor = ARGV[2]
local why = 'the snapshot'
local function lower(id, reason)
  local ms, seq = parse(id)
  local fms, fseq = parse(floor)
  if ms < fms or (ms == fms and seq < fseq) then
    floor = id
    why = reason
  end
end
lower(ARGV[3], 'the projector')
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name
  for i = 1, #group, 2 do
    if group[i] == 'name' then
      name = group[i + 1]
    elseif group[i] == 'last-delivered-id' then
      lower(group[i + 1], 'group ' .. tostring(name) .. ' reading')
    end
  end
  local pending = redis.call('XPENDING', KEYS[1], name)
  if pending[1] > 0 then
    lower(pending[2], 'group ' .. name .. ' pending entries')
  end
end
local removed = 0
local keep = tonumber(ARGV[1])
local newest = {}
if keep > 0 then
  newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', keep)
end
if keep > 0 and #newest < keep then
  why = 'fewer than LOG_RETENTION_MIN_ENTRIES entries'
  floor = '0-0'
else
  if keep > 0 then
    lower(newest[#newest][1], 'LOG_RETENTION_MIN_ENTRIES')
  end
  removed = redis.call('XTRIM', KEYS[1], 'MINID', floor)
end
redis.call('HSET', KEYS[2], 'floor', floor, 'held_by', why, 'at_ms', ARGV[4])
return {removed, floor, why}
"""


class Trimmed(NamedTuple):
    entries: int
    min_id: str
    held_by: str  # what the log could not be trimmed past


async def take_snapshot(
    redis: Redis, keys: Keys, position: bytes, lease: Lease | None = None
) -> int | None:
    """Snapshot the projected state, which must stand at `position`, a slice at a time;
    the number of streams in it.

    Call from the projector between two batches. Nothing is kept (None) if the
    projection moved from `position` meanwhile, or if `lease` was taken over.
    """
    reader = StateReader(redis, keys)
    writer = StateWriter(redis, keys, lease)
    return await writer.put_snapshot(position, now_ms(), reader.slices(), reader.paths())


async def trim(redis: Redis, keys: Keys, min_entries: int) -> Trimmed:
    """Drop the entries nobody needs any more: see the module docstring."""
    reader = StateReader(redis, keys)
    snapshot = await reader.snapshot_info()
    if snapshot is None:
        return Trimmed(0, "", "no snapshot yet")
    position = await reader.position()
    script = redis.register_script(_TRIM)
    removed, floor, why = await script(
        keys=[keys.events, keys.retention_report],
        args=[min_entries, snapshot.position, position, now_ms()],
    )
    return Trimmed(int(removed), text_of(floor), text_of(why))


class TrimReport(msgspec.Struct, frozen=True):
    """How far the log was last trimmed, what held it back, and when."""

    floor: str
    held_by: str
    at_ms: int


async def last_trim(redis: Redis, keys: Keys) -> TrimReport | None:
    raw: Any = await redis.hmget(keys.retention_report, ["floor", "held_by", "at_ms"])
    floor, held_by, at_ms = raw
    if floor is None or held_by is None or at_ms is None:
        return None
    return TrimReport(text_of(floor), text_of(held_by), int(at_ms))



def next_due_ms(started_ms: int, ended_ms: int, interval_ms: int, done: bool) -> int:
    """When to snapshot next, after one that ran from `started_ms` to `ended_ms`."""
    if not done:
        return ended_ms + RETRY_SOON_MS
    took_ms = ended_ms - started_ms
    return ended_ms + max(interval_ms, int(took_ms * (1 / MAX_DUTY - 1)))


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
                info = await StateReader(self.redis, self.keys).snapshot_info()
                self._due_ms = info.created_at_ms + self.interval_ms if info else now
            if now < self._due_ms:
                return
            done = await self.run(position)
            self._due_ms = next_due_ms(now, now_ms(), self.interval_ms, done is not None)
        except (LogError, SnapshotError) as exc:
            logger.warning("log retention failed: %s; trying again later", exc)
            self._due_ms = now + min(self.interval_ms, int(RETRY_AFTER_FAILURE_S * 1000))

    async def run(self, position: bytes) -> Trimmed | None:
        started = time.monotonic()
        streams = await take_snapshot(self.redis, self.keys, position, self.lease)
        if streams is None:
            return None  # the projection moved or the lease went; the next tick retries
        trimmed = await trim(self.redis, self.keys, self.min_entries)
        logger.info(
            "snapshot at %s (%d streams) in %.2fs; trimmed %d entries older than %s (held by %s)",
            position.decode(),
            streams,
            time.monotonic() - started,
            trimmed.entries,
            trimmed.min_id,
            trimmed.held_by,
        )
        return trimmed
