"""`cefmp4 dead`: list dead letters, put them back on the log, or drop them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from cefmp4.common.deadletters import DeadLetters
from cefmp4.common.eventlog import Entry, EventLog
from cefmp4.common.events import FIELD, FileWritten, encode
from cefmp4.common.keys import STALE_CHECKER, UPLOADERS
from tests.conftest import Processes, eventually
from tests.test_cli import cefmp4

OUTSIDE = FileWritten(path="../etc/passwd", size=1, mtime_ns=1, inode=1, device=1, at_ms=5)


async def dead_letters(log: EventLog, fields: list[dict[bytes, bytes]]) -> list[str]:
    """Append `fields` as log entries, dead-letter each; the dead letters' ids."""
    for record in fields:
        entry_id: bytes = await log.redis.xadd(log.keys.events, record)  # type: ignore[arg-type, assignment]
        await DeadLetters(log.redis, log.keys).set_aside(
            UPLOADERS, Entry(entry_id, record), f"reason for {entry_id!r}"
        )
    dead: Any = await log.redis.xrange(log.keys.dead)
    return [entry_id.decode() for entry_id, _ in dead][-len(fields) :]


async def last_event(log: EventLog) -> dict[bytes, bytes]:
    newest: Any = await log.redis.xrevrange(log.keys.events, count=1)
    return dict(newest[0][1])


async def test_dead_lists_requeues_and_drops_by_id(
    log: EventLog, env: dict[str, str], tmp_path: Path
) -> None:
    await log.ensure_groups()
    poison = {FIELD: b"not json at all"}
    outside = {FIELD: encode(OUTSIDE)}
    first, second = await dead_letters(log, [poison, outside])
    originals: Any = await log.redis.xrange(log.keys.events)
    original_ids = [entry_id.decode() for entry_id, _ in originals]

    def run(*args: str) -> Any:
        return asyncio.to_thread(cefmp4, env, "dead", *args, cwd=tmp_path)

    table = await run()
    listed = await run("--json")

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "GROUP", "ENTRY", "REASON", "EVENT"]
    assert lines[1].split()[:3] == [first, UPLOADERS, original_ids[0]]
    assert lines[1].endswith("event=not json at all")
    assert lines[2].split()[:3] == [second, UPLOADERS, original_ids[1]]
    assert lines[2].endswith("FileWritten ../etc/passwd")
    assert lines[3] == "2 dead letters"
    assert json.loads(listed.stdout) == {
        "dead_letters": [
            {
                "id": first,
                "reason": f"reason for {original_ids[0].encode()!r}",
                "group": UPLOADERS,
                "entry_id": original_ids[0],
                "fields": {"event": "not json at all"},
            },
            {
                "id": second,
                "reason": f"reason for {original_ids[1].encode()!r}",
                "group": UPLOADERS,
                "entry_id": original_ids[1],
                "fields": {"event": encode(OUTSIDE).decode()},
            },
        ]
    }

    requeued = await run("--requeue", second)

    assert requeued.returncode == 0, requeued.stderr
    assert await last_event(log) == outside
    newest: Any = await log.redis.xrevrange(log.keys.events, count=1)
    new_id = newest[0][0].decode()
    assert requeued.stdout.splitlines() == [f"re-queued {second} as {new_id}"]
    assert new_id not in original_ids
    dead: Any = await log.redis.xrange(log.keys.dead)
    assert [entry_id.decode() for entry_id, _ in dead] == [first]
    # Every group gets the re-queued entry as new.
    groups = {g["name"]: g for g in await log.redis.xinfo_groups(log.keys.events)}
    assert groups[STALE_CHECKER.encode()]["lag"] == 3

    dropped = await run("--drop", first)

    assert dropped.returncode == 0, dropped.stderr
    assert await log.redis.xlen(log.keys.dead) == 0
    assert await log.redis.xlen(log.keys.events) == 3

    missing = await run("--drop", first)

    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == f"cefmp4: no dead letter {first}"


async def test_dead_requeues_or_drops_all(
    log: EventLog, env: dict[str, str], tmp_path: Path
) -> None:
    await log.ensure_groups()
    records = [{FIELD: encode(OUTSIDE), b"n": b"%d" % n} for n in range(3)]
    await dead_letters(log, records)

    def run(*args: str) -> Any:
        return asyncio.to_thread(cefmp4, env, "dead", *args, cwd=tmp_path)

    neither = await run("--requeue")
    requeued = await run("--requeue", "--all")

    assert neither.returncode == 1
    assert "ids or --all" in neither.stderr
    assert requeued.returncode == 0, requeued.stderr
    assert await log.redis.xlen(log.keys.dead) == 0
    newest: Any = await log.redis.xrevrange(log.keys.events, count=3)
    assert [dict(fields) for _, fields in reversed(newest)] == records

    await dead_letters(log, records)
    dropped = await run("--drop", "--all")

    assert dropped.returncode == 0, dropped.stderr
    assert await log.redis.xlen(log.keys.dead) == 0
    assert await log.redis.xlen(log.keys.events) == 9
    assert "dropped 3 dead letters" in dropped.stderr


async def test_the_dead_letters_keep_only_the_newest_under_a_flood(
    log: EventLog, processes: Processes
) -> None:
    await log.ensure_groups()
    processes.start("consumer", DEAD_LETTER_MAX_ENTRIES="50")
    last = b""
    for n in range(300):
        last = await log.redis.xadd(log.keys.events, {FIELD: b"garbage %d" % n})  # type: ignore[assignment]

    async def all_handled() -> bool:
        groups = {g.name: g for g in await log.groups()}
        return groups[UPLOADERS].lag == 0 and groups[UPLOADERS].pending == 0

    await eventually(all_handled, 60, "every garbage entry set aside")
    newest: Any = await log.redis.xrevrange(log.keys.dead, count=1)
    assert await log.redis.xlen(log.keys.dead) == 50
    assert newest[0][1][b"entry_id"] == last
