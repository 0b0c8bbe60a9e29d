"""The dead-letter stream: log entries set aside because they cannot be decoded or handled.

A dead letter holds `reason`, `group`, `entry_id` and the original entry's fields as
`field:<name>`; setting one aside also acknowledges the entry, in one MULTI/EXEC.
Re-queueing appends the original fields to the log as a new entry (every group sees it
again) and deletes the dead letter, in one MULTI/EXEC too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

from redis.exceptions import ResponseError

from cefmp4.common import metrics
from cefmp4.common.errors import CefError, CorruptEvent
from cefmp4.common.eventlog import Entry, Redis
from cefmp4.common.events import decode
from cefmp4.common.keys import Keys

logger = logging.getLogger(__name__)

BATCH = 500
FIELD_PREFIX = b"field:"


class DeadLetter(NamedTuple):
    id: str
    reason: str
    group: str
    entry_id: str
    fields: dict[bytes, bytes]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "group": self.group,
            "entry_id": self.entry_id,
            "fields": {
                name.decode(errors="replace"): value.decode(errors="replace")
                for name, value in self.fields.items()
            },
        }

    def summary(self) -> str:
        """What the original entry was, in a few words."""
        try:
            event = decode(self.fields)
        except CorruptEvent:
            raw = b" ".join(name + b"=" + value for name, value in self.fields.items())
            text = raw.decode(errors="replace")
            return text if len(text) <= 60 else text[:57] + "..."
        return f"{type(event).__name__} {getattr(event, 'path', '')}".rstrip()


def _dead_letter(entry_id: bytes, record: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        id=entry_id.decode(),
        reason=record.get(b"reason", b"").decode(errors="replace"),
        group=record.get(b"group", b"").decode(errors="replace"),
        entry_id=record.get(b"entry_id", b"").decode(errors="replace"),
        fields={
            name[len(FIELD_PREFIX) :]: value
            for name, value in record.items()
            if name.startswith(FIELD_PREFIX)
        },
    )


class DeadLetters:
    """The dead-letter stream, holding the newest `max_entries` (older ones are dropped)."""

    def __init__(self, redis: Redis, keys: Keys, max_entries: int = 10_000) -> None:
        self.redis = redis
        self.keys = keys
        self.max_entries = max_entries

    async def set_aside(self, group: str, entry: Entry, reason: str) -> None:
        """Put `entry` in the dead-letter stream with the reason, and acknowledge it."""
        logger.warning("dead-lettering entry %s for %s: %s", entry.id.decode(), group, reason)
        record: dict[Any, Any] = {b"reason": reason, b"group": group, b"entry_id": entry.id}
        record.update({FIELD_PREFIX + name: value for name, value in entry.fields.items()})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dead, record, maxlen=self.max_entries, approximate=False)
            pipe.xack(self.keys.events, group, entry.id)
            await pipe.execute()
        metrics.count_dead_letter(group)

    async def all(self, up_to: str = "+") -> AsyncIterator[DeadLetter]:
        """Every dead letter, oldest first, read BATCH at a time."""
        start = "-"
        while True:
            batch: Any = await self.redis.xrange(self.keys.dead, min=start, max=up_to, count=BATCH)
            if not batch:
                return
            for entry_id, record in batch:
                yield _dead_letter(entry_id, record)
            start = "(" + batch[-1][0].decode()

    async def get(self, dead_id: str) -> DeadLetter:
        try:
            found: Any = await self.redis.xrange(self.keys.dead, min=dead_id, max=dead_id)
        except ResponseError as exc:  # an ill-formed id
            raise CefError(f"not a dead-letter id: {dead_id!r}") from exc
        if not found:
            raise CefError(f"no dead letter {dead_id}")
        return _dead_letter(found[0][0], found[0][1])

    async def selected(self, ids: list[str], every: bool) -> list[DeadLetter]:
        """The dead letters named by `ids`, or with `every` all there are now.

        Only what is there now: a re-queued entry that dies again waits for next time.
        """
        if not every:
            return [await self.get(dead_id) for dead_id in ids]
        newest: Any = await self.redis.xrevrange(self.keys.dead, count=1)
        if not newest:
            return []
        return [d async for d in self.all(up_to=newest[0][0].decode())]

    async def requeue(self, letter: DeadLetter) -> bytes:
        """Append the original fields to the log and delete the dead letter; the new id."""
        if not letter.fields:
            raise CefError(f"dead letter {letter.id} has no original fields to re-queue")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.events, letter.fields)  # type: ignore[arg-type]
            pipe.xdel(self.keys.dead, letter.id)
            new_id, _ = await pipe.execute()
        return bytes(new_id)

    async def drop(self, letter: DeadLetter) -> None:
        await self.redis.xdel(self.keys.dead, letter.id)
