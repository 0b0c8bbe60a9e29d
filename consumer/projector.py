"""The projector: folds the log into the state hashes, exactly once, in log order.

The position of the last applied entry is written in the same MULTI/EXEC as the state
it produced (and the XACK), so a crash anywhere neither skips nor repeats an event. Each
stream that becomes completed is appended to the public completions stream in that same
MULTI/EXEC: published once, in log order, whichever uploader completed it and whenever it
died.
"""

from __future__ import annotations

import asyncio
import logging

from cefmp4.common.completions import Publishing, completion_of
from cefmp4.common.errors import LeaseLost, StateMoved
from cefmp4.common.eventlog import EventLog, entry_id_tuple
from cefmp4.common.events import AnyEvent, FileEvent, StreamEvent, StreamsPruned
from cefmp4.common.keys import PROJECTOR
from cefmp4.common.lease import Lease
from cefmp4.common.statestore import StateReader, StateWriter
from cefmp4.consumer.fold import Fold
from cefmp4.consumer.groupworker import Batch, GroupWorker
from cefmp4.consumer.pruner import Pruner
from cefmp4.consumer.retention import Retention

logger = logging.getLogger(__name__)

BATCH = 500
FOLD_STREAMS_MAX = 10_000


class Projector:
    """Applies the log to the state; with `lease`, writes only while holding it."""

    def __init__(
        self,
        log: EventLog,
        consumer: str,
        lease: Lease | None = None,
        retention: Retention | None = None,
        pruner: Pruner | None = None,
        publishing: Publishing | None = None,
    ) -> None:
        self.worker = GroupWorker(log, PROJECTOR, consumer)
        self.reader = StateReader(log.redis, log.keys)
        self.writer = StateWriter(log.redis, log.keys, lease)
        self.retention = retention
        self.pruner = pruner
        self.publishing = publishing

    async def run(self, stop: asyncio.Event) -> None:
        """Apply entries until `stop` is set; call only while holding the projector lease."""
        position = await self.reader.position()
        # Entries delivered to an earlier projector but not applied come round again.
        await self.worker.rewind(position)
        fold = self._fold()
        while not stop.is_set():
            batch = await self.worker.read(BATCH, block_ms=500)
            if batch.ids:
                try:
                    position = await self._apply(fold, batch, position)
                except StateMoved as exc:
                    # Its in-memory fold is ahead of what Redis kept: begin again from Redis.
                    logger.warning("projector restarting: %s (a failover lost writes?)", exc)
                    return
                except LeaseLost:
                    logger.info("projector lease taken over; stopping")
                    return
                if len(fold.streams) + len(fold.gone) > FOLD_STREAMS_MAX:
                    fold = self._fold()
            if self.pruner is not None:
                await self.pruner.tick(position)
            if self.retention is not None:
                await self.retention.tick(position)

    def _fold(self) -> Fold:
        return Fold(keep_completed=self.publishing is not None)

    async def _apply(self, fold: Fold, batch: Batch, position: bytes) -> bytes:
        last = entry_id_tuple(position)
        events = [
            (delivery.entry.id, delivery.event)
            for delivery in batch.deliveries
            if entry_id_tuple(delivery.entry.id) > last
        ]
        await self._load(fold, [event for _, event in events])
        for entry_id, event in events:
            fold.add(entry_id, event)
        new_position = max(batch.ids[-1], position, key=entry_id_tuple)
        done = fold.take_changes()
        async with self.writer.transaction(at=position) as changes:
            for stream_id, path in done.pruned:
                changes.prune(stream_id, path)
            for state, parts in done.streams:
                changes.put_stream(state, parts)
            changes.put_paths(done.paths)
            if self.publishing is not None:
                for state in done.completed:
                    fields = completion_of(state, self.publishing.bucket).fields()
                    changes.publish_completion(fields, self.publishing.max_entries)
            changes.set_position(new_position)
            changes.ack(PROJECTOR, batch.ids)
        return new_position

    async def _load(self, fold: Fold, events: list[AnyEvent]) -> None:
        """Bring every stream and path the events are about into the fold, from Redis.

        A few round trips a batch, not one an event: the paths first (their latest stream
        ids), then the streams, then the paths of the streams a StreamsPruned names.
        """
        paths = {e.path for e in events if isinstance(e, FileEvent)}
        pruned = {i for e in events if isinstance(e, StreamsPruned) for i in e.stream_ids}
        ids = pruned | {e.stream_id for e in events if isinstance(e, StreamEvent)}
        await self._load_paths(fold, paths)
        ids.update(fold.paths[path] or "" for path in paths if path in fold.paths)
        wanted = [i for i in ids if i and i not in fold.streams and i not in fold.gone]
        fold.streams.update(await self.reader.streams_of_ids(wanted))
        await self._load_paths(fold, {fold.streams[i].path for i in pruned if i in fold.streams})

    async def _load_paths(self, fold: Fold, paths: set[str]) -> None:
        fold.paths.update(
            await self.reader.stream_ids_of([p for p in paths if p not in fold.paths])
        )
