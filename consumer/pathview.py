"""What this uploader knows of each path's latest stream, kept in step with the log.

An uploader appends each step it takes to the log and folds it into what it knows at
once, so its next pass need not wait for the projector. Every step also sets the path's
handoff key: the id of the last step any uploader recorded for the path (eventlog's
`append_for_path`). When the handoff is not the one this process knows, someone else
recorded a step since, and the projection is read instead, once it has reached that step.
"""

from __future__ import annotations

from typing import cast

from cefmp4.common.errors import ProjectionBehind
from cefmp4.common.eventlog import EventLog, entry_id_tuple
from cefmp4.common.events import AnyEvent
from cefmp4.common.recent import Recent
from cefmp4.common.statestore import StateReader
from cefmp4.common.streamstate import StreamState
from cefmp4.consumer.fold import apply
from cefmp4.consumer.pathlock import PathLock

PROJECTION_WAIT_S = 30.0
KNOWN_PATHS_MAX = 10_000


class PathView:
    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.reader = StateReader(log.redis, log.keys)
        # path -> (the handoff this process knows, the state as of it)
        self._known: Recent[str, tuple[bytes | None, StreamState | None]] = Recent(KNOWN_PATHS_MAX)

    def known(self, path: str) -> StreamState | None:
        """The path's latest stream as this process last knew it, without asking Redis."""
        known = self._known.get(path)
        return known[1] if known is not None else None

    async def record(self, lock: PathLock, event: AnyEvent) -> StreamState:
        """Append a step to the log, fenced by the path's lock (LeaseLost if it is not ours
        any more), and fold it into what this process knows of the path."""
        path = lock.path
        entry_id = await self.log.append_for_path(event, path, (lock.key, lock.token))
        known = self._known.get(path)
        handoff, state = known if known is not None else (None, None)
        if handoff is not None and entry_id_tuple(handoff) > entry_id_tuple(entry_id):
            entry_id = handoff
        new_state = apply(state, event)
        assert new_state is not None
        self._known.put(path, (entry_id, new_state))
        return new_state

    async def latest(self, path: str, *, fresh: bool = False) -> StreamState | None:
        """The path's latest stream, as of every step any uploader recorded for it.

        `fresh` reads it from the projection even when this process made the last step
        (helpers' steps may come before it). ProjectionBehind if the projection does not
        reach the last step within PROJECTION_WAIT_S.
        """
        redis, keys = self.log.redis, self.log.keys
        handoff = cast(bytes | None, await redis.get(keys.path_handoff(path)))
        known = self._known.get(path)
        if not fresh and known is not None and known[0] == handoff:
            return known[1]
        if handoff is not None and not await self.reader.wait_for_position(
            handoff, PROJECTION_WAIT_S
        ):
            raise ProjectionBehind(f"projection has not reached {handoff.decode()}")
        state = await self.reader.latest(path)
        self._known.put(path, (handoff, state))
        return state
