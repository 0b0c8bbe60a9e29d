"""The stale checker: decide what to do with streams that went quiet, as events.

It follows the log (group `stale-checker`) to know when each open stream last saw
activity. A stream quiet for STREAM_TIMEOUT_SECONDS gets one decision:
file gone or smaller than what was sent -> AbortRequested; file bigger by at least a
whole part -> UploadRetriggered; otherwise -> FinalizeRequested. Uploaders carry them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass

from common.config import Settings
from common.errors import CorruptEvent
from common.events import (
    AbortRequested,
    AnyEvent,
    FileEvent,
    FinalizeRequested,
    PartUploaded,
    StreamAborted,
    StreamCompleted,
    StreamEvent,
    StreamFailed,
    UploadRetriggered,
    UploadStarted,
    decode,
)
from common.files import resolve_inside, stat_recording, watch_root
from common.keys import STALE_CHECKER
from common.log import EventLog
from common.parts import part_size
from common.state import StreamState
from common.status import read_streams

logger = logging.getLogger(__name__)

Decision = AbortRequested | UploadRetriggered | FinalizeRequested


@dataclass
class Open:
    path: str
    sent_bytes: int
    next_part: int
    last_activity_s: float


def decide(stream_id: str, stream: Open, st: os.stat_result | None, part_bytes: int) -> Decision:
    """What to ask for a quiet stream, given its file's stat now. Pure."""
    path = stream.path
    if st is None:
        return AbortRequested(stream_id=stream_id, path=path, reason="file missing")
    if st.st_size < stream.sent_bytes:
        return AbortRequested(stream_id=stream_id, path=path, reason="file truncated")
    if st.st_size - stream.sent_bytes >= part_size(stream.next_part, part_bytes):
        return UploadRetriggered(stream_id=stream_id, path=path, size=st.st_size)
    return FinalizeRequested(stream_id=stream_id, path=path)


class StaleChecker:
    def __init__(self, settings: Settings, log: EventLog, consumer: str) -> None:
        self.root = watch_root(settings)
        self.timeout_s = settings.stream_timeout_seconds
        self.part_bytes = settings.part_size_bytes
        self.log = log
        self.consumer = consumer
        self.open: dict[str, Open] = {}
        self.by_path: dict[str, str] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log and check quiet streams; call only while holding the lease."""
        await self._load_open_streams()
        check_every_s = min(self.timeout_s / 4, 5.0)
        next_check = time.monotonic() + check_every_s
        while not stop.is_set():
            block_ms = max(1, min(500, int((next_check - time.monotonic()) * 1000)))
            entries = await self.log.read(STALE_CHECKER, self.consumer, 500, block_ms)
            for entry in entries:
                with contextlib.suppress(CorruptEvent):
                    self.observe(decode(entry.fields), time.monotonic())
            await self.log.ack(STALE_CHECKER, *(e.id for e in entries))
            if time.monotonic() >= next_check:
                await self.check(time.monotonic())
                next_check = time.monotonic() + check_every_s

    async def _load_open_streams(self) -> None:
        now = time.monotonic()
        for state in await read_streams(self.log.redis, self.log.keys):
            if not state.terminal:
                self._track(state, now)

    def _track(self, state: StreamState, now_s: float) -> None:
        last = max(state.parts, default=0)
        sent = state.parts[last].offset + state.parts[last].length if last else 0
        self.open[state.stream_id] = Open(state.path, sent, last + 1, now_s)
        self.by_path[state.path] = state.stream_id

    def observe(self, event: AnyEvent, now_s: float) -> None:
        if isinstance(event, UploadStarted):
            self.open[event.stream_id] = Open(event.path, 0, 1, now_s)
            self.by_path[event.path] = event.stream_id
            return
        if isinstance(event, StreamCompleted | StreamFailed | StreamAborted):
            self.open.pop(event.stream_id, None)
            if self.by_path.get(event.path) == event.stream_id:
                del self.by_path[event.path]
            return
        if isinstance(event, StreamEvent):
            stream = self.open.get(event.stream_id)
        elif isinstance(event, FileEvent):
            stream = self.open.get(self.by_path.get(event.path, ""))
        else:
            return
        if stream is None:
            return
        stream.last_activity_s = now_s
        if isinstance(event, PartUploaded) and event.offset + event.length > stream.sent_bytes:
            stream.sent_bytes = event.offset + event.length
            stream.next_part = event.part_number + 1

    async def check(self, now_s: float) -> None:
        for stream_id, stream in list(self.open.items()):
            if now_s - stream.last_activity_s < self.timeout_s:
                continue
            full = resolve_inside(self.root, stream.path)
            st = stat_recording(full) if full is not None else None
            decision = decide(stream_id, stream, st, self.part_bytes)
            logger.info(
                "stream %s (%s) quiet for %.0fs: %s",
                stream_id,
                stream.path,
                now_s - stream.last_activity_s,
                type(decision).__name__,
            )
            await self.log.append(decision)
            stream.last_activity_s = now_s
