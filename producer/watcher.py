"""The producer: watch WATCH_DIR and append file events to the log. Never talks to S3."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from watchfiles import awatch
from watchfiles._rust_notify import WatchfilesRustInternalError

from cefmp4.common.absence import Absence
from cefmp4.common.config import Settings
from cefmp4.common.errors import Stopping
from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import AnyEvent, FileDeleted, FileEvent
from cefmp4.common.files import (
    decodable,
    matches,
    relative_path,
    stat_inside,
    walk_recordings,
    watch_root,
)
from cefmp4.common.printable import printable
from cefmp4.common.recent import Recent
from cefmp4.common.retry import Outage, until_done
from cefmp4.common.statestore import StateReader
from cefmp4.common.tasks import cancel_and_wait, stopped_within
from cefmp4.producer import closes
from cefmp4.producer.tracker import Tracker, completed_as_is

logger = logging.getLogger(__name__)

IDLE_CHECK_INTERVAL_S = 0.25
FULL_RESCAN_INTERVAL_S = 30.0
WATCH_TIMEOUT_MS = 1000  # a quiet watcher still hands back control this often
WATCHER_PAUSE_MIN_S = 1.0  # before starting a failed watcher again; doubles while it keeps failing
WATCHER_PAUSE_MAX_S = 10.0
WATCHER_HEALTHY_AFTER_S = 60.0
UNDECODABLE_REMEMBERED = 10_000
BACK_CHECK_INTERVAL_S = 1.0  # how often a WATCH_DIR that went away is looked at again
LOSS_CHECK_INTERVAL_S = 1.0  # how often the latest append is looked for in the log


class Producer:
    def __init__(self, settings: Settings, log: EventLog) -> None:
        self.root = watch_root(settings)
        self.globs = settings.watch_filter_globs
        self.finalize_on_close = settings.watch_finalize_on_close and closes.AVAILABLE
        self.log = log
        self.tracker = Tracker(
            settings.watch_file_min_age_seconds_for_idle, settings.part_size_bytes
        )
        self._outage = Outage("the log", logger)
        self._stop = asyncio.Event()
        self._rescan_due = False
        self._rewatch_due = False
        self._rewatch_closes = asyncio.Event()
        self._last_appended: bytes | None = None
        self._undecodable: Recent[str, bool] = Recent(UNDECODABLE_REMEMBERED)
        self.absence = Absence(self.root, self._stat)

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        try:
            await until_done(self.log.ensure_groups, self._outage, stop)
            logger.info(
                "watching %s for %s; %s",
                self.root,
                ", ".join(self.globs),
                "a closed or moved-in file is finished at once"
                if self.finalize_on_close
                else "a file is finished by the idle timer alone",
            )
            await self._reconcile()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch(stop))
                tasks.create_task(self._tick(stop))
                if self.finalize_on_close:
                    tasks.create_task(self._watch_closes(stop))
        except* Stopping:
            logger.info("stopped while the log was unavailable")

    async def _append(self, event: AnyEvent) -> None:
        """Append, waiting out a Redis outage: changes on disk are never dropped."""
        self._last_appended = await until_done(
            lambda: self.log.append(event), self._outage, self._stop
        )

    async def _announced_again_if_lost(self) -> None:
        """After a failover that lost the newest entries, report every file afresh.

        What was lost is not known, only that the latest append is among it; reconciling
        as at start announces every file not completed as it is now (uploaders skip what
        they have), and the ones gone.
        """
        appended = self._last_appended
        if appended is None or not await until_done(
            lambda: self.log.lost(appended), self._outage, self._stop
        ):
            return
        logger.warning("the log lost the producer's latest events (a failover?); reporting again")
        self._last_appended = None
        self.tracker.seen.clear()
        await self._reconcile()

    async def _reconcile(self) -> None:
        """Report what happened while no producer ran: files that appeared, changed or vanished.

        A file whose latest stream completed with the file as it is now was reported in full
        already, and is not announced again. Uploaders treat what they already have as done,
        so nothing is sent twice.
        """
        reader = StateReader(self.log.redis, self.log.keys)
        open_paths = await until_done(reader.open_paths, self._outage, self._stop)
        present = await self._recordings()
        others = sorted(present - open_paths)
        latest = await until_done(lambda: reader.latest_of(others), self._outage, self._stop)
        now_s = time.monotonic()
        for rel, state in latest.items():
            st = self._stat(rel)
            if st is not None and completed_as_is(state, st):
                self.tracker.settled(rel, st, now_s)
        await self._rescan(present)
        for rel in sorted(open_paths - set(self.tracker.seen)):
            logger.info("FileDeleted %s (gone while the producer was down)", rel)
            await self._append(FileDeleted(path=rel))

    def _stat(self, rel: str) -> os.stat_result | None:
        return stat_inside(self.root, rel)

    async def _look(self, rel: str) -> bool:
        """Report what changed about `rel` since the last look; True if it is there."""
        st = self._stat(rel)
        if st is None and rel in self.tracker.seen and self.absence.vanished(self.tracker.seen):
            return False
        event = self.tracker.look(rel, st, time.monotonic())
        if event is not None:
            await self._append(event)
            match event:
                case FileEvent(size=size):
                    logger.debug("%s %s (%d bytes)", type(event).__name__, rel, size)
                case FileDeleted():
                    logger.info("FileDeleted %s", rel)
        return st is not None

    async def _rescan(self, present: set[str] | None = None) -> None:
        """Look at every recording in WATCH_DIR (`present`, if just listed) and every known one."""
        if present is None:
            present = await self._recordings()
        for rel in sorted(present | set(self.tracker.seen)):
            await self._look(rel)

    async def _recordings(self) -> set[str]:
        """Every recording in WATCH_DIR now; one warning for each name that is not UTF-8."""
        undecodable: list[str] = []
        present = await asyncio.to_thread(
            lambda: set(walk_recordings(self.root, self.globs, undecodable.append))
        )
        for rel in undecodable:
            if self._undecodable.get(rel) is None:
                self._undecodable.put(rel, True)
                logger.warning(
                    "skipping %s: its name is not valid UTF-8, so it cannot be an S3 key; "
                    "rename it to have it uploaded",
                    printable(rel),
                )
        return present

    async def _watch(self, stop: asyncio.Event) -> None:
        """Look at what the watcher reports, starting it again when it fails.

        The watcher only makes changes seen sooner: the tick's looks and rescans find them
        all the same, and a rescan follows every restart. One name that is not UTF-8 is
        enough to make watchfiles fail.
        """
        pause_s = WATCHER_PAUSE_MIN_S
        while True:
            started_s = time.monotonic()
            failure = await self._watch_once(stop)
            if stop.is_set():
                return
            if failure is not None:
                if time.monotonic() - started_s >= WATCHER_HEALTHY_AFTER_S:
                    pause_s = WATCHER_PAUSE_MIN_S
                # A name that is not UTF-8 gets its own warning from the rescan.
                quiet = pause_s > WATCHER_PAUSE_MIN_S or failure.startswith("Unable to decode path")
                logger.log(
                    logging.DEBUG if quiet else logging.INFO,
                    "the file watcher stopped (%s); starting it again in %.0f s, then rescanning",
                    failure,
                    pause_s,
                )
                if await stopped_within(stop, pause_s):
                    return
                pause_s = min(pause_s * 2, WATCHER_PAUSE_MAX_S)
            # No await from here to the new watcher: the rescan comes after it is in place.
            self._rescan_due = True

    async def _watch_once(self, stop: asyncio.Event) -> str | None:
        """Watch until `stop` or a request to start again (None), or until the watcher fails
        (what it said)."""
        failure = None
        self._rewatch_due = False
        try:
            batches = awatch(
                self.root,
                stop_event=stop,
                recursive=True,
                debounce=500,
                step=50,
                watch_filter=None,
                ignore_permission_denied=True,
                rust_timeout=WATCH_TIMEOUT_MS,
                yield_on_timeout=True,
            )
            async with contextlib.aclosing(batches):
                async for changes in batches:
                    if self._rewatch_due:
                        return None
                    candidates = {self._candidate(path) for _change, path in changes}
                    for rel in sorted(c for c in candidates if c is not None):
                        await self._look(rel)
        except* (WatchfilesRustInternalError, FileNotFoundError) as group:
            failure = "; ".join(str(exc) for exc in group.exceptions)
        return failure

    async def _watch_closes(self, stop: asyncio.Event) -> None:
        """Finish files as their writers close them or they are moved in, until `stop`.

        The close watcher is started again (after a pause) when WATCH_DIR went away, and at
        once when it was mounted again. What it misses meanwhile ends on the idle timer.
        """
        while not stop.is_set():
            self._rewatch_closes.clear()
            watching = asyncio.create_task(self._watch_closes_once())
            waits = [
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self._rewatch_closes.wait()),
            ]
            try:
                await asyncio.wait([watching, *waits], return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait([watching, *waits])
            if watching.cancelled():
                continue  # stopping, or asked to start again
            failure = watching.result()  # an error nobody expected comes out here
            logger.debug("the close watcher stopped (%s); starting it again", failure)
            await stopped_within(stop, WATCHER_PAUSE_MAX_S)

    async def _watch_closes_once(self) -> str:
        """Report closed and moved-in files until the watcher fails; what it said."""
        try:
            with closes.Closes(self.root) as watcher:
                async for path in watcher.closed():
                    rel = self._candidate(str(path))
                    if rel is not None:
                        await self._closed(rel)
        except (closes.WatcherGone, OSError) as exc:
            return str(exc)
        return "no more events"

    async def _closed(self, rel: str) -> None:
        """`rel` was closed by a writer or moved in: report it finished, once, as it is now."""
        if not await self._look(rel):
            return
        event = self.tracker.closed(rel)
        if event is not None:
            await self._append(event)
            logger.info("FileClosed %s (%d bytes)", rel, event.size)

    def _candidate(self, raw: str) -> str | None:
        path = Path(raw)
        if not matches(path.name, self.globs):
            return None
        rel = relative_path(self.root, path)
        return rel if rel is not None and decodable(rel) else None

    async def _tick(self, stop: asyncio.Event) -> None:
        """Report files gone quiet, and catch any change the watcher did not report."""
        last_rescan = last_back_check = last_loss_check = time.monotonic()
        while not await stopped_within(stop, IDLE_CHECK_INTERVAL_S):
            if self.absence.away and time.monotonic() - last_back_check >= BACK_CHECK_INTERVAL_S:
                if self.absence.back(self.tracker.seen):
                    # A watcher on a file system that was unmounted hears nothing of the one
                    # mounted now.
                    self._rewatch_due = True
                    self._rewatch_closes.set()
                last_back_check = time.monotonic()
            if time.monotonic() - last_loss_check >= LOSS_CHECK_INTERVAL_S:
                await self._announced_again_if_lost()
                last_loss_check = time.monotonic()
            for rel in self.tracker.busy_paths():
                if not await self._look(rel):
                    continue
                idle = self.tracker.idle(rel, time.monotonic())
                if idle is not None:
                    await self._append(idle)
                    logger.info("FileIdle %s (%d bytes)", rel, idle.size)
            if self._rescan_due or time.monotonic() - last_rescan >= FULL_RESCAN_INTERVAL_S:
                self._rescan_due = False
                await self._rescan()
                last_rescan = time.monotonic()
