"""One consumer of a consumer group on the log: read, take over, set aside, acknowledge.

The uploaders, the projector and the stale checker all read the log through a GroupWorker.
An entry that cannot be decoded is set aside in the dead letters by the uploaders' group
(`sets_aside_corrupt`; one group does it, so a bad entry is set aside once) and passed
over by the others, which still acknowledge it. A consumer keeps the entries it is still
working on alive (`keep_alive`), however long that takes; entries nobody keeps alive (their
consumer died, froze or stopped) are taken over by another after a while, and one taken
over more than `max_deliveries` times is set aside: it is an entry nobody can handle.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from cefmp4.common.deadletters import DeadLetters
from cefmp4.common.errors import CorruptEvent
from cefmp4.common.eventlog import Entry, EventLog
from cefmp4.common.events import AnyEvent, decode

logger = logging.getLogger(__name__)

KEEP_ALIVE_BATCH = 1000


class Delivery(NamedTuple):
    entry: Entry
    event: AnyEvent


class Batch(NamedTuple):
    deliveries: list[Delivery]
    ids: list[bytes]  # every entry read, in log order, the passed-over ones included


class GroupWorker:
    def __init__(
        self,
        log: EventLog,
        group: str,
        consumer: str,
        *,
        sets_aside_corrupt: bool = False,
        max_deliveries: int = 5,
        dead_letters_max: int = 10_000,
    ) -> None:
        self.log = log
        self.group = group
        self.consumer = consumer
        self.sets_aside_corrupt = sets_aside_corrupt
        self.max_deliveries = max_deliveries
        self._dead = DeadLetters(log.redis, log.keys, dead_letters_max)

    async def read(self, count: int, block_ms: int) -> Batch:
        """Up to `count` new entries, waiting up to `block_ms` for the first."""
        entries = await self.log.read(self.group, self.consumer, count, block_ms)
        deliveries = [d for d in [await self._decoded(e) for e in entries] if d is not None]
        ids = [e.id for e in entries]
        if self.sets_aside_corrupt:
            kept = {d.entry.id for d in deliveries}
            ids = [entry_id for entry_id in ids if entry_id in kept]
        return Batch(deliveries, ids)

    async def take_over(self, min_idle_ms: int, count: int) -> list[Delivery]:
        """Entries unacknowledged for `min_idle_ms`: their consumer died or is stuck."""
        claimed = await self.log.claim_stale(self.group, self.consumer, min_idle_ms, count)
        deliveries = await self.log.deliveries(self.group, [e.id for e in claimed])
        taken: list[Delivery] = []
        for entry in claimed:
            if deliveries.get(entry.id, 0) > self.max_deliveries:
                await self.set_aside(entry, f"not handled after {self.max_deliveries} tries")
                continue
            delivery = await self._decoded(entry)
            if delivery is None:
                if not self.sets_aside_corrupt:
                    await self.ack(entry.id)
                continue
            logger.info("took over entry %s", entry.id.decode())
            taken.append(delivery)
        return taken

    async def keep_alive(self, entry_ids: list[bytes]) -> None:
        """Tell the group these entries are still being worked on, without counting a delivery.

        XCLAIM with JUSTID resets an entry's idle time and leaves its delivery count alone,
        so no other consumer takes it over and no outage, however long, makes it poison.
        """
        for start in range(0, len(entry_ids), KEEP_ALIVE_BATCH):
            batch: list[Any] = entry_ids[start : start + KEEP_ALIVE_BATCH]
            await self.log.redis.xclaim(
                self.log.keys.events,
                self.group,
                self.consumer,
                0,
                batch,
                justid=True,
            )

    async def ack(self, *entry_ids: bytes) -> None:
        await self.log.ack(self.group, *entry_ids)

    async def set_aside(self, entry: Entry, reason: str) -> None:
        """Put `entry` in the dead letters with the reason, and acknowledge it."""
        await self._dead.set_aside(self.group, entry, reason)

    async def redeliver_pending(self) -> None:
        """Read again what earlier consumers of the group read and left (they are gone)."""
        await self.log.redeliver_pending(self.group)

    async def rewind(self, position: bytes) -> None:
        """Read again from after `position`; entries up to it count as handled."""
        await self.log.rewind(self.group, position)

    async def _decoded(self, entry: Entry) -> Delivery | None:
        try:
            return Delivery(entry, decode(entry.fields))
        except CorruptEvent as exc:
            if self.sets_aside_corrupt:
                await self.set_aside(entry, f"cannot decode: {exc}")
            return None
