"""The uploader: one multipart upload per recording, sent while the file grows.

Every file event asks for a pass over its path (consumer/pass_decision.py): send the
whole parts not sent yet; when the file is idle, also finish the upload
(consumer/finalize.py). A pass only looks at the file and at the stream's state, so any
number of events, redeliveries or uploaders give the same result. Each step is appended
to the log as an event.

One uploader at a time holds a path (consumer/pathlock.py); a request that arrives
meanwhile is handed to the holder. While the holder has more parts to send than upload
slots, it offers the stream and uploaders with spare slots send some of them
(consumer/sharing.py, consumer/helper.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from functools import partial

from cefmp4.common.config import Settings
from cefmp4.common.errors import (
    FileChanged,
    LeaseLost,
    LogUnavailable,
    ProjectionBehind,
    Stopping,
    StorageError,
)
from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import (
    NEVER,
    StreamAborted,
    StreamFailed,
    StreamRecognized,
    StreamsPruned,
    UploadStarted,
    now_ms,
)
from cefmp4.common.files import inside_parts, matches, open_inside, stat_inside, watch_root
from cefmp4.common.keys import UPLOADERS
from cefmp4.common.parts import Part, plan_parts
from cefmp4.common.ratelimit import TokenBucket, bytes_per_s
from cefmp4.common.replicas import Replicated
from cefmp4.common.retry import Outage, transient, until_done
from cefmp4.common.s3 import Storage
from cefmp4.common.streamstate import StreamState
from cefmp4.common.tasks import Jobs, stopped_within
from cefmp4.consumer.finalize import Finalizer
from cefmp4.consumer.groupworker import Delivery, GroupWorker
from cefmp4.consumer.helper import Helper
from cefmp4.consumer.intents import UploadIntents
from cefmp4.consumer.partio import PartSender, part_uploaded, send_all
from cefmp4.consumer.pass_decision import (
    Fail,
    FileFacts,
    Leave,
    Mode,
    Restart,
    Send,
    Start,
    decide,
    mode_for,
)
from cefmp4.consumer.pathlock import PathLock
from cefmp4.consumer.pathview import PathView
from cefmp4.consumer.recognition import ContentTags
from cefmp4.consumer.regrowth import Regrowth
from cefmp4.consumer.reporting import report_until
from cefmp4.consumer.sharing import Offer, PartClaims
from cefmp4.consumer.sidecar import Sidecar
from cefmp4.consumer.tailtiming import TailTiming

logger = logging.getLogger(__name__)

MAX_LOCK_TTL_MS = 30_000
# S3 refusals that no retry can mend: the recording fails until its file changes.
FINAL_S3_CODES = frozenset({"EntityTooLarge", "KeyTooLongError"})
PATHS_IN_FLIGHT = 64
READ_BATCH = 32
EARLY_TAIL_LOOK_S = 0.1  # how often due early tails are looked for


def worth_retrying(exc: BaseException) -> bool:
    return transient(exc) or isinstance(exc, ProjectionBehind)


@dataclass
class PathWork:
    """Passes asked for one path in this process, and the entries they serve."""

    mode: int
    waiting: list[bytes] = field(default_factory=list)  # served by the next pass
    serving: list[bytes] = field(default_factory=list)  # served by the pass running now


def new_stream_id() -> str:
    # Sorts by creation time, and unique without coordination.
    return f"{now_ms():012x}{secrets.token_hex(4)}"


class Uploader:
    def __init__(
        self,
        settings: Settings,
        log: EventLog,
        storage: Storage,
        consumer: str,
        stop: asyncio.Event,
    ) -> None:
        self.consumer = consumer
        self.root = watch_root(settings)
        self.globs = settings.watch_filter_globs
        self.key_prefix = settings.s3_key_prefix
        self.retry_after_s = settings.retry_failed_after_seconds
        self.retry_max_s = settings.retry_failed_max_seconds
        self.part_size = settings.part_size_bytes
        self.concurrency = settings.upload_concurrency
        self.idle_after_ns = int(settings.watch_file_min_age_seconds_for_idle * 1e9)
        self.storage = storage
        self.tags = ContentTags(storage)
        self.stop = stop
        # Entries idle this long belong to a consumer that died; longer than a part upload.
        self.claim_idle_ms = int(settings.claim_idle_seconds * 1000)
        self.lock_ttl_ms = min(MAX_LOCK_TTL_MS, self.claim_idle_ms // 2)
        self.log = log
        self.worker = GroupWorker(
            log,
            UPLOADERS,
            consumer,
            sets_aside_corrupt=True,
            max_deliveries=settings.dead_letter_after_deliveries,
            dead_letters_max=settings.dead_letter_max_entries,
        )
        self.view = PathView(log)
        self.claims = PartClaims(log.redis, log.keys, self.lock_ttl_ms)
        self.intents = UploadIntents(log.redis, log.keys, Replicated.of(settings))
        limit_mbps = settings.upload_rate_limit_mbps
        bucket = TokenBucket(bytes_per_s(limit_mbps)) if limit_mbps else None
        self.sender = PartSender(storage, settings.upload_concurrency, stop, bucket)
        self.finalizer = Finalizer(
            storage,
            self.intents,
            self.claims,
            self.sender,
            self.view,
            Sidecar(settings, storage, self.root),
            self.tags,
            self.part_size,
        )
        self.regrowth = Regrowth(storage, self.sender, self.view, self.part_size)
        self.helper = Helper(log, self.root, self.claims, self.sender)
        self._work: dict[str, PathWork] = {}
        self.tails = TailTiming(self.idle_after_ns)
        self._outage = Outage("uploads", logger)
        self._log_outage = Outage("the log", logger)
        # Since when Redis has answered without a break (None: it does not now).
        self._reachable_since: float | None = None

    async def run(self) -> None:
        """Serve events until `stop`; then finish the parts in flight and return."""
        stop = self.stop
        await until_done(self.log.ensure_groups, self._log_outage, stop)
        try:
            await self._serve_log(stop)
        finally:
            await self.finalizer.sidecar.drain()

    async def _serve_log(self, stop: asyncio.Event) -> None:
        async with Jobs(PATHS_IN_FLIGHT) as jobs:
            jobs.start_now(self._keep_alive_loop())
            jobs.start_now(report_until(self.log, self.consumer, self.sender, stop))
            jobs.start_now(self._take_over_loop(jobs))
            jobs.start_now(self.helper.run(jobs, stop, self._work))
            jobs.start_now(self._early_tails_loop(jobs))
            noise_reads = 0  # reads in a row that held nothing to work on
            while not stop.is_set():
                try:
                    batch = await self.worker.read(self._read_size(noise_reads), 1000)
                    self._log_outage.recovered()
                    nothing = [d.entry.id for d in batch.deliveries if mode_for(d.event) is None]
                    if nothing:
                        # Waited out, not left pending: another consumer would take them
                        # over after the outage and count a delivery each time.
                        await until_done(partial(self.worker.ack, *nothing), self._log_outage, stop)
                    for delivery in batch.deliveries:
                        if mode_for(delivery.event) is not None:
                            await self._dispatch(jobs, delivery)
                    only_noise = batch.ids and len(nothing) == len(batch.ids)
                    noise_reads = noise_reads + 1 if only_noise else 0
                except LogUnavailable as exc:
                    await stopped_within(stop, self._log_outage.failed(exc))

    def _read_size(self, noise_reads: int) -> int:
        """How many entries to read next.

        No more new paths than free upload slots: entries this process leaves in the log go
        to other consumers, so files spread over them. But most entries are steps other
        uploaders recorded, with nothing to do but acknowledge: while reads hold only those,
        each reads twice as many, so a busy log is not read one entry at a time.
        """
        free = max(1, self.concurrency - len(self._work))
        return min(READ_BATCH, max(free, 1 << min(noise_reads, 8)))

    async def _keep_alive_loop(self) -> None:
        """Keep every entry this process works on alive, three times per CLAIM_IDLE."""
        loop = asyncio.get_running_loop()
        while not await stopped_within(self.stop, max(0.1, self.claim_idle_ms / 3000)):
            in_progress = [i for work in self._work.values() for i in work.serving + work.waiting]
            try:
                await self.worker.keep_alive(in_progress)
            except LogUnavailable:
                self._reachable_since = None
                continue
            if self._reachable_since is None:
                self._reachable_since = loop.time()

    async def _take_over_loop(self, jobs: Jobs) -> None:
        """Take over the entries of consumers that died, every quarter of CLAIM_IDLE.

        Only once Redis has answered for a whole CLAIM_IDLE since it last did not: after an
        outage every live consumer first gets the time to keep its own entries alive.
        """
        loop = asyncio.get_running_loop()
        while not await stopped_within(self.stop, max(1.0, self.claim_idle_ms / 4000)):
            since = self._reachable_since
            if since is None or loop.time() - since < self.claim_idle_ms / 1000:
                continue
            try:
                for delivery in await self.worker.take_over(self.claim_idle_ms, 100):
                    await self._dispatch(jobs, delivery)
            except LogUnavailable as exc:
                logger.warning("cannot claim pending entries: %s", exc)

    async def _early_tails_loop(self, jobs: Jobs) -> None:
        """A pass over each growing file once it has been quiet long enough (tailtiming.py)."""
        while not await stopped_within(self.stop, EARLY_TAIL_LOOK_S):
            for path in self.tails.pop_due(time.time_ns()):
                if path not in self._work:  # else the pass under way looks for itself
                    await self._start_work(jobs, path, PathWork(Mode.SYNC, []))

    async def _dispatch(self, jobs: Jobs, delivery: Delivery) -> None:
        entry, event = delivery
        mode = mode_for(event)
        if mode is None or isinstance(event, StreamsPruned):
            await self.worker.ack(entry.id)
            return
        path = event.path
        parts = inside_parts(path)
        if parts is None:
            await self.worker.set_aside(entry, f"path outside WATCH_DIR: {path!r}")
            return
        if not matches(parts[-1], self.globs):
            await self.worker.set_aside(entry, f"not matched by WATCH_FILTER_GLOBS: {path!r}")
            return
        work = self._work.get(path)
        if work is not None:
            work.mode = max(work.mode, mode)
            work.waiting.append(entry.id)
            return
        await self._start_work(jobs, path, PathWork(mode, [entry.id]))

    async def _start_work(self, jobs: Jobs, path: str, work: PathWork) -> None:
        await jobs.start(self._serve(path, work))
        self._work[path] = work

    async def _serve(self, path: str, work: PathWork) -> None:
        """Run passes for `path` until no more are asked for; ack the entries served."""
        try:
            while work.mode:
                mode, work.serving = work.mode, work.waiting
                work.mode, work.waiting = 0, []
                try:
                    # A pass serving no entry is the early-tail timer's look, asked by no event.
                    await self._locked_passes(path, mode, look=not work.serving)
                except FileChanged as exc:
                    # The change brings its own events, and with them another pass.
                    logger.info("%s changed during the pass (%s)", path, exc)
                except Stopping:
                    return  # unacknowledged: a live consumer claims these entries
                except LeaseLost:
                    logger.warning("lost the lock on %s during a pass", path)
                    return  # unacknowledged, as when stopping
                except Exception:
                    # Unacknowledged and no longer kept alive: another consumer takes them
                    # over after CLAIM_IDLE, and sets them aside after a few tries.
                    logger.exception("pass over %s failed", path)
                    work.serving = []
                    continue
                if work.serving:
                    await until_done(
                        lambda ids=work.serving: self.worker.ack(*ids),  # type: ignore[misc]
                        self._log_outage,
                        self.stop,
                    )
                work.serving = []
        except Stopping:
            return
        finally:
            del self._work[path]

    async def _locked_passes(self, path: str, mode: int, *, look: bool = False) -> None:
        """Passes over `path` under its lock, for `mode` and what others ask meanwhile. With
        `look`, the first pass only sends to the open stream (see `_pass`)."""
        lock = PathLock(self.log.redis, self.log.keys, path, self.lock_ttl_ms)
        mode = await until_done(lambda: lock.acquire_or_mark(mode), self._log_outage, self.stop)
        if not mode:
            return  # the holder runs another pass for us
        try:
            async with lock.kept():
                while mode > 0:
                    await self._pass_until_done(lock, Mode(mode), look)
                    look = False
                    mode = await until_done(lock.release_or_continue, self._log_outage, self.stop)
            if mode < 0:
                logger.warning("lost the lock on %s during a pass", path)
        except BaseException:
            with contextlib.suppress(LogUnavailable):
                await lock.release()
            raise

    async def _pass_until_done(self, lock: PathLock, mode: Mode, look: bool = False) -> None:
        """A pass, retried through outages. A stream S3 or the disk refuses is failed, to be
        tried again later (see `_retry_at`) unless no retry can mend it."""
        try:
            await until_done(
                lambda: self._pass(lock, mode, look), self._outage, self.stop, worth_retrying
            )
        except StorageError as exc:
            state = self.view.known(lock.path)
            if state is None or state.terminal:
                raise
            if exc.code == "NoSuchUpload":
                # Aborted behind our back; the next pass starts the file afresh.
                await self._abort(lock, state, "the multipart upload no longer exists")
                await self._pass_until_done(lock, mode, look)
                return
            retry_at = NEVER if exc.code in FINAL_S3_CODES else self._retry_at(state)
            await self._fail(lock, state, f"S3 refused: {exc}", retry_at)
        except OSError as exc:
            # The disk, not an outage to wait out: EIO, or ENOENT/ESTALE from a network mount.
            state = self.view.known(lock.path)
            if state is None or state.terminal:
                raise
            reason = f"cannot read file: {exc.strerror or exc}"
            await self._fail(lock, state, reason, self._retry_at(state))

    async def _pass(self, lock: PathLock, mode: Mode, look: bool = False) -> None:
        """One pass over the path. A `look` only sends to the open stream: a file missing or
        replaced then is left to the producer's events, which know a file moved away or an
        unmounted folder from a deleted file."""
        path = lock.path
        state = await self.view.latest(path)
        st = stat_inside(self.root, path)
        facts = FileFacts.of(st) if st is not None else None
        grown_from: StreamState | None = None  # a completed stream the new one may copy from
        action = decide(state, facts, now_ms(), by_hand=mode == Mode.RETRY)
        if look and not isinstance(action, Send):
            if isinstance(action, Fail | Restart):
                logger.info("%s is not as its open stream saw it: left to the file's events", path)
            else:
                self.tails.forget(path)  # finished meanwhile: nothing to send early
            return
        match action:
            case Leave():
                self.tails.forget(path)
                return
            case Fail(reason=reason):
                assert state is not None
                self.tails.forget(path)
                # If the file comes back, it may be uploaded again at once.
                await self._fail(lock, state, reason, now_ms())
                return
            case Restart(reason=reason):
                assert state is not None and st is not None
                await self._abort(lock, state, reason)
                state = await self._start(lock, st, state)
            case Start():
                assert st is not None
                if await self._recognized(lock, st, mode):
                    return
                grown_from = state
                state = await self._start(lock, st, state)
            case Send():
                pass
        assert st is not None and state is not None
        # An OSError fails the stream, in _pass_until_done.
        fd = open_inside(self.root, path, (st.st_ino, st.st_dev))
        try:
            st = os.fstat(fd)
            crcs: dict[int, int] = {}
            if grown_from is not None:
                state = await self.regrowth.copy_unchanged(lock, grown_from, state, fd, st, crcs)
            seen_ns = time.time_ns()
            self.tails.observe(path, st.st_size, st.st_mtime_ns, seen_ns)
            early_tail = st.st_size > 0 and self.tails.quiet_enough(path, st.st_mtime_ns, seen_ns)
            # While growing, parts already sent are left alone, and other uploaders may help.
            plan = plan_parts(st.st_size, self.part_size, final=mode >= Mode.FINAL or early_tail)
            unsent = [p for p in plan if not _sent_as(state, p)]
            if unsent:
                await self._send_shared(lock, state, fd, st, unsent, crcs)
            if mode >= Mode.FINAL:
                await self.finalizer.finalize(lock, state, fd, st, crcs)
                self.tails.forget(path)
            elif not early_tail and st.st_size > sum(p.length for p in plan):
                self.tails.schedule(path, st.st_mtime_ns)
        finally:
            os.close(fd)

    async def _send_shared(
        self,
        lock: PathLock,
        state: StreamState,
        fd: int,
        st: os.stat_result,
        parts: list[Part],
        crcs: dict[int, int],
    ) -> None:
        """Send whole parts not sent yet, each under a claim; offer them when there are many."""
        path = lock.path
        offered = len(parts) > self.concurrency
        if offered:
            await self.claims.offer(
                Offer(
                    stream_id=state.stream_id,
                    path=path,
                    s3_key=state.s3_key,
                    upload_id=state.upload_id,
                    inode=state.inode,
                    device=state.device,
                    part_size=self.part_size,
                    offered_at_ms=now_ms(),
                )
            )

        async def send(part: Part) -> None:
            async with self.sender.slot(part):
                try:
                    async with self.claims.held(
                        state.stream_id, part.number, helper=False
                    ) as claim:
                        if claim is None:
                            return  # sent by a helper, or on its way
                        read = await self.sender.read_and_send(
                            state.s3_key,
                            state.upload_id,
                            fd,
                            part,
                            state.parts.get(part.number),
                            lock.fence,
                        )
                        if read.etag is not None:
                            event = part_uploaded(
                                state.stream_id, path, part, read, read.etag, st.st_size
                            )
                            await self.view.record(lock, event)
                except LeaseLost:
                    logger.info("claim on part %d of %s lapsed", part.number, path)
                    return
                crcs[part.number] = read.crc32

        try:
            await send_all(send(part) for part in parts)
        finally:
            if offered:
                with contextlib.suppress(LogUnavailable):
                    await self.claims.retract(state.stream_id)

    async def _recognized(self, lock: PathLock, st: os.stat_result, mode: Mode) -> bool:
        """Record the file as complete if its object is already in S3, made from the file as
        it is now (consumer/recognition.py); True if it was.

        Asked only of a file that is idle (a final pass, or not written for the idle time):
        S3 is not asked while a recording grows, and a growing file would not match anyway.
        """
        if mode < Mode.FINAL and time.time_ns() - st.st_mtime_ns < self.idle_after_ns:
            return False
        path = lock.path
        key = self.key_prefix + path
        facts = await self.tags.recognize(key, st.st_size, st.st_mtime_ns)
        if facts is None:
            return False
        event = StreamRecognized(
            stream_id=new_stream_id(),
            path=path,
            s3_key=key,
            inode=st.st_ino,
            device=st.st_dev,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            etag=facts.etag,
            made_by=facts.stream_id,
        )
        await self.view.record(lock, event)
        logger.info(
            "%s is already in S3 (uploaded by stream %s): recorded as stream %s, not sent again",
            path,
            facts.stream_id,
            event.stream_id,
        )
        return True

    async def _start(
        self, lock: PathLock, st: os.stat_result, previous: StreamState | None
    ) -> StreamState:
        path = lock.path
        key = self.key_prefix + path
        stream_id = new_stream_id()
        await lock.fence()
        await self.intents.intend(stream_id, key)
        upload_id = await self.storage.create_upload(key, stream_id)
        await until_done(
            lambda: self.intents.started(stream_id, key, upload_id), self._log_outage, self.stop
        )
        same_file = previous is not None and (previous.inode, previous.device) == (
            st.st_ino,
            st.st_dev,
        )
        failed_before = previous is not None and previous.status == "failed" and same_file
        event = UploadStarted(
            stream_id=stream_id,
            path=path,
            s3_key=key,
            upload_id=upload_id,
            inode=st.st_ino,
            device=st.st_dev,
            size=st.st_size,
            attempt=previous.attempt + 1 if previous is not None and failed_before else 0,
        )
        logger.info("started %s as stream %s", path, event.stream_id)
        # Waited out here rather than by retrying the pass, which would open another
        # upload and leave this one to the orphan sweep.
        return await until_done(lambda: self.view.record(lock, event), self._log_outage, self.stop)

    def _retry_at(self, state: StreamState) -> int:
        """When a failed stream's unchanged file is tried again: doubling, capped."""
        delay_s = min(self.retry_after_s * 2 ** min(state.attempt, 30), self.retry_max_s)
        return now_ms() + int(delay_s * 1000)

    async def _abort_upload(self, lock: PathLock, state: StreamState) -> None:
        try:
            await lock.fence()
            await self.storage.abort(state.s3_key, state.upload_id)
        except StorageError as exc:
            if exc.retryable:
                raise
            # Refused for good (e.g. bad credentials): the orphan sweep retries it later.
            logger.warning("cannot abort upload of %s: %s", state.path, exc)
        else:
            await self.intents.done(state.stream_id)
        await self.claims.forget(state.stream_id)

    async def _abort(self, lock: PathLock, state: StreamState, reason: str) -> StreamState:
        """End a stream superseded by the file's new content."""
        await self._abort_upload(lock, state)
        logger.warning("StreamAborted %s: %s", state.path, reason)
        event = StreamAborted(stream_id=state.stream_id, path=state.path, reason=reason)
        return await self.view.record(lock, event)

    async def _fail(
        self, lock: PathLock, state: StreamState, reason: str, retry_at_ms: int
    ) -> StreamState:
        """End a stream that could not be uploaded; its file may be tried at `retry_at_ms`."""
        await self._abort_upload(lock, state)
        st = stat_inside(self.root, state.path)
        if retry_at_ms == NEVER:
            logger.warning("StreamFailed %s: %s; not retried unless it changes", state.path, reason)
        else:
            wait_s = max(0.0, (retry_at_ms - now_ms()) / 1000)
            logger.warning("StreamFailed %s: %s; retried in %.0fs", state.path, reason, wait_s)
        event = StreamFailed(
            stream_id=state.stream_id,
            path=state.path,
            reason=reason,
            retry_at_ms=retry_at_ms,
            size=st.st_size if st is not None else -1,
            mtime_ns=st.st_mtime_ns if st is not None else 0,
        )
        return await self.view.record(lock, event)


def _sent_as(state: StreamState, part: Part) -> bool:
    sent = state.parts.get(part.number)
    return sent is not None and (sent.offset, sent.length) == (part.offset, part.length)
