"""The event log on a Redis stream: append, read through a consumer group, ack, dead-letter."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from common import metrics
from common.config import Settings
from common.events import FIELD, AnyEvent, encode
from common.keys import GROUPS, Keys

logger = logging.getLogger(__name__)

Redis = aioredis.Redis

# XADD and the path's handoff marker in one step, so whoever takes the path over next
# knows which event the projection must have reached before its state can be trusted.
_APPEND_FOR_PATH = """
local id = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], id, 'PX', ARGV[3])
return id
"""

HANDOFF_TTL_MS = 7 * 24 * 3600 * 1000


class Entry(NamedTuple):
    id: bytes
    fields: dict[bytes, bytes]


def connect(settings: Settings) -> Redis:
    return aioredis.Redis.from_url(
        settings.redis_connection_url,
        decode_responses=False,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=15,
        max_connections=64,
    )


def entry_id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class EventLog:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._append_for_path = redis.register_script(_APPEND_FOR_PATH)

    async def append(self, event: AnyEvent) -> bytes:
        entry_id = await self.redis.xadd(self.keys.events, {FIELD: encode(event)})
        return cast(bytes, entry_id)

    async def append_for_path(self, event: AnyEvent, path: str) -> bytes:
        entry_id: bytes = await self._append_for_path(
            keys=[self.keys.events, self.keys.path_handoff(path)],
            args=[FIELD, encode(event), HANDOFF_TTL_MS],
        )
        return entry_id

    async def ensure_groups(self) -> None:
        for group in GROUPS:
            try:
                await self.redis.xgroup_create(self.keys.events, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(self, group: str, consumer: str, count: int, block_ms: int) -> list[Entry]:
        response: Any = await self.redis.xreadgroup(
            group, consumer, {self.keys.events: ">"}, count=count, block=block_ms
        )
        return _entries(response)

    async def claim_stale(
        self, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Entry]:
        """Take over entries another consumer read but never acknowledged."""
        response: Any = await self.redis.xautoclaim(
            self.keys.events, group, consumer, min_idle_ms, start_id="0-0", count=count
        )
        claimed = response[1] if response else []
        return [Entry(entry_id, fields) for entry_id, fields in claimed if fields is not None]

    async def deliveries(self, group: str, entry_ids: list[bytes]) -> dict[bytes, int]:
        """How many times each pending entry has been delivered."""
        if not entry_ids:
            return {}
        lowest = min(entry_ids, key=entry_id_tuple)
        highest = max(entry_ids, key=entry_id_tuple)
        wanted = set(entry_ids)
        found: dict[bytes, int] = {}
        pending: Any = await self.redis.xpending_range(
            self.keys.events, group, min=lowest, max=highest, count=10_000
        )
        for item in pending:
            if item["message_id"] in wanted:
                found[item["message_id"]] = int(item["times_delivered"])
        return found

    async def ack(self, group: str, *entry_ids: bytes) -> None:
        if entry_ids:
            await self.redis.xack(self.keys.events, group, *entry_ids)

    async def dead_letter(self, group: str, entry: Entry, reason: str) -> None:
        """Set a poisonous entry aside with the reason, and acknowledge it."""
        logger.warning("dead-lettering entry %s for %s: %s", entry.id.decode(), group, reason)
        record: dict[Any, Any] = {b"reason": reason, b"group": group, b"entry_id": entry.id}
        record.update({b"field:" + name: value for name, value in entry.fields.items()})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dead, record)
            pipe.xack(self.keys.events, group, entry.id)
            await pipe.execute()
        metrics.count_dead_letter(group)


def _entries(response: Any) -> list[Entry]:
    entries: list[Entry] = []
    for _stream, items in response or []:
        entries.extend(Entry(entry_id, fields) for entry_id, fields in items)
    return entries
