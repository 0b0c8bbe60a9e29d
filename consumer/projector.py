"""The projector: folds the log into the state hashes, exactly once, in log order.

The position of the last applied entry is written in the same MULTI/EXEC as the state
it produced (and the XACK), so a crash anywhere neither skips nor repeats an event.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, cast

from msgspec.structs import replace
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from common.errors import CorruptEvent
from common.events import AnyEvent, FileEvent, PartUploaded, StreamEvent, decode
from common.keys import PROJECTOR, Keys
from common.lease import Lease
from common.log import Entry, EventLog, Redis, entry_id_tuple
from common.state import StreamState, state_from_hashes
from consumer.projection import apply

logger = logging.getLogger(__name__)

BATCH = 500


@dataclass
class Fold:
    """Streams touched by a run of events, with the parts each one changed."""

    streams: dict[str, StreamState] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    changed_streams: set[str] = field(default_factory=set)
    changed_parts: dict[str, set[int]] = field(default_factory=dict)
    changed_paths: set[str] = field(default_factory=set)

    def stream_id_for(self, event: AnyEvent) -> str | None:
        if isinstance(event, StreamEvent):
            return event.stream_id
        if isinstance(event, FileEvent):
            return self.paths.get(event.path)
        return None

    def add(self, entry_id: bytes, event: AnyEvent) -> None:
        stream_id = self.stream_id_for(event)
        if stream_id is None:
            return
        before = self.streams.get(stream_id)
        after = apply(before, event)
        if after is None or after is before:
            return
        after = replace(after, last_event_id=entry_id.decode())
        self.streams[stream_id] = after
        self.changed_streams.add(stream_id)
        if before is None:
            self.paths[after.path] = stream_id
            self.changed_paths.add(after.path)
        if isinstance(event, PartUploaded):
            self.changed_parts.setdefault(stream_id, set()).add(event.part_number)

    def write(self, pipe: Pipeline, keys: Keys, *, all_parts: bool = False) -> None:
        for stream_id in self.changed_streams:
            state = self.streams[stream_id]
            pipe.hset(keys.stream(stream_id), mapping=state.scalar_fields())  # type: ignore[arg-type]
            numbers = state.parts.keys() if all_parts else self.changed_parts.get(stream_id, ())
            parts = {n: state.parts[n].encode() for n in numbers}
            if parts:
                pipe.hset(keys.parts(stream_id), mapping=parts)  # type: ignore[arg-type]
            pipe.zadd(keys.streams, {stream_id: state.created_at_ms})
        if self.changed_paths:
            pipe.hset(keys.paths, mapping={p: self.paths[p] for p in self.changed_paths})
        self.changed_streams.clear()
        self.changed_parts.clear()
        self.changed_paths.clear()


async def load_position(redis: Redis, keys: Keys) -> bytes:
    position = cast(bytes | None, await redis.get(keys.projector_position))
    return position or b"0-0"


async def read_state(redis: Redis, keys: Keys, stream_id: str) -> StreamState | None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.stream(stream_id))
        pipe.hgetall(keys.parts(stream_id))
        fields, parts = await pipe.execute()
    return state_from_hashes(fields, parts)


class LeaseLost(Exception):
    pass


class Projector:
    """Applies the log to the state; with `lease`, writes only while holding it."""

    def __init__(self, log: EventLog, consumer: str, lease: Lease | None = None) -> None:
        self.log = log
        self.redis = log.redis
        self.keys = log.keys
        self.consumer = consumer
        self.lease = lease

    async def run(self, stop: asyncio.Event) -> None:
        """Apply entries until `stop` is set; call only while holding the projector lease."""
        position = await load_position(self.redis, self.keys)
        # Entries delivered to an earlier projector but not applied come round again.
        await self.redis.xgroup_setid(self.keys.events, PROJECTOR, position)
        fold = Fold()
        while not stop.is_set():
            entries = await self.log.read(PROJECTOR, self.consumer, count=BATCH, block_ms=500)
            if entries:
                try:
                    position = await self._apply_batch(fold, entries, position)
                except (LeaseLost, WatchError):
                    logger.info("projector lease taken over; stopping")
                    return
                if len(fold.streams) > 10_000:
                    fold = Fold()

    async def _apply_batch(self, fold: Fold, entries: list[Entry], position: bytes) -> bytes:
        last = entry_id_tuple(position)
        for entry in entries:
            if entry_id_tuple(entry.id) <= last:
                continue
            try:
                event = decode(entry.fields)
            except CorruptEvent:
                continue  # the uploaders' group dead-letters it; state has nothing to apply
            await self._load(fold, event)
            fold.add(entry.id, event)
        new_position = max(entries[-1].id, position, key=entry_id_tuple)
        async with self.redis.pipeline(transaction=True) as pipe:
            if self.lease is not None:
                # Fencing: the write fails if anyone (a replay) took the lease meanwhile.
                await pipe.watch(self.lease.key)
                if await pipe.get(self.lease.key) != self.lease.owner.encode():
                    raise LeaseLost(self.lease.key)
                pipe.multi()  # type: ignore[no-untyped-call]
            fold.write(pipe, self.keys)
            pipe.set(self.keys.projector_position, new_position)
            pipe.xack(self.keys.events, PROJECTOR, *(e.id for e in entries))
            await pipe.execute()
        return new_position

    async def _load(self, fold: Fold, event: AnyEvent) -> None:
        if isinstance(event, FileEvent) and event.path not in fold.paths:
            stream_id = cast(bytes | None, await self.redis.hget(self.keys.paths, event.path))
            if stream_id is not None:
                fold.paths[event.path] = stream_id.decode()
        stream_id_str = fold.stream_id_for(event)
        if stream_id_str is not None and stream_id_str not in fold.streams:
            state = await read_state(self.redis, self.keys, stream_id_str)
            if state is not None:
                fold.streams[stream_id_str] = state


async def wait_for_position(redis: Redis, keys: Keys, entry_id: bytes, timeout_s: float) -> bool:
    """Wait until the projection has applied `entry_id`; False on timeout."""
    target = entry_id_tuple(entry_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = 0.005
    while True:
        position = await load_position(redis, keys)
        if entry_id_tuple(position) >= target:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


async def replay(log: EventLog, batch: int = 5000) -> int:
    """Rebuild every state hash from position 0; returns the number of entries read.

    Call while holding the projector lease. The new state replaces the old in one
    MULTI/EXEC, so readers see either the old state or the new, never a mix.
    """
    redis, keys = log.redis, log.keys
    fold = Fold()
    start = "-"
    count = 0
    last_id = b"0-0"
    while True:
        response: Any = await redis.xrange(keys.events, min=start, max="+", count=batch)
        if not response:
            break
        for entry_id, fields in response:
            count += 1
            last_id = entry_id
            try:
                event = decode(fields)
            except CorruptEvent:
                continue
            fold.add(entry_id, event)
        start = "(" + last_id.decode()
    old_keys = [key async for key in redis.scan_iter(match=keys.stream("*"), count=1000)]
    async with redis.pipeline(transaction=True) as pipe:
        if old_keys:
            pipe.delete(*old_keys)
        pipe.delete(keys.streams, keys.paths)
        fold.changed_streams.update(fold.streams)
        fold.changed_paths.update(fold.paths)
        fold.write(pipe, keys, all_parts=True)
        pipe.set(keys.projector_position, last_id)
        pipe.xgroup_setid(keys.events, PROJECTOR, last_id)
        await pipe.execute()
    return count
