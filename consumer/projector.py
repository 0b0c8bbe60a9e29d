"""The projector: folds the log into the state hashes, exactly once, in log order.

The position of the last applied entry is written in the same MULTI/EXEC as the state
it produced (and the XACK), so a crash anywhere neither skips nor repeats an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from msgspec.structs import replace
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError, WatchError

from common.errors import CefError, CorruptEvent
from common.events import AnyEvent, FileEvent, PartUploaded, StreamEvent, decode, now_ms
from common.keys import PROJECTOR, Keys
from common.lease import Lease
from common.log import Entry, EventLog, Redis, entry_id_tuple
from common.state import StreamState, state_from_hashes
from consumer.projection import apply
from consumer.retention import Retention, Snapshot, encode_snapshot, load_snapshot

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

    def write(self, pipe: Pipeline, keys: Keys) -> None:
        for stream_id in self.changed_streams:
            state = self.streams[stream_id]
            write_stream(pipe, keys, state, self.changed_parts.get(stream_id, ()))
        if self.changed_paths:
            pipe.hset(keys.paths, mapping={p: self.paths[p] for p in self.changed_paths})
        self.changed_streams.clear()
        self.changed_parts.clear()
        self.changed_paths.clear()


def write_stream(
    pipe: Pipeline, keys: Keys, state: StreamState, part_numbers: Iterable[int]
) -> None:
    """Queue the writes of one stream's hash, the given parts and its index entry."""
    pipe.hset(keys.stream(state.stream_id), mapping=state.scalar_fields())  # type: ignore[arg-type]
    parts = {n: state.parts[n].encode() for n in part_numbers}
    if parts:
        pipe.hset(keys.parts(state.stream_id), mapping=parts)  # type: ignore[arg-type]
    pipe.zadd(keys.streams, {state.stream_id: state.created_at_ms})


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

    def __init__(
        self,
        log: EventLog,
        consumer: str,
        lease: Lease | None = None,
        retention: Retention | None = None,
    ) -> None:
        self.log = log
        self.redis = log.redis
        self.keys = log.keys
        self.consumer = consumer
        self.lease = lease
        self.retention = retention

    async def run(self, stop: asyncio.Event) -> None:
        """Apply entries until `stop` is set; call only while holding the projector lease."""
        position = await load_position(self.redis, self.keys)
        # Entries delivered to an earlier projector but not applied come round again.
        await self.redis.xgroup_setid(self.keys.events, PROJECTOR, position)
        await ack_pending_up_to(self.redis, self.keys, PROJECTOR, position)
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
            if self.retention is not None:
                await self.retention.tick(position)

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
                if not await self.lease.fence(pipe):
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


async def ack_pending_up_to(redis: Redis, keys: Keys, group: str, position: bytes) -> None:
    """Acknowledge `group`'s pending entries up to `position`, which are applied already.

    They are left behind when a replay moves the position past entries a fenced-off
    projector had read; nobody would ever acknowledge them, and retention keeps every
    entry from the oldest pending one on.
    """
    while True:
        pending: Any = await redis.xpending_range(
            keys.events, group, min="-", max=position, count=1000
        )
        if not pending:
            return
        await redis.xack(keys.events, group, *(item["message_id"] for item in pending))


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


async def replay(log: EventLog, batch: int = 5000, lease: Lease | None = None) -> int:
    """Rebuild every state hash from the log; returns the number of entries folded.

    Starts from the retention snapshot when there is one, else from position 0. Call
    while holding the projector lease (pass it to fence the swap with it). The new
    state is written aside under a scratch prefix, then renamed over the old one in one
    MULTI/EXEC, with the position and a fresh snapshot: readers see either the old
    state or the new, never a mix.
    """
    redis, keys = log.redis, log.keys
    fold = Fold()
    last_id = b"0-0"
    snapshot = await load_snapshot(redis, keys)
    if snapshot is not None:
        logger.info("replaying from the snapshot at %s", snapshot.position.decode())
        fold.streams = {state.stream_id: state for state in snapshot.streams}
        fold.paths = dict(snapshot.paths)
        last_id = snapshot.position
    elif await _trimmed(redis, keys):
        raise CefError(
            f"{keys.events} was trimmed but {keys.snapshot} is missing: "
            "a replay from what is left would lose state"
        )
    count = 0
    async with contextlib.aclosing(_read_after(redis, keys.events, last_id, batch)) as batches:
        async for entries in batches:
            for entry_id, fields in entries:
                try:
                    event = decode(fields)
                except CorruptEvent:
                    continue
                fold.add(entry_id, event)
            count += len(entries)
            last_id = entries[-1][0]
    scratch = Keys(keys.replay_scratch)
    await _delete_matching(redis, scratch.prefix + "*")  # left by an interrupted replay
    await _write_aside(redis, scratch, fold)
    try:
        await _swap(redis, keys, scratch, fold, last_id, lease)
    except (LeaseLost, WatchError) as exc:
        await _delete_matching(redis, scratch.prefix + "*")
        raise CefError("another process took the projector lease; replay changed nothing") from exc
    return count


async def replay_fenced(log: EventLog, owner: str) -> int:
    """Replay while holding the projector lease, taken from whoever holds it.

    The running projector's writes are fenced by its lease, so taking it stops them;
    the projector takes the lease back once the replay has released it.
    """
    lease = Lease(log.redis, log.keys.lease(PROJECTOR), owner)
    await lease.take()
    keeper = asyncio.create_task(lease.keep())
    try:
        return await replay(log, lease=lease)
    finally:
        keeper.cancel()
        await asyncio.wait({keeper})
        await lease.release()


async def _trimmed(redis: Redis, keys: Keys) -> bool:
    """Whether entries were ever removed from the log (Redis 7 tells; older: assume not)."""
    try:
        info: dict[str, Any] = await redis.xinfo_stream(keys.events)
    except ResponseError:
        return False  # no log at all
    added = info.get("entries-added")
    return added is not None and int(added) > int(info["length"])


async def _read_after(
    redis: Redis, key: str, after: bytes, batch: int
) -> AsyncGenerator[list[tuple[bytes, dict[bytes, bytes]]], None]:
    """The entries after `after`, in batches; the next batch is fetched while one is used."""
    start = "(" + after.decode()
    fetch: asyncio.Task[Any] = asyncio.ensure_future(
        redis.xrange(key, min=start, max="+", count=batch)
    )
    try:
        while True:
            entries = await fetch
            if not entries:
                return
            start = "(" + entries[-1][0].decode()
            fetch = asyncio.ensure_future(redis.xrange(key, min=start, max="+", count=batch))
            yield entries
    finally:
        fetch.cancel()
        await asyncio.wait({fetch})


async def _delete_matching(redis: Redis, pattern: str) -> None:
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await redis.unlink(*batch)
            batch = []
    if batch:
        await redis.unlink(*batch)


async def _write_aside(redis: Redis, scratch: Keys, fold: Fold, chunk: int = 500) -> None:
    states = list(fold.streams.values())
    for start in range(0, len(states), chunk):
        async with redis.pipeline(transaction=False) as pipe:
            for state in states[start : start + chunk]:
                write_stream(pipe, scratch, state, state.parts)
            await pipe.execute()
    paths = list(fold.paths.items())
    for start in range(0, len(paths), chunk * 10):
        await redis.hset(scratch.paths, mapping=dict(paths[start : start + chunk * 10]))


async def _swap(
    redis: Redis, keys: Keys, scratch: Keys, fold: Fold, position: bytes, lease: Lease | None
) -> None:
    old = [key async for key in redis.scan_iter(match=keys.stream("*"), count=1000)]
    snapshot = Snapshot(position, now_ms(), list(fold.streams.values()), fold.paths)
    async with redis.pipeline(transaction=True) as pipe:
        if lease is not None:
            if not await lease.fence(pipe):
                raise LeaseLost(lease.key)
            pipe.multi()  # type: ignore[no-untyped-call]
        for start in range(0, len(old), 1000):
            pipe.unlink(*old[start : start + 1000])
        pipe.unlink(keys.streams, keys.paths, keys.snapshot)
        for stream_id, state in fold.streams.items():
            pipe.rename(scratch.stream(stream_id), keys.stream(stream_id))
            if state.parts:
                pipe.rename(scratch.parts(stream_id), keys.parts(stream_id))
        if fold.streams:
            pipe.rename(scratch.streams, keys.streams)
        if fold.paths:
            pipe.rename(scratch.paths, keys.paths)
        pipe.hset(keys.snapshot, mapping=encode_snapshot(snapshot))  # type: ignore[arg-type]
        pipe.set(keys.projector_position, position)
        pipe.xgroup_setid(keys.events, PROJECTOR, position)
        await pipe.execute()
