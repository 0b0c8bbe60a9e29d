"""`cefmp4 dead`: list the dead-letter stream, put entries back on the log, or drop them.

A dead letter (written by `EventLog.dead_letter`) holds `reason`, `group`, `entry_id`
and the original entry's fields as `field:<name>`. Re-queueing appends those fields to
the log as a new entry (every group sees it again) and deletes the dead letter, in one
MULTI/EXEC.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

from redis.exceptions import ResponseError

from common.errors import CefError, CorruptEvent
from common.events import decode
from common.keys import Keys
from common.log import EventLog, Redis

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


async def iter_dead(redis: Redis, keys: Keys, up_to: str = "+") -> AsyncIterator[DeadLetter]:
    """Every dead letter, oldest first, read BATCH at a time."""
    start = "-"
    while True:
        batch: Any = await redis.xrange(keys.dead, min=start, max=up_to, count=BATCH)
        if not batch:
            return
        for entry_id, record in batch:
            yield _dead_letter(entry_id, record)
        start = "(" + batch[-1][0].decode()


async def get_dead(redis: Redis, keys: Keys, dead_id: str) -> DeadLetter:
    try:
        found: Any = await redis.xrange(keys.dead, min=dead_id, max=dead_id)
    except ResponseError as exc:  # an ill-formed id
        raise CefError(f"not a dead-letter id: {dead_id!r}") from exc
    if not found:
        raise CefError(f"no dead letter {dead_id}")
    return _dead_letter(found[0][0], found[0][1])


async def requeue(redis: Redis, keys: Keys, letter: DeadLetter) -> bytes:
    """Append the original fields to the log and delete the dead letter; the new id."""
    if not letter.fields:
        raise CefError(f"dead letter {letter.id} has no original fields to re-queue")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.events, letter.fields)  # type: ignore[arg-type]
        pipe.xdel(keys.dead, letter.id)
        new_id, _ = await pipe.execute()
    return bytes(new_id)


async def drop(redis: Redis, keys: Keys, letter: DeadLetter) -> None:
    await redis.xdel(keys.dead, letter.id)


async def _selected(redis: Redis, keys: Keys, ids: list[str], every: bool) -> list[DeadLetter]:
    if every:
        # Only what is there now: a re-queued entry that dies again waits for next time.
        newest: Any = await redis.xrevrange(keys.dead, count=1)
        if not newest:
            return []
        return [d async for d in iter_dead(redis, keys, up_to=newest[0][0].decode())]
    return [await get_dead(redis, keys, dead_id) for dead_id in ids]


# --- the command ------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--requeue", nargs="*", metavar="ID", help="append these entries to the log again"
    )
    action.add_argument("--drop", nargs="*", metavar="ID", help="delete these dead letters")
    parser.add_argument("--all", action="store_true", help="with --requeue/--drop: every one")
    parser.add_argument("--json", action="store_true", help="list as one JSON object")


async def command(log: EventLog, args: argparse.Namespace) -> int:
    redis, keys = log.redis, log.keys
    ids: list[str] | None = args.requeue if args.requeue is not None else args.drop
    if ids is None:
        if args.all:
            raise CefError("--all goes with --requeue or --drop")
        letters = [d async for d in iter_dead(redis, keys)]
        if args.json:
            print(json.dumps({"dead_letters": [d.as_json() for d in letters]}, indent=2))
        else:
            print(render_table(letters))
        return 0
    if bool(ids) == bool(args.all):
        raise CefError("give dead-letter ids or --all, not both")
    letters = await _selected(redis, keys, ids, args.all)
    for letter in letters:
        if args.requeue is not None:
            new_id = await requeue(redis, keys, letter)
            print(f"re-queued {letter.id} as {new_id.decode()}")
        else:
            await drop(redis, keys, letter)
            print(f"dropped {letter.id}")
    verb = "re-queued" if args.requeue is not None else "dropped"
    print(f"{verb} {len(letters)} dead letters", file=sys.stderr)
    return 0


def render_table(letters: list[DeadLetter]) -> str:
    rows = [("ID", "GROUP", "ENTRY", "REASON", "EVENT")]
    rows.extend((d.id, d.group, d.entry_id, d.reason, d.summary()) for d in letters)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append(f"{len(letters)} dead letters")
    return "\n".join(lines)
