"""Writes of the projected state: the projector, replay and retention only."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from cefmp4.common.errors import LeaseLost, StateMoved
from cefmp4.common.eventlog import Redis
from cefmp4.common.keys import PROJECTOR, Keys
from cefmp4.common.lease import Lease
from cefmp4.common.statestore._layout import (
    BATCH,
    PATH_BATCH,
    PATH_CHUNK,
    SNAPSHOT_FORMAT,
    STATUSES,
    STREAM_CHUNK,
    encode_chunk,
    part_value,
    stream_fields,
)
from cefmp4.common.streamstate import StreamState


def _status_score(state: StreamState) -> int:
    """Open streams sort by creation, finished ones by when they ended."""
    if not state.terminal:
        return state.created_at_ms
    return state.completed_at_ms or state.updated_at_ms


def _put_stream(pipe: Pipeline, keys: Keys, state: StreamState, parts: Iterable[int]) -> None:
    stream_id = state.stream_id
    pipe.hset(keys.stream(stream_id), mapping=stream_fields(state))  # type: ignore[arg-type]
    values = {n: part_value(state.parts[n]) for n in parts}
    if values:
        pipe.hset(keys.parts(stream_id), mapping=values)  # type: ignore[arg-type]
    pipe.zadd(keys.streams, {stream_id: state.created_at_ms})
    # Every write states the whole membership, so the indexes cannot drift from the hashes.
    for status in STATUSES:
        if status == state.status:
            pipe.zadd(keys.status_index(status), {stream_id: _status_score(state)})
        else:
            pipe.zrem(keys.status_index(status), stream_id)
    if state.status == "failed" and state.retry_at_ms > 0:
        pipe.zadd(keys.retries, {stream_id: state.retry_at_ms})
    else:
        pipe.zrem(keys.retries, stream_id)


class StateChanges:
    """Writes queued in one fenced MULTI/EXEC (see StateWriter.transaction)."""

    def __init__(self, pipe: Pipeline, keys: Keys) -> None:
        self._pipe = pipe
        self._keys = keys

    def put_stream(self, state: StreamState, part_numbers: Iterable[int]) -> None:
        """The stream's hash, the given parts of it, and its index entries."""
        _put_stream(self._pipe, self._keys, state, part_numbers)

    def prune(self, stream_id: str, path: str | None) -> None:
        """Drop a finished stream, its parts and index entries; and `path` from the paths
        index (pass it only when the stream is the path's latest)."""
        keys = self._keys
        self._pipe.unlink(keys.stream(stream_id), keys.parts(stream_id))
        self._pipe.zrem(keys.streams, stream_id)
        for status in STATUSES:
            self._pipe.zrem(keys.status_index(status), stream_id)
        self._pipe.zrem(keys.retries, stream_id)
        if path is not None:
            self._pipe.hdel(keys.paths, path)
        self._pipe.incr(keys.pruned)

    def put_paths(self, paths: Mapping[str, str]) -> None:
        if paths:
            self._pipe.hset(self._keys.paths, mapping=dict(paths))  # type: ignore[arg-type]

    def set_position(self, entry_id: bytes) -> None:
        self._pipe.set(self._keys.projector_position, entry_id)

    def publish_completion(self, fields: Mapping[str, str], max_entries: int) -> None:
        """Append a completed recording to the public completions stream, in the same step
        as the state that completed it, so it is published exactly once."""
        self._pipe.xadd(
            self._keys.completed,
            dict(fields),  # type: ignore[arg-type]
            maxlen=max_entries,
            approximate=True,
        )

    def ack(self, group: str, entry_ids: Sequence[bytes]) -> None:
        """Acknowledge log entries in the same step as the state they produced."""
        if entry_ids:
            self._pipe.xack(self._keys.events, group, *entry_ids)


class StateWriter:
    """The only writer of the projected state. With `lease` (the projector's), every write
    is fenced by it: if the lease changed hands, nothing is written and LeaseLost is raised."""

    def __init__(self, redis: Redis, keys: Keys, lease: Lease | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.lease = lease

    async def _fence(self, pipe: Pipeline) -> None:
        if self.lease is not None and not await self.lease.fence(pipe):
            raise LeaseLost(f"{self.lease.key} is held by another process")

    @contextlib.asynccontextmanager
    async def transaction(self, at: bytes | None = None) -> AsyncIterator[StateChanges]:
        """Queue changes in the block; they are applied at its end in one MULTI/EXEC.

        With `at`, only onto the state at that position; else StateMoved.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            await self._fence(pipe)
            if at is not None:
                await pipe.watch(self.keys.projector_position)
                stored = await pipe.get(self.keys.projector_position) or b"0-0"
                if stored != at:
                    raise StateMoved(f"the state is at {stored!r}, not {at!r}")
            pipe.multi()  # type: ignore[no-untyped-call]
            yield StateChanges(pipe, self.keys)
            try:
                await pipe.execute()
            except WatchError as exc:
                raise LeaseLost("the projector lease changed hands during a write") from exc

    # --- the snapshot -------------------------------------------------------------

    async def put_snapshot(
        self,
        position: bytes,
        created_at_ms: int,
        stream_slices: AsyncIterable[list[StreamState]],
        path_slices: AsyncIterable[dict[str, str]],
    ) -> int | None:
        """Store a snapshot of the state at `position`, a slice at a time; the number of
        streams in it, or None (nothing kept) if the projection moved from `position`
        meanwhile or the lease changed hands.

        The pieces are written under a new generation first; one fenced MULTI/EXEC then
        points the snapshot hash at them, and the old generation's pieces are deleted.
        """
        generation = uuid.uuid4().hex[:12]
        streams, stream_chunks, path_chunks = await self._write_pieces(
            generation, stream_slices, path_slices
        )
        fields = _snapshot_fields(
            generation, position, created_at_ms, streams, stream_chunks, path_chunks
        )
        old = await self._generation()
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(self.keys.projector_position)
            moved = await pipe.get(self.keys.projector_position) != position
            try:
                if not moved:
                    await self._fence(pipe)
            except LeaseLost:
                moved = True
            if moved:
                await pipe.reset()  # type: ignore[no-untyped-call]
                await self._delete_generation(generation, stream_chunks, path_chunks)
                return None
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.delete(self.keys.snapshot)
            pipe.hset(self.keys.snapshot, mapping=fields)  # type: ignore[arg-type]
            try:
                await pipe.execute()
            except WatchError:
                await self._delete_generation(generation, stream_chunks, path_chunks)
                return None
        if old is not None:
            await self._delete_generation(*old)
        return streams

    async def _write_pieces(
        self,
        generation: str,
        stream_slices: AsyncIterable[list[StreamState]],
        path_slices: AsyncIterable[dict[str, str]],
    ) -> tuple[int, int, int]:
        streams = stream_chunks = path_chunks = 0
        async for states in stream_slices:
            if states:
                key = self.keys.snapshot_chunk(generation, f"{STREAM_CHUNK}{stream_chunks}")
                await self.redis.set(key, encode_chunk(states))
                stream_chunks += 1
                streams += len(states)
        async for paths in path_slices:
            if paths:
                key = self.keys.snapshot_chunk(generation, f"{PATH_CHUNK}{path_chunks}")
                await self.redis.set(key, encode_chunk(paths))
                path_chunks += 1
        return streams, stream_chunks, path_chunks

    async def _generation(self) -> tuple[str, int, int] | None:
        """The current snapshot's generation and piece counts (None: none, or format 1)."""
        raw: list[Any] = await self.redis.hmget(
            self.keys.snapshot, ["generation", "stream_chunks", "path_chunks"]
        )
        generation, stream_chunks, path_chunks = raw
        if generation is None:
            return None
        return generation.decode(), int(stream_chunks or 0), int(path_chunks or 0)

    async def _delete_generation(
        self, generation: str, stream_chunks: int, path_chunks: int
    ) -> None:
        names = [f"{STREAM_CHUNK}{n}" for n in range(stream_chunks)]
        names += [f"{PATH_CHUNK}{n}" for n in range(path_chunks)]
        for start in range(0, len(names), BATCH):
            keys = [self.keys.snapshot_chunk(generation, n) for n in names[start : start + BATCH]]
            await self.redis.unlink(*keys)

    # --- replay -------------------------------------------------------------------

    async def replace_all(
        self,
        position: bytes,
        created_at_ms: int,
        streams: list[StreamState],
        paths: dict[str, str],
        completions: Sequence[Mapping[str, str]] = (),
        max_completions: int = 1,
    ) -> None:
        """Make `streams` and `paths` the whole state, at `position`: for replay.

        The new state is written aside under the replay prefix first, then renamed over the
        old one in one MULTI/EXEC with the position and the projector group's position:
        readers see the old state or the new, never a mix; `completions` (those the projector
        had not published) are published in that step too. Then it is snapshotted. LeaseLost
        if the lease changed hands (nothing is changed then).
        """
        scratch = Keys(self.keys.replay_scratch)
        await self._delete_matching(scratch.prefix + "*")  # left by an interrupted replay
        try:
            await self._write_aside(scratch, streams, paths)
            await self._swap(scratch, position, streams, paths, completions, max_completions)
        except LeaseLost:
            await self._delete_matching(scratch.prefix + "*")
            raise
        written = await self.put_snapshot(
            position, created_at_ms, _slices(streams), _slices_of_paths(paths)
        )
        if written is None:
            raise LeaseLost("the projector lease changed hands before the snapshot")

    async def _write_aside(
        self, scratch: Keys, streams: list[StreamState], paths: dict[str, str]
    ) -> None:
        async for batch in _slices(streams):
            async with self.redis.pipeline(transaction=False) as pipe:
                for state in batch:
                    _put_stream(pipe, scratch, state, state.parts)
                await pipe.execute()
        items = list(paths.items())
        for start in range(0, len(items), PATH_BATCH):
            await self.redis.hset(scratch.paths, mapping=dict(items[start : start + PATH_BATCH]))

    async def _swap(
        self,
        scratch: Keys,
        position: bytes,
        streams: list[StreamState],
        paths: dict[str, str],
        completions: Sequence[Mapping[str, str]],
        max_completions: int,
    ) -> None:
        keys = self.keys
        old = [key async for key in self.redis.scan_iter(match=keys.stream("*"), count=1000)]
        indexes = [keys.streams, keys.retries, *(keys.status_index(s) for s in STATUSES)]
        async with self.redis.pipeline(transaction=True) as pipe:
            await self._fence(pipe)
            pipe.multi()  # type: ignore[no-untyped-call]
            for start in range(0, len(old), 1000):
                pipe.unlink(*old[start : start + 1000])
            pipe.unlink(keys.paths, *indexes)
            for state in streams:
                pipe.rename(scratch.stream(state.stream_id), keys.stream(state.stream_id))
                if state.parts:
                    pipe.rename(scratch.parts(state.stream_id), keys.parts(state.stream_id))
            for index in indexes:
                scratch_index = scratch.prefix + index.removeprefix(keys.prefix)
                pipe.copy(scratch_index, index, replace=True)
                pipe.unlink(scratch_index)
            if paths:
                pipe.rename(scratch.paths, keys.paths)
            pipe.set(keys.projector_position, position)
            pipe.xgroup_setid(keys.events, PROJECTOR, position)
            changes = StateChanges(pipe, keys)
            for fields in completions:
                changes.publish_completion(fields, max_completions)
            try:
                await pipe.execute()
            except WatchError as exc:
                raise LeaseLost("the projector lease changed hands during the swap") from exc

    async def _delete_matching(self, pattern: str) -> None:
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await self.redis.unlink(*batch)
                batch = []
        if batch:
            await self.redis.unlink(*batch)


def _snapshot_fields(
    generation: str,
    position: bytes,
    created_at_ms: int,
    streams: int,
    stream_chunks: int,
    path_chunks: int,
) -> dict[str, str | int]:
    return {
        "format": SNAPSHOT_FORMAT,
        "generation": generation,
        "position": position.decode(),
        "created_at_ms": created_at_ms,
        "streams": streams,
        "stream_chunks": stream_chunks,
        "path_chunks": path_chunks,
    }


async def _slices(streams: list[StreamState]) -> AsyncIterator[list[StreamState]]:
    for start in range(0, len(streams), BATCH):
        yield streams[start : start + BATCH]


async def _slices_of_paths(paths: dict[str, str]) -> AsyncIterator[dict[str, str]]:
    items = list(paths.items())
    for start in range(0, len(items), PATH_BATCH):
        yield dict(items[start : start + PATH_BATCH])
