"""The uploader: one multipart upload per recording, sent while the file grows.

Every file event asks for a pass over its path: send the whole parts not sent yet; when
the file is idle, also send the tail, re-check every part sent earlier against the
file's current bytes (recorders rewrite their headers), and complete. A pass only looks
at the file and at the stream's state, so any number of events, redeliveries or
uploaders give the same result. Each step is appended to the log as an event.

One uploader at a time holds a path; while it has more parts to send than upload slots,
uploaders with spare slots send some of them (consumer/sharing.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
import os
import secrets
import time
import zlib
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from common import metrics
from common.config import Settings
from common.errors import CorruptEvent, Stopping, StorageError
from common.events import (
    AbortRequested,
    AnyEvent,
    FileCreated,
    FileDeleted,
    FileIdle,
    FileWritten,
    FinalizeRequested,
    PartUploaded,
    StreamAborted,
    StreamCompleted,
    StreamFailed,
    StreamFinalizing,
    UploadRetriggered,
    UploadStarted,
    decode,
    now_ms,
)
from common.files import (
    open_recording,
    resolve_inside,
    settled_ctime,
    stat_recording,
    watch_root,
)
from common.keys import UPLOADERS
from common.lease import renewed
from common.log import Entry, EventLog, entry_id_tuple
from common.parts import Part, plan_parts
from common.retry import REDIS_OUTAGE, Outage, transient, until_done
from common.s3 import SentPart, Storage
from common.state import PartRecord, StreamState
from consumer.pathlock import FINAL, SYNC, PathLock
from consumer.projection import apply
from consumer.projector import read_state, wait_for_position
from consumer.sharing import Offer, OfferWithdrawn, PartClaims
from consumer.sidecar import Sidecar

logger = logging.getLogger(__name__)

MAX_LOCK_TTL_MS = 30_000
PROJECTION_WAIT_S = 30.0
PATHS_IN_FLIGHT = 64
READ_BATCH = 32
KNOWN_PATHS_MAX = 10_000
HELP_POLL_S = 0.2

_MODES: dict[type, int] = {
    FileCreated: SYNC,
    FileWritten: SYNC,
    FileDeleted: SYNC,
    UploadRetriggered: SYNC,
    AbortRequested: SYNC,
    FileIdle: FINAL,
    FinalizeRequested: FINAL,
}


class FileChanged(Exception):
    """The file changed while a pass was reading it; the next event brings another pass."""


class ProjectionBehind(Exception):
    """The projection has not caught up with this path's last recorded step yet."""


def deciding_error(failures: BaseExceptionGroup[Exception]) -> Exception:
    """Of several parts failing at once, the error that decides what the pass does next.

    Stopping comes first, then a file change, then a refusal for good, then an outage.
    """
    errors = [e for e in _leaves(failures) if isinstance(e, Exception)]

    def rank(error: Exception) -> int:
        if isinstance(error, Stopping):
            return 0
        if isinstance(error, FileChanged):
            return 1
        return 2 if isinstance(error, StorageError) and not error.retryable else 3

    return min(errors, key=rank)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found


def worth_retrying(exc: BaseException) -> bool:
    return transient(exc) or isinstance(exc, ProjectionBehind)


@dataclass
class PathWork:
    """Passes asked for one path in this process, and the entries waiting on them."""

    mode: int
    entry_ids: list[bytes] = field(default_factory=list)


def new_stream_id() -> str:
    # Sorts by creation time, and unique without coordination.
    return f"{now_ms():012x}{secrets.token_hex(4)}"


class PartBuffer(io.BytesIO):
    """One part's bytes, in a buffer used again for the next part of the same size.

    botocore and aiohttp send a BytesIO in small chunks without copying it (bytes would be
    copied whole on the way), and aiohttp closes it when sent: here that only rewinds it.
    """

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length
        if length:
            self.seek(length - 1)
            self.write(b"\0")
            self.seek(0)

    def close(self) -> None:
        self.seek(0)


def read_part(fd: int, part: Part, buffer: PartBuffer) -> int:
    """Read the part into `buffer`; returns the bytes' CRC32."""
    buffer.seek(0)
    with buffer.getbuffer() as view:
        if part.length and os.preadv(fd, [view], part.offset) != part.length:
            raise FileChanged(f"short read of part {part.number}")
        return zlib.crc32(view)


def unchanged_since(state: StreamState, st: os.stat_result) -> bool:
    """Whether a finished stream still stands for the file (else a new stream starts).

    An aborted stream was superseded, so it never stands; a failed one stands until the
    file changes, so a file S3 refuses is not retried on every event.
    """
    same = (state.inode, state.device, state.size_bytes) == (st.st_ino, st.st_dev, st.st_size)
    if state.status == "completed":
        return same and state.mtime_ns == st.st_mtime_ns
    return same and state.status == "failed"


class Uploader:
    def __init__(self, settings: Settings, log: EventLog, storage: Storage, consumer: str) -> None:
        self.root = watch_root(settings)
        self.key_prefix = settings.s3_key_prefix
        self.part_size = settings.part_size_bytes
        self.log = log
        self.storage = storage
        self.sidecar = Sidecar(settings, storage, self.root)
        self.consumer = consumer
        # Entries idle this long belong to a consumer that died; longer than a part upload.
        self.claim_idle_ms = int(settings.claim_idle_seconds * 1000)
        self.lock_ttl_ms = min(MAX_LOCK_TTL_MS, self.claim_idle_ms // 2)
        self.max_deliveries = settings.dead_letter_after_deliveries
        self._work: dict[str, PathWork] = {}
        self._known: dict[str, tuple[bytes | None, StreamState | None]] = {}
        self.concurrency = settings.upload_concurrency
        self._part_slots = asyncio.Semaphore(settings.upload_concurrency)
        self.claims = PartClaims(log.redis, log.keys, self.lock_ttl_ms)
        # Offers this process is helping with, or has helped with (stream id -> offer time).
        self._helping: set[str] = set()
        self._helped: dict[str, int] = {}
        # At most one buffer per slot: reused, so re-reading a whole file at the end
        # neither allocates nor faults in fresh pages.
        self._spare_buffers: collections.deque[PartBuffer] = collections.deque(
            maxlen=settings.upload_concurrency
        )
        self._path_slots = asyncio.Semaphore(PATHS_IN_FLIGHT)
        self._tasks: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self._outage = Outage("uploads", logger)
        self._log_outage = Outage("the log", logger)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve events until `stop`; then finish the parts in flight and return."""
        self._stop = stop
        await until_done(self.log.ensure_groups, self._log_outage, stop)
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            tasks.create_task(self._claim_loop(stop))
            tasks.create_task(self._help_loop(stop))
            while not stop.is_set():
                try:
                    # Take no more new paths than free upload slots: entries this process
                    # leaves in the log go to other consumers, so files spread over them.
                    count = min(READ_BATCH, max(1, self.concurrency - len(self._work)))
                    entries = await self.log.read(UPLOADERS, self.consumer, count, 1000)
                    self._log_outage.recovered()
                    for entry in entries:
                        await self._dispatch(entry)
                except REDIS_OUTAGE as exc:
                    await _wait(stop, self._log_outage.failed(exc))

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        while not await _wait(stop, max(1.0, self.claim_idle_ms / 4000)):
            try:
                claimed = await self.log.claim_stale(
                    UPLOADERS, self.consumer, self.claim_idle_ms, 100
                )
                deliveries = await self.log.deliveries(UPLOADERS, [e.id for e in claimed])
                for entry in claimed:
                    if deliveries.get(entry.id, 0) > self.max_deliveries:
                        await self.log.dead_letter(
                            UPLOADERS, entry, f"not handled after {self.max_deliveries} tries"
                        )
                        continue
                    logger.info("took over entry %s", entry.id.decode())
                    await self._dispatch(entry)
            except REDIS_OUTAGE as exc:
                logger.warning("cannot claim pending entries: %s", exc)

    async def _dispatch(self, entry: Entry) -> None:
        try:
            event = decode(entry.fields)
        except CorruptEvent as exc:
            await self.log.dead_letter(UPLOADERS, entry, f"cannot decode: {exc}")
            return
        mode = _MODES.get(type(event))
        if mode is None:
            await self.log.ack(UPLOADERS, entry.id)
            return
        path: str = event.path
        if resolve_inside(self.root, path) is None:
            await self.log.dead_letter(UPLOADERS, entry, f"path outside WATCH_DIR: {path!r}")
            return
        work = self._work.get(path)
        if work is not None:
            work.mode = max(work.mode, mode)
            work.entry_ids.append(entry.id)
            return
        await self._path_slots.acquire()
        work = self._work[path] = PathWork(mode, [entry.id])
        assert self._tasks is not None
        self._tasks.create_task(self._serve(path, work))

    async def _serve(self, path: str, work: PathWork) -> None:
        """Run passes for `path` until no more are asked for; ack the entries served."""
        try:
            while work.mode:
                mode, entry_ids = work.mode, work.entry_ids
                work.mode, work.entry_ids = 0, []
                try:
                    await self._locked_passes(path, mode)
                except FileChanged as exc:
                    # The change brings its own events, and with them another pass.
                    logger.info("%s changed during the pass (%s)", path, exc)
                except Stopping:
                    return  # unacknowledged: a live consumer claims these entries
                except Exception:
                    # Unacknowledged: a later claim retries, and dead-letters after a few.
                    logger.exception("pass over %s failed", path)
                    continue
                await until_done(
                    lambda ids=entry_ids: self.log.ack(UPLOADERS, *ids),  # type: ignore[misc]
                    self._log_outage,
                    self._stop,
                )
        except Stopping:
            return
        finally:
            del self._work[path]
            self._path_slots.release()

    async def _locked_passes(self, path: str, mode: int) -> None:
        lock = PathLock(self.log.redis, self.log.keys, path, self.lock_ttl_ms)
        mode = await until_done(lambda: lock.acquire_or_mark(mode), self._log_outage, self._stop)
        if not mode:
            return  # the holder runs another pass for us
        try:
            async with renewed(lock.renew, lock.ttl_ms, f"the lock on {path}"):
                while mode > 0:
                    await self._pass_until_done(path, final=mode == FINAL)
                    mode = await until_done(lock.release_or_continue, self._log_outage, self._stop)
            if mode < 0:
                logger.warning("lost the lock on %s during a pass", path)
        except BaseException:
            with contextlib.suppress(*REDIS_OUTAGE):
                await lock.release()
            raise

    async def _pass_until_done(self, path: str, *, final: bool) -> None:
        """A pass, retried through outages; a stream S3 refuses for good is failed."""
        try:
            await until_done(
                lambda: self._pass(path, final=final), self._outage, self._stop, worth_retrying
            )
        except StorageError as exc:
            _, state = self._known.get(path, (None, None))
            if state is None or state.terminal:
                raise
            if exc.code == "NoSuchUpload":
                # Aborted behind our back; the next pass starts the file afresh.
                await self._end(state, StreamAborted, "the multipart upload no longer exists")
                await self._pass_until_done(path, final=final)
                return
            await self._end(state, StreamFailed, f"S3 refused: {exc}")

    async def _pass(self, path: str, *, final: bool) -> None:
        full = resolve_inside(self.root, path)
        state = await self._state_for(path)
        st = stat_recording(full) if full is not None else None
        if st is None:
            if state is not None and not state.terminal:
                await self._end(state, StreamFailed, "file deleted while recording")
            return
        if state is not None and not state.terminal:
            if (st.st_ino, st.st_dev) != (state.inode, state.device):
                state = await self._end(state, StreamAborted, "file replaced by a new one")
            elif st.st_size < max((p.offset + p.length for p in state.parts.values()), default=0):
                state = await self._end(state, StreamAborted, "file truncated")
        if state is None or state.terminal:
            if state is not None and unchanged_since(state, st):
                return
            state = await self._start(path, st)
        assert full is not None
        try:
            fd = open_recording(full)
        except OSError as exc:
            await self._end(state, StreamFailed, f"cannot read file: {exc.strerror}")
            return
        try:
            await self._send(path, state, fd, final=final)
        finally:
            os.close(fd)

    async def _send(self, path: str, state: StreamState, fd: int, *, final: bool) -> None:
        st = os.fstat(fd)
        crcs: dict[int, int] = {}
        # While growing, parts already sent are left alone, and other uploaders may help.
        growing = plan_parts(st.st_size, self.part_size, final=False)
        unsent = [p for p in growing if not _sent_as(state, p)]
        if unsent:
            await self._send_shared(path, state, fd, st, unsent, crcs)
        if not final:
            return
        # At the end every part that may have changed since it was read is read again,
        # and those whose bytes changed go again, by this uploader alone. Parts read in
        # this pass, or read after the file had settled and it has not changed since,
        # cannot have changed.
        state = await self._take_back(path, state)
        plan = plan_parts(st.st_size, self.part_size, final=True)

        async def send(part: Part) -> None:
            async with self._part_slots:
                self._check_stopping(part)
                crc, etag, ctime = await self._read_and_send(
                    state.s3_key, state.upload_id, fd, part, state.parts.get(part.number)
                )
            if etag is not None:
                event = _part_event(state.stream_id, path, part, crc, etag, st.st_size, ctime)
                await self._record(path, event)
            crcs[part.number] = crc

        for part in plan:
            record = state.parts.get(part.number)
            if record is not None and _still_as_read(record, part, st):
                crcs[part.number] = record.crc32
        again = [part for part in plan if part.number not in crcs]
        await _all_of(send(part) for part in again)
        now = os.fstat(fd)
        if _changed(now, st):
            raise FileChanged("file changed while finalizing")
        await self._complete(path, plan, crcs, st, len(again))

    async def _send_shared(
        self,
        path: str,
        state: StreamState,
        fd: int,
        st: os.stat_result,
        parts: list[Part],
        crcs: dict[int, int],
    ) -> None:
        """Send whole parts not sent yet, each under a claim; offer them when there are many."""
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
            async with self._part_slots:
                self._check_stopping(part)
                async with self.claims.held(state.stream_id, part.number, helper=False) as mine:
                    if not mine:
                        return  # sent by a helper, or on its way
                    crc, etag, ctime = await self._read_and_send(
                        state.s3_key, state.upload_id, fd, part, state.parts.get(part.number)
                    )
                    if etag is not None:
                        event = _part_event(
                            state.stream_id, path, part, crc, etag, st.st_size, ctime
                        )
                        await self._record(path, event)
            crcs[part.number] = crc

        try:
            await _all_of(send(part) for part in parts)
        finally:
            if offered:
                with contextlib.suppress(*REDIS_OUTAGE):
                    await self.claims.retract(state.stream_id)

    async def _take_back(self, path: str, state: StreamState) -> StreamState:
        """Stop helpers and wait for their parts in flight; the state with their parts."""
        done = await self.claims.withdraw(state.stream_id)
        if done <= state.parts.keys():
            return state
        fresh = await self._state_for(path, fresh=True)
        if fresh is None or fresh.stream_id != state.stream_id or fresh.terminal:
            raise FileChanged("stream changed while finalizing")
        return fresh

    def _check_stopping(self, part: Part) -> None:
        if self._stop.is_set():
            raise Stopping(f"stopping before part {part.number}")

    async def _read_and_send(
        self, s3_key: str, upload_id: str, fd: int, part: Part, sent: PartRecord | None
    ) -> tuple[int, str | None, int]:
        """Read the part; send it unless `sent` holds these bytes.

        Returns its CRC32, the ETag if sent, and the settled ctime it was read at (or 0).
        """
        body = self._buffer_for(part)
        ctime = settled_ctime(os.fstat(fd), time.time_ns())
        crc = await asyncio.to_thread(read_part, fd, part, body)
        etag = None
        if sent is None or (sent.offset, sent.length, sent.crc32) != (
            part.offset,
            part.length,
            crc,
        ):
            etag = await self.storage.upload_part(s3_key, upload_id, part.number, body, crc)
            metrics.count_part_uploaded(part.length)
        self._spare_buffers.append(body)
        return crc, etag, ctime

    # --- helping another uploader with its parts ---

    async def _help_loop(self, stop: asyncio.Event) -> None:
        while not await _wait(stop, HELP_POLL_S):
            if self._part_slots.locked():
                continue  # no spare slot to help with
            try:
                offers = await self.claims.live_offers()
            except REDIS_OUTAGE:
                continue
            for offer in offers:
                if (
                    offer.stream_id in self._helping
                    or self._helped.get(offer.stream_id) == offer.offered_at_ms
                    or offer.path in self._work
                ):
                    continue
                self._helping.add(offer.stream_id)
                assert self._tasks is not None
                self._tasks.create_task(self._help(offer))

    async def _help(self, offer: Offer) -> None:
        """Send whole parts of an offered stream that nobody has claimed, last parts first."""
        try:
            full = resolve_inside(self.root, offer.path)
            fd = open_recording(full) if full is not None else None
        except OSError:
            fd = None
        try:
            if fd is None:
                return
            st = os.fstat(fd)
            if (st.st_ino, st.st_dev) != (offer.inode, offer.device):
                return
            parts = plan_parts(st.st_size, offer.part_size, final=False)
            await _all_of(self._help_with(offer, fd, st, part) for part in reversed(parts))
        except (OfferWithdrawn, Stopping):
            pass
        except Exception as exc:
            # The holder sends whatever its helpers did not.
            logger.info("stopped helping with %s: %s", offer.path, exc)
        finally:
            if fd is not None:
                os.close(fd)
            self._helping.discard(offer.stream_id)
            _put_newest(self._helped, offer.stream_id, offer.offered_at_ms)

    async def _help_with(self, offer: Offer, fd: int, st: os.stat_result, part: Part) -> None:
        async with self._part_slots:
            self._check_stopping(part)
            async with self.claims.held(offer.stream_id, part.number, helper=True) as mine:
                if not mine:
                    return
                crc, etag, ctime = await self._read_and_send(
                    offer.s3_key, offer.upload_id, fd, part, None
                )
                assert etag is not None
                event = _part_event(offer.stream_id, offer.path, part, crc, etag, st.st_size, ctime)
                await self.log.append_for_path(event, offer.path)
        logger.debug("helped with part %d of %s", part.number, offer.path)

    def _buffer_for(self, part: Part) -> PartBuffer:
        for _ in range(len(self._spare_buffers)):
            buffer = self._spare_buffers.popleft()
            if buffer.length == part.length:
                return buffer
            self._spare_buffers.append(buffer)
        return PartBuffer(part.length)

    async def _complete(
        self, path: str, plan: list[Part], crcs: dict[int, int], st: os.stat_result, again: int
    ) -> None:
        _, state = self._known[path]
        assert state is not None
        sent: list[SentPart] = []
        for part in plan:
            record = state.parts.get(part.number)
            if record is None or (record.offset, record.length) != (part.offset, part.length):
                raise FileChanged(f"part {part.number} missing before completion")
            if record.crc32 != crcs.get(part.number):
                raise FileChanged(f"part {part.number} does not match the file")
            sent.append(SentPart(part.number, record.etag, record.crc32))
        if sum(p.length for p in plan) != st.st_size:
            raise FileChanged("parts do not add up to the file size")
        stream_id = state.stream_id
        await self._record(path, StreamFinalizing(stream_id=stream_id, path=path, size=st.st_size))
        try:
            etag = await self.storage.complete(state.s3_key, state.upload_id, sent)
        except StorageError as exc:
            # A predecessor may have completed it and died before recording that.
            if exc.code != "NoSuchUpload" or await self.storage.object_size(state.s3_key) != (
                st.st_size
            ):
                raise
            etag = ""
        size = await self.storage.object_size(state.s3_key)
        if size != st.st_size:
            await self._record(
                path,
                StreamFailed(
                    stream_id=stream_id,
                    path=path,
                    reason=f"object has {size} bytes, file {st.st_size}",
                ),
            )
            return
        completed = await self._record(
            path,
            StreamCompleted(
                stream_id=stream_id, path=path, size=st.st_size, etag=etag, mtime_ns=st.st_mtime_ns
            ),
        )
        metrics.observe_completed(completed, st.st_mtime_ns)
        await self.claims.forget(stream_id)
        await self.sidecar.publish(completed)
        logger.info(
            "completed %s (%d bytes, %d parts, %d read at the end)",
            path,
            st.st_size,
            len(plan),
            again,
            extra={"stream_id": stream_id, "path": path},
        )

    async def _start(self, path: str, st: os.stat_result) -> StreamState:
        key = self.key_prefix + path
        upload_id = await self.storage.create_upload(key)
        event = UploadStarted(
            stream_id=new_stream_id(),
            path=path,
            s3_key=key,
            upload_id=upload_id,
            inode=st.st_ino,
            device=st.st_dev,
            size=st.st_size,
        )
        logger.info("started %s as stream %s", path, event.stream_id)
        # Waited out here rather than by retrying the pass, which would open another
        # upload and leave this one to the orphan sweep.
        return await until_done(lambda: self._record(path, event), self._log_outage, self._stop)

    async def _end(
        self,
        state: StreamState,
        kind: type[StreamFailed] | type[StreamAborted],
        reason: str,
    ) -> StreamState:
        try:
            await self.storage.abort(state.s3_key, state.upload_id)
        except StorageError as exc:
            if exc.retryable:
                raise
            # Refused for good (e.g. bad credentials): the orphan sweep retries it later.
            logger.warning("cannot abort upload of %s: %s", state.path, exc)
        logger.warning("%s %s: %s", kind.__name__, state.path, reason)
        await self.claims.forget(state.stream_id)
        return await self._record(
            state.path, kind(stream_id=state.stream_id, path=state.path, reason=reason)
        )

    async def _record(self, path: str, event: AnyEvent) -> StreamState:
        """Append a step to the log and fold it into what this process knows of `path`."""
        entry_id = await self.log.append_for_path(event, path)
        handoff, state = self._known.get(path, (None, None))
        if handoff is not None and entry_id_tuple(handoff) > entry_id_tuple(entry_id):
            entry_id = handoff
        new_state = apply(state, event)
        assert new_state is not None
        self._remember(path, entry_id, new_state)
        return new_state

    def _remember(self, path: str, handoff: bytes | None, state: StreamState | None) -> None:
        _put_newest(self._known, path, (handoff, state))

    async def _state_for(self, path: str, *, fresh: bool = False) -> StreamState | None:
        """The path's latest stream, as of every step any uploader recorded for it.

        `fresh` reads it from the projection even when this process made the last step
        (helpers' steps may come before it).
        """
        redis, keys = self.log.redis, self.log.keys
        handoff = cast(bytes | None, await redis.get(keys.path_handoff(path)))
        known = self._known.get(path)
        if not fresh and known is not None and known[0] == handoff:
            return known[1]
        if handoff is not None and not await wait_for_position(
            redis, keys, handoff, PROJECTION_WAIT_S
        ):
            raise ProjectionBehind(f"projection has not reached {handoff.decode()}")
        stream_id = cast(bytes | None, await redis.hget(keys.paths, path))
        state = await read_state(redis, keys, stream_id.decode()) if stream_id else None
        self._remember(path, handoff, state)
        return state


def _part_event(
    stream_id: str, path: str, part: Part, crc: int, etag: str, file_size: int, ctime_ns: int
) -> PartUploaded:
    return PartUploaded(
        stream_id=stream_id,
        path=path,
        part_number=part.number,
        offset=part.offset,
        length=part.length,
        crc32=crc,
        etag=etag,
        file_size=file_size,
        ctime_ns=ctime_ns,
    )


def _still_as_read(record: PartRecord, part: Part, st: os.stat_result) -> bool:
    """Whether the file cannot have changed since the part was read (no need to re-read)."""
    return (
        record.ctime_ns != 0
        and record.ctime_ns == st.st_ctime_ns
        and (record.offset, record.length) == (part.offset, part.length)
    )


def _changed(now: os.stat_result, then: os.stat_result) -> bool:
    return (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
        then.st_size,
        then.st_mtime_ns,
        then.st_ctime_ns,
    )


async def _all_of(sends: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run the part sends at once; of several failures, raise the deciding one."""
    try:
        async with asyncio.TaskGroup() as tasks:
            for send in sends:
                tasks.create_task(send)
    except ExceptionGroup as failures:
        raise deciding_error(failures) from None


K = TypeVar("K")
V = TypeVar("V")


def _put_newest(memory: dict[K, V], key: K, value: V) -> None:
    """Store `value` as the newest entry, forgetting the oldest beyond KNOWN_PATHS_MAX."""
    memory.pop(key, None)
    if len(memory) >= KNOWN_PATHS_MAX:
        memory.pop(next(iter(memory)))
    memory[key] = value


def _sent_as(state: StreamState, part: Part) -> bool:
    sent = state.parts.get(part.number)
    return sent is not None and (sent.offset, sent.length) == (part.offset, part.length)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True as soon as `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
