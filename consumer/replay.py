"""Replay: rebuild the whole projected state from the log, while the pipeline runs.

It starts from the retention snapshot when there is one (else from position 0), folds
every entry after it, and swaps the result in atomically (common/statestore), fenced
by the projector lease: the running projector stops writing while the replay holds it,
and takes it back afterwards.

Completions past what was published already (the projector's position, or the newest
completion's log entry if that is later) are published in the swap: a projector that was
behind when the replay took over has its completions published by the replay, once.
"""

from __future__ import annotations

import contextlib
import logging

from cefmp4.common.completions import Publishing, completion_of, last_published
from cefmp4.common.errors import CefError, CorruptEvent, LeaseLost
from cefmp4.common.eventlog import EventLog, entry_id_tuple
from cefmp4.common.events import decode, now_ms
from cefmp4.common.keys import PROJECTOR
from cefmp4.common.lease import Lease
from cefmp4.common.statestore import StateReader, StateWriter
from cefmp4.consumer.fold import Fold

logger = logging.getLogger(__name__)


async def replay(
    log: EventLog,
    batch: int = 5000,
    lease: Lease | None = None,
    publishing: Publishing | None = None,
) -> int:
    """Rebuild every state hash from the log; returns the number of entries folded.

    Call while holding the projector lease, and pass it to fence the swap with it.
    """
    fold = Fold()
    last_id = b"0-0"
    published = await _published_up_to(log)
    snapshot = await StateReader(log.redis, log.keys).snapshot()
    if snapshot is not None:
        logger.info("replaying from the snapshot at %s", snapshot.position.decode())
        fold.streams = {state.stream_id: state for state in snapshot.streams}
        fold.paths = dict[str, str | None](snapshot.paths)
        last_id = snapshot.position
    elif await log.was_trimmed():
        raise CefError(
            f"{log.keys.events} was trimmed but the retention snapshot is missing: "
            "a replay from what is left would lose state"
        )
    count = 0
    async with contextlib.aclosing(log.entries_after(last_id, batch)) as batches:
        async for entries in batches:
            for entry in entries:
                if publishing is not None and entry_id_tuple(entry.id) > published:
                    fold.keep_completed = True
                try:
                    fold.add(entry.id, decode(entry.fields))
                except CorruptEvent:
                    continue
            count += len(entries)
            last_id = entries[-1].id
    writer = StateWriter(log.redis, log.keys, lease)
    try:
        await writer.replace_all(
            last_id,
            now_ms(),
            list(fold.streams.values()),
            fold.kept_paths(),
            [completion_of(s, publishing.bucket).fields() for s in fold.completed]
            if publishing is not None
            else [],
            publishing.max_entries if publishing is not None else 1,
        )
    except LeaseLost as exc:
        raise CefError("another process took the projector lease; replay changed nothing") from exc
    return count


async def _published_up_to(log: EventLog) -> tuple[int, int]:
    """The log entry up to which every completion was published."""
    position = await StateReader(log.redis, log.keys).stored_position()
    newest = await last_published(log.redis, log.keys)
    return max(entry_id_tuple(position or b"0-0"), entry_id_tuple(newest or "0-0"))


async def replay_fenced(log: EventLog, owner: str, publishing: Publishing | None = None) -> int:
    """Replay while holding the projector lease, taken from whoever holds it.

    The running projector's writes are fenced by its lease, so taking it stops them;
    the projector takes the lease back once the replay has released it.
    """
    lease = Lease(log.redis, log.keys.lease(PROJECTOR), owner)
    await lease.take()
    try:
        async with lease.kept():
            return await replay(log, lease=lease, publishing=publishing)
    except LeaseLost as exc:
        raise CefError("another process took the projector lease; replay stopped") from exc
    finally:
        await lease.release()
