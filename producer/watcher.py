"""The producer: watch WATCH_DIR and append file events to the log. Never talks to S3."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from watchfiles import awatch

from common.config import Settings
from common.errors import Stopping
from common.events import AnyEvent, FileDeleted, FileEvent
from common.files import (
    matches,
    relative_path,
    resolve_inside,
    stat_recording,
    walk_recordings,
    watch_root,
)
from common.keys import Keys
from common.log import EventLog, Redis
from common.retry import Outage, until_done
from common.state import TERMINAL
from producer.tracker import Tracker

logger = logging.getLogger(__name__)

IDLE_CHECK_INTERVAL_S = 0.25
FULL_RESCAN_INTERVAL_S = 30.0
PATHS_BATCH = 500


async def open_stream_paths(redis: Redis, keys: Keys) -> set[str]:
    """Paths whose latest stream is still open (active or finalizing)."""
    found: set[str] = set()
    batch: list[tuple[bytes, bytes]] = []

    async def flush() -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for _path, stream_id in batch:
                pipe.hget(keys.stream(stream_id.decode()), "status")
            statuses = await pipe.execute()
        for (path, _id), status in zip(batch, statuses, strict=True):
            if status is not None and status.decode() not in TERMINAL:
                found.add(path.decode())
        batch.clear()

    async for path, stream_id in redis.hscan_iter(keys.paths, count=PATHS_BATCH):
        batch.append((path, stream_id))
        if len(batch) >= PATHS_BATCH:
            await flush()
    if batch:
        await flush()
    return found


class Producer:
    def __init__(self, settings: Settings, log: EventLog) -> None:
        self.root = watch_root(settings)
        self.globs = settings.watch_filter_globs
        self.log = log
        self.tracker = Tracker(settings.watch_file_min_age_seconds_for_idle)
        self._outage = Outage("the log", logger)
        self._stop = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        try:
            await until_done(self.log.ensure_groups, self._outage, stop)
            logger.info("watching %s for %s", self.root, ", ".join(self.globs))
            await self._reconcile()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch(stop))
                tasks.create_task(self._tick(stop))
        except* Stopping:
            logger.info("stopped while the log was unavailable")

    async def _append(self, event: AnyEvent) -> None:
        """Append, waiting out a Redis outage: changes on disk are never dropped."""
        await until_done(lambda: self.log.append(event), self._outage, self._stop)

    async def _reconcile(self) -> None:
        """Report what happened while no producer ran: files that appeared, grew or vanished.

        Uploaders treat what they already have as done, so nothing is sent twice.
        """
        open_paths = await until_done(
            lambda: open_stream_paths(self.log.redis, self.log.keys), self._outage, self._stop
        )
        await self._rescan()
        for rel in sorted(open_paths - set(self.tracker.seen)):
            logger.info("FileDeleted %s (gone while the producer was down)", rel)
            await self._append(FileDeleted(path=rel))

    async def _look(self, rel: str) -> None:
        full = resolve_inside(self.root, rel)
        st = stat_recording(full) if full is not None else None
        event = self.tracker.look(rel, st, time.monotonic())
        if event is not None:
            await self._append(event)
            if isinstance(event, FileEvent):
                logger.debug("%s %s (%d bytes)", type(event).__name__, rel, event.size)
            else:
                logger.info("%s %s", type(event).__name__, rel)

    async def _rescan(self) -> None:
        present = set(await asyncio.to_thread(lambda: list(walk_recordings(self.root, self.globs))))
        for rel in sorted(present | set(self.tracker.seen)):
            await self._look(rel)

    async def _watch(self, stop: asyncio.Event) -> None:
        async for changes in awatch(
            self.root,
            stop_event=stop,
            recursive=True,
            debounce=500,
            step=50,
            watch_filter=None,
            ignore_permission_denied=True,
        ):
            candidates = {self._candidate(path) for _change, path in changes}
            for rel in sorted(c for c in candidates if c is not None):
                await self._look(rel)

    def _candidate(self, raw: str) -> str | None:
        path = Path(raw)
        if not matches(path.name, self.globs):
            return None
        return relative_path(self.root, path)

    async def _tick(self, stop: asyncio.Event) -> None:
        """Report files gone quiet, and catch any change the watcher did not report."""
        last_rescan = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), IDLE_CHECK_INTERVAL_S)
            if stop.is_set():
                return
            for rel in self.tracker.busy_paths():
                await self._look(rel)
                idle = self.tracker.idle(rel, time.monotonic())
                if idle is not None:
                    await self._append(idle)
                    logger.info("FileIdle %s (%d bytes)", rel, idle.size)
            if time.monotonic() - last_rescan >= FULL_RESCAN_INTERVAL_S:
                await self._rescan()
                last_rescan = time.monotonic()
