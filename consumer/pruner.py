"""Pruning: finished streams leave the state FINISHED_STREAM_RETENTION_SECONDS after they ended.

The projector's role decides, between two batches, and appends the decision to the log as
one StreamsPruned event; the fold drops those streams with their parts and index entries,
so a replay prunes exactly the same streams at the same point of the history. A failed
stream still owed a retry is kept until it is retried.
"""

from __future__ import annotations

import logging
import time

from cefmp4.common.eventlog import EventLog, entry_id_tuple
from cefmp4.common.events import StreamsPruned, now_ms
from cefmp4.common.statestore import BATCH, FINISHED_STATUSES, StateReader

logger = logging.getLogger(__name__)

CHECK_EVERY_S = 10.0
PAGES_PER_LOOK = 20  # of kept failed streams skipped over, at most, in one look


class Pruner:
    """Appends StreamsPruned for streams past the retention window; 0 s keeps them all."""

    def __init__(self, log: EventLog, retention_s: float) -> None:
        self.log = log
        self.reader = StateReader(log.redis, log.keys)
        self.retention_ms = int(retention_s * 1000)
        # A short window (tests, small sites) is kept to within about half of it.
        self.check_every_s = min(CHECK_EVERY_S, max(retention_s / 2, 0.1))
        self._due_s = 0.0
        self._appended: bytes | None = None

    async def tick(self, position: bytes) -> None:
        """Look for streams to prune, if it is time and the last decision was folded in."""
        if self.retention_ms == 0 or time.monotonic() < self._due_s:
            return
        if self._appended is not None and entry_id_tuple(position) < entry_id_tuple(self._appended):
            return  # the projector has not reached the last StreamsPruned yet
        ids = await self.due()
        if not ids:
            self._due_s = time.monotonic() + self.check_every_s
            return
        self._appended = await self.log.append(StreamsPruned(stream_ids=tuple(ids)))
        logger.info("pruning %d finished streams from the state", len(ids))
        # A full batch means more are due: look again as soon as this one is folded in.
        self._due_s = 0.0 if len(ids) == BATCH else time.monotonic() + self.check_every_s

    async def due(self) -> list[str]:
        """Up to BATCH ids of finished streams past the window, none of them owed a retry."""
        cutoff = now_ms() - self.retention_ms
        found: list[str] = []
        for status in FINISHED_STATUSES:
            start = 0
            for _page in range(PAGES_PER_LOOK):
                wanted = BATCH - len(found)
                ids = await self.reader.ended_before(status, cutoff, start, wanted)
                start += len(ids)
                owed = await self.reader.retry_owed(ids) if status == "failed" else set()
                found += [i for i in ids if i not in owed]
                if len(ids) < wanted or len(found) >= BATCH:
                    break
            if len(found) >= BATCH:
                break
        return found
