"""The stale checker: decide what to do with streams that went quiet, as events.

It follows the log (group `stale-checker`) to know when each open stream last saw
activity. A stream quiet for STREAM_TIMEOUT_SECONDS gets one decision:
file gone or smaller than what was sent -> AbortRequested; file bigger by at least a
whole part -> UploadRetriggered; otherwise -> FinalizeRequested. And a failed recording
whose retry time has come gets RetryRequested. Uploaders carry them out. While WATCH_DIR
looks unmounted or emptied at once (common/absence.py), missing files are waited for, not
aborted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import NamedTuple

from cefmp4.common.absence import Absence
from cefmp4.common.config import Settings
from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import (
    NEVER,
    AbortRequested,
    AnyEvent,
    FileEvent,
    FinalizeRequested,
    PartUploaded,
    RetryRequested,
    StreamAborted,
    StreamCompleted,
    StreamEvent,
    StreamFailed,
    StreamRecognized,
    UploadRetriggered,
    UploadStarted,
    now_ms,
)
from cefmp4.common.files import stat_inside, watch_root
from cefmp4.common.keys import STALE_CHECKER
from cefmp4.common.parts import part_size
from cefmp4.common.statestore import StateReader
from cefmp4.common.streamstate import StreamState
from cefmp4.consumer.groupworker import GroupWorker

logger = logging.getLogger(__name__)

Decision = AbortRequested | UploadRetriggered | FinalizeRequested


class Retry(NamedTuple):
    stream_id: str
    at_ms: int


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
        self.worker = GroupWorker(log, STALE_CHECKER, consumer)
        self.reader = StateReader(log.redis, log.keys)
        self.open: dict[str, Open] = {}
        self.by_path: dict[str, str] = {}
        self.retries: dict[str, Retry] = {}  # path -> its failed latest stream to retry
        self.absence = Absence(self.root, lambda rel: stat_inside(self.root, rel))

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log and check quiet streams; call only while holding the lease."""
        # What an earlier checker read and left pending would hold log trimming back for
        # good: it is read again, and settled.
        await self.worker.redeliver_pending()
        await self._load_open_streams()
        check_every_s = min(self.timeout_s / 4, 5.0)
        next_check = time.monotonic() + check_every_s
        while not stop.is_set():
            block_ms = max(1, min(500, int((next_check - time.monotonic()) * 1000)))
            batch = await self.worker.read(500, block_ms)
            for delivery in batch.deliveries:
                self.observe(delivery.event, time.monotonic())
            await self.worker.ack(*batch.ids)
            if time.monotonic() >= next_check:
                await self.check(time.monotonic())
                next_check = time.monotonic() + check_every_s

    async def _load_open_streams(self) -> None:
        now = time.monotonic()
        for state in await self.reader.open_streams():
            self._track(state, now)
        for failed in await self.reader.failed_to_retry():
            self.retries[failed.path] = Retry(failed.stream_id, failed.retry_at_ms)

    def _track(self, state: StreamState, now_s: float) -> None:
        self.open[state.stream_id] = Open(
            state.path, state.sent_end, max(state.parts, default=0) + 1, now_s
        )
        self.by_path[state.path] = state.stream_id

    def observe(self, event: AnyEvent, now_s: float) -> None:
        match event:
            case UploadStarted(stream_id=stream_id, path=path):
                self.open[stream_id] = Open(path, 0, 1, now_s)
                self.by_path[path] = stream_id
                self.retries.pop(path, None)
                return
            case StreamFailed(stream_id=stream_id, path=path, retry_at_ms=at_ms) if at_ms != NEVER:
                self.open.pop(stream_id, None)
                if self.by_path.get(path) == stream_id:
                    del self.by_path[path]
                self.retries[path] = Retry(stream_id, at_ms)
                return
            case StreamRecognized(path=path):
                # A new stream for the path, finished at once: nothing left to retry.
                self.retries.pop(path, None)
                return
            case StreamCompleted() | StreamFailed() | StreamAborted():
                self.open.pop(event.stream_id, None)
                if self.by_path.get(event.path) == event.stream_id:
                    del self.by_path[event.path]
                return
            case StreamEvent(stream_id=stream_id):
                stream = self.open.get(stream_id)
            case FileEvent(path=path):
                stream = self.open.get(self.by_path.get(path, ""))
            case _:
                return
        if stream is None:
            return
        stream.last_activity_s = now_s
        if isinstance(event, PartUploaded) and event.offset + event.length > stream.sent_bytes:
            stream.sent_bytes = event.offset + event.length
            stream.next_part = event.part_number + 1

    async def check(self, now_s: float) -> None:
        now = now_ms()
        for path, retry in list(self.retries.items()):
            if retry.at_ms <= now:
                logger.info("retrying failed recording %s (stream %s)", path, retry.stream_id)
                await self.log.append(RetryRequested(stream_id=retry.stream_id, path=path))
                del self.retries[path]
        open_paths = [stream.path for stream in self.open.values()]
        self.absence.back(open_paths)
        for stream_id, stream in list(self.open.items()):
            if now_s - stream.last_activity_s < self.timeout_s:
                continue
            st = stat_inside(self.root, stream.path)
            if st is None and self.absence.vanished(open_paths):
                stream.last_activity_s = now_s  # WATCH_DIR went away: wait for it to be back
                continue
            if st is not None and time.time_ns() - st.st_mtime_ns < self.timeout_s * 1e9:
                # Written lately, just not by a whole part (the producer reports growth by
                # whole parts): a slow recording, not a quiet one.
                stream.last_activity_s = now_s
                continue
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
