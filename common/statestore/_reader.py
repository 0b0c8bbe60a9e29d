"""Typed reads of the projected state, bounded: slices of the indexes, pipelined hashes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from cefmp4.common.errors import SnapshotError
from cefmp4.common.eventlog import Redis, entry_id_tuple
from cefmp4.common.keys import Keys
from cefmp4.common.statestore._layout import (
    BATCH,
    FINISHED_STATUSES,
    OPEN_STATUSES,
    PATH_BATCH,
    PATH_CHUNK,
    STATUSES,
    STREAM_CHUNK,
    SUMMARY_FIELDS,
    Snapshot,
    SnapshotInfo,
    StreamSummary,
    decode_paths,
    decode_snapshot_v1,
    decode_states,
    decode_summary,
    snapshot_format,
    state_of,
)
from cefmp4.common.streamstate import StreamState


class StateReader:
    """Reads of the projected state that hold at most a slice of it at a time.

    Lists come from the sorted-set indexes (ZRANGE in slices of BATCH), hashes in pipelined
    batches; never KEYS, never a whole-range read, never everything at once.
    """

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    # --- one stream -------------------------------------------------------------

    async def stream(self, stream_id: str) -> StreamState | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.stream(stream_id))
            pipe.hgetall(self.keys.parts(stream_id))
            fields, parts = await pipe.execute()
        return state_of(fields, parts)

    async def stream_id_of(self, path: str) -> str | None:
        """Id of the path's latest stream."""
        stream_id = cast(bytes | None, await self.redis.hget(self.keys.paths, path))
        return stream_id.decode() if stream_id is not None else None

    async def streams_of_ids(self, ids: Sequence[str]) -> dict[str, StreamState]:
        """The kept streams among `ids`, parts included, in one round trip."""
        return {state.stream_id: state for state in await self._states(ids)}

    async def stream_ids_of(self, paths: Sequence[str]) -> dict[str, str]:
        """Id of each of `paths`' latest stream, for those that have one, in one round trip."""
        if not paths:
            return {}
        ids = cast(list[bytes | None], await self.redis.hmget(self.keys.paths, list(paths)))
        return {path: raw.decode() for path, raw in zip(paths, ids, strict=True) if raw is not None}

    async def latest(self, path: str) -> StreamState | None:
        """The path's latest stream."""
        stream_id = await self.stream_id_of(path)
        return await self.stream(stream_id) if stream_id is not None else None

    # --- many streams, a slice at a time ----------------------------------------------

    async def _id_slices(self, index: str) -> AsyncIterator[list[str]]:
        start = 0
        while True:
            chunk = cast(
                list[bytes],
                await self.redis.zrange(index, start, start + BATCH - 1),
            )
            if not chunk:
                return
            start += len(chunk)
            yield [raw.decode() for raw in chunk]

    async def _states(self, ids: Sequence[str], with_parts: bool = True) -> list[StreamState]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream_id in ids:
                pipe.hgetall(self.keys.stream(stream_id))
                if with_parts:
                    pipe.hgetall(self.keys.parts(stream_id))
            replies = await pipe.execute()
        if with_parts:
            pairs = zip(replies[::2], replies[1::2], strict=True)
            states = [state_of(fields, parts) for fields, parts in pairs]
        else:
            states = [state_of(fields, {}) for fields in replies]
        return [state for state in states if state is not None]

    async def _summaries(self, ids: Sequence[str]) -> list[StreamSummary]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream_id in ids:
                pipe.hmget(self.keys.stream(stream_id), SUMMARY_FIELDS)
            replies: list[list[bytes | None]] = await pipe.execute()
        return [s for s in map(decode_summary, replies) if s is not None]

    async def slices(self) -> AsyncIterator[list[StreamState]]:
        """Every kept stream's full state, parts included, in creation order, BATCH at a time."""
        async for ids in self._id_slices(self.keys.streams):
            yield await self._states(ids)

    async def _open_ids(self) -> AsyncIterator[list[str]]:
        for status in OPEN_STATUSES:
            async for ids in self._id_slices(self.keys.status_index(status)):
                yield ids

    async def open_streams(self) -> list[StreamState]:
        """Every stream still active or finalizing: the open work."""
        return [s async for ids in self._open_ids() for s in await self._states(ids)]

    async def open_summaries(self) -> list[StreamSummary]:
        return [s async for ids in self._open_ids() for s in await self._summaries(ids)]

    async def finished_summaries(self, count: int) -> list[StreamSummary]:
        """The `count` streams that ended last, newest first."""
        ends: list[tuple[bytes, float]] = []
        for status in FINISHED_STATUSES:
            ends += await self.redis.zrange(  # type: ignore[arg-type]
                self.keys.status_index(status), 0, count - 1, desc=True, withscores=True
            )
        ends.sort(key=lambda end: end[1], reverse=True)
        return await self._summaries([raw.decode() for raw, _ms in ends[:count]])

    async def failed_paths(self) -> list[str]:
        """Paths whose latest stream failed, sorted."""
        found: list[str] = []
        async for ids in self._id_slices(self.keys.status_index("failed")):
            found += [s.path for s in await self.latest_of_ids(ids)]
        return sorted(found)

    async def ended_before(self, status: str, ms: int, start: int, count: int) -> list[str]:
        """Ids of up to `count` streams in finished `status` that ended before `ms`, oldest
        first, from the `start`th on."""
        ids = cast(
            list[bytes],
            await self.redis.zrangebyscore(
                self.keys.status_index(status), "-inf", f"({ms}", start=start, num=count
            ),
        )
        return [raw.decode() for raw in ids]

    async def ended_within(
        self, status: str, from_ms: int, to_ms: int, start: int, count: int
    ) -> list[tuple[str, int]]:
        """Up to `count` streams in finished `status` that ended from `from_ms` on and before
        `to_ms`, oldest first, from the `start`th on: each id with when it ended."""
        found = cast(
            list[tuple[bytes, float]],
            await self.redis.zrangebyscore(
                self.keys.status_index(status),
                from_ms,
                f"({to_ms}",
                start=start,
                num=count,
                withscores=True,
            ),
        )
        return [(raw.decode(), int(score)) for raw, score in found]

    async def retry_owed(self, ids: Sequence[str]) -> set[str]:
        """Those of the failed streams `ids` still to be tried again: with a retry time, and
        still the latest stream of their path."""
        if not ids:
            return set()
        scores = await self.redis.zmscore(self.keys.retries, list(ids))
        waiting = [i for i, score in zip(ids, scores, strict=True) if score is not None]
        return {s.stream_id for s in (await self.latest_of_ids(waiting))}

    async def latest_of_ids(self, ids: Sequence[str]) -> list[StreamSummary]:
        """The summaries of those of `ids` that are their path's latest stream."""
        summaries = await self._summaries(ids)
        if not summaries:
            return []
        latest = cast(
            list[bytes | None], await self.redis.hmget(self.keys.paths, [s.path for s in summaries])
        )
        return [
            s
            for s, raw in zip(summaries, latest, strict=True)
            if raw is not None and raw.decode() == s.stream_id
        ]

    async def failed_to_retry(self) -> list[StreamSummary]:
        """Failed streams with a retry time, each the latest of its path."""
        found: list[StreamSummary] = []
        async for ids in self._id_slices(self.keys.retries):
            found += await self.latest_of_ids(ids)
        return found

    async def summaries(self) -> list[StreamSummary]:
        """One summary per kept stream, in creation order. Holds all of them: for tools."""
        return [
            s
            async for ids in self._id_slices(self.keys.streams)
            for s in await self._summaries(ids)
        ]

    async def latest_summaries(self, paths: Sequence[str]) -> list[StreamSummary | None]:
        """The summary of each path's latest stream, in order (None: no stream yet)."""
        found: list[StreamSummary | None] = []
        for start in range(0, len(paths), BATCH):
            batch = list(paths[start : start + BATCH])
            ids = cast(list[bytes | None], await self.redis.hmget(self.keys.paths, batch))
            async with self.redis.pipeline(transaction=False) as pipe:
                for raw in ids:
                    if raw is not None:
                        pipe.hmget(self.keys.stream(raw.decode()), SUMMARY_FIELDS)
                replies: list[list[bytes | None]] = await pipe.execute()
            answers = iter(replies)
            found.extend(decode_summary(next(answers)) if raw else None for raw in ids)
        return found

    async def latest_of(self, paths: Sequence[str]) -> dict[str, StreamState]:
        """The latest stream of each path that has one, its parts not read (`parts` is empty).

        Two round trips a BATCH of paths, however many there are.
        """
        found: dict[str, StreamState] = {}
        for start in range(0, len(paths), BATCH):
            batch = paths[start : start + BATCH]
            ids = cast(list[bytes | None], await self.redis.hmget(self.keys.paths, batch))
            # Keyed by each state's own path: a stream pruned meanwhile is left out, not
            # paired with the next path's.
            states = await self._states([raw.decode() for raw in ids if raw], with_parts=False)
            found.update((state.path, state) for state in states)
        return found

    async def open_paths(self) -> set[str]:
        """Paths whose latest stream is still open (active or finalizing)."""
        return {s.path for s in await self.open_summaries()}

    async def paths(self) -> AsyncIterator[dict[str, str]]:
        """The paths index (path -> id of its latest stream), PATH_BATCH entries at a time."""
        batch: dict[str, str] = {}
        async for path, stream_id in self.redis.hscan_iter(self.keys.paths, count=BATCH):
            batch[path.decode()] = stream_id.decode()
            if len(batch) >= PATH_BATCH:
                yield batch
                batch = {}
        if batch:
            yield batch

    # --- counts -------------------------------------------------------------------

    async def stream_count(self) -> int:
        """How many streams are kept."""
        return int(await self.redis.zcard(self.keys.streams))

    async def count_by_status(self) -> dict[str, int]:
        """How many kept streams are in each status: the sizes of the status indexes."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for status in STATUSES:
                pipe.zcard(self.keys.status_index(status))
            sizes: list[int] = await pipe.execute()
        return dict(zip(STATUSES, sizes, strict=True))

    async def pruned_count(self) -> int:
        """How many finished streams have been pruned so far."""
        return int(cast(bytes | None, await self.redis.get(self.keys.pruned)) or 0)

    # --- the projection's position ----------------------------------------------------

    async def stored_position(self) -> bytes | None:
        """Id of the last log entry the projection has folded in; None before the first."""
        return cast(bytes | None, await self.redis.get(self.keys.projector_position))

    async def position(self) -> bytes:
        """Id of the last log entry the projection has folded in (0-0: none)."""
        return await self.stored_position() or b"0-0"

    async def wait_for_position(self, entry_id: bytes, timeout_s: float) -> bool:
        """Wait until the projection has folded in `entry_id`; False on timeout."""
        target = entry_id_tuple(entry_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = 0.005
        while True:
            if entry_id_tuple(await self.position()) >= target:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    # --- the snapshot -------------------------------------------------------------

    async def snapshot(self) -> Snapshot | None:
        """The whole snapshot (for replay, which folds all that is kept anyway)."""
        fields = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.snapshot))
        if not fields:
            return None
        if snapshot_format(fields) == 1:
            return decode_snapshot_v1(fields)
        generation = fields[b"generation"].decode()
        streams: list[StreamState] = []
        paths: dict[str, str] = {}
        for kind, count in ((STREAM_CHUNK, b"stream_chunks"), (PATH_CHUNK, b"path_chunks")):
            for n in range(int(fields[count])):
                raw = cast(
                    bytes | None,
                    await self.redis.get(self.keys.snapshot_chunk(generation, f"{kind}{n}")),
                )
                if raw is None:
                    raise SnapshotError(f"snapshot piece {kind}{n} of {generation} is missing")
                if kind == STREAM_CHUNK:
                    streams.extend(decode_states(raw))
                else:
                    paths.update(decode_paths(raw))
        return Snapshot(fields[b"position"], int(fields[b"created_at_ms"]), streams, paths)

    async def snapshot_info(self) -> SnapshotInfo | None:
        """Position, time and size of the snapshot, without reading its state."""
        raw: list[Any] = await self.redis.hmget(
            self.keys.snapshot, ["position", "created_at_ms", "streams"]
        )
        position, created_at_ms, streams = raw
        if position is None or created_at_ms is None:
            return None
        return SnapshotInfo(position.decode(), int(created_at_ms), int(streams or 0))
