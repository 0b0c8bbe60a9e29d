"""The end of a recording: send the tail, check every part against the file, complete.

Recorders rewrite bytes they wrote earlier (ffmpeg patches the header when it closes), so
at the end every part that may have changed since it was read is read again, and those
whose CRC32 changed are sent again, by the holder alone: helpers are stopped first. A part
cannot have changed if it was read in this pass, or read after the file had settled and
the file's ctime has not moved since. Then the parts must add up to the file, the upload
is completed and the object's size checked before the stream is recorded as completed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import NamedTuple

from cefmp4.common import metrics
from cefmp4.common.checksums import s3_composite_crc32
from cefmp4.common.errors import FileChanged, StorageError
from cefmp4.common.events import StreamCompleted, StreamFinalizing
from cefmp4.common.files import settle_wait_ns
from cefmp4.common.parts import Part, plan_parts
from cefmp4.common.s3 import ObjectFacts, SentPart, Storage
from cefmp4.common.streamstate import PartRecord, StreamState
from cefmp4.consumer.intents import UploadIntents
from cefmp4.consumer.partio import PartSender, part_uploaded, send_all
from cefmp4.consumer.pathlock import PathLock
from cefmp4.consumer.pathview import PathView
from cefmp4.consumer.recognition import ContentIdentity, ContentTags
from cefmp4.consumer.sharing import PartClaims
from cefmp4.consumer.sidecar import Sidecar

logger = logging.getLogger(__name__)

COMPLETE_TRIES = 3


class Finalizer:
    def __init__(
        self,
        storage: Storage,
        intents: UploadIntents,
        claims: PartClaims,
        sender: PartSender,
        view: PathView,
        sidecar: Sidecar,
        tags: ContentTags,
        part_size: int,
    ) -> None:
        self.storage = storage
        self.intents = intents
        self.claims = claims
        self.sender = sender
        self.view = view
        self.sidecar = sidecar
        self.tags = tags
        self.part_size = part_size

    async def finalize(
        self, lock: PathLock, state: StreamState, fd: int, st: os.stat_result, crcs: dict[int, int]
    ) -> None:
        """Complete `state`'s upload as the file `fd` stands at `st`.

        `crcs` holds the CRC32 of each part read in this pass already. If S3 finds parts
        that are not the ones recorded (a sender that was frozen past its claim sent one
        late), every part is sent again and the upload completed then.
        """
        path = lock.path
        state = await self._take_back(path, state)
        plan = plan_parts(st.st_size, self.part_size, final=True)
        for attempt in range(COMPLETE_TRIES):
            again = await self._send_changed(lock, state, fd, st, plan, crcs, every=attempt > 0)
            if _changed(os.fstat(fd), st):
                raise FileChanged("file changed while finalizing")
            await _settled(fd, st)
            try:
                await self._complete(lock, plan, crcs, st, again)
                return
            except StorageError as exc:
                if exc.code != "InvalidPart":
                    raise
                logger.warning(
                    "S3 holds parts of %s other than those recorded: sending all again", path
                )
            state = self.view.known(path) or state
            crcs.clear()
        raise FileChanged(f"parts of {path} kept changing in S3")

    async def _send_changed(
        self,
        lock: PathLock,
        state: StreamState,
        fd: int,
        st: os.stat_result,
        plan: list[Part],
        crcs: dict[int, int],
        *,
        every: bool,
    ) -> int:
        """Read again each part that may have changed, and send those that did (`every`:
        read and send all of them); returns how many were read."""

        async def send(part: Part) -> None:
            sent = None if every else state.parts.get(part.number)
            async with self.sender.slot(part):
                read = await self.sender.read_and_send(
                    state.s3_key, state.upload_id, fd, part, sent, lock.fence
                )
            if read.etag is not None:
                event = part_uploaded(state.stream_id, lock.path, part, read, read.etag, st.st_size)
                await self.view.record(lock, event)
            crcs[part.number] = read.crc32

        for part in plan:
            record = state.parts.get(part.number)
            if not every and record is not None and _still_as_read(record, part, st):
                crcs[part.number] = record.crc32
        again = [part for part in plan if part.number not in crcs]
        await send_all(send(part) for part in again)
        return len(again)

    async def _take_back(self, path: str, state: StreamState) -> StreamState:
        """Stop helpers and wait for their parts in flight; the state with their parts."""
        done = await self.claims.withdraw(state.stream_id)
        if done <= state.parts.keys():
            return state
        fresh = await self.view.latest(path, fresh=True)
        if fresh is None or fresh.stream_id != state.stream_id or fresh.terminal:
            raise FileChanged("stream changed while finalizing")
        return fresh

    async def _complete(
        self, lock: PathLock, plan: list[Part], crcs: dict[int, int], st: os.stat_result, again: int
    ) -> None:
        path = lock.path
        state = self.view.known(path)
        assert state is not None
        sent: list[SentPart] = []
        records: list[PartRecord] = []
        for part in plan:
            record = state.parts.get(part.number)
            if record is None or (record.offset, record.length) != (part.offset, part.length):
                raise FileChanged(f"part {part.number} missing before completion")
            if record.crc32 != crcs.get(part.number):
                raise FileChanged(f"part {part.number} does not match the file")
            sent.append(SentPart(part.number, record.etag, record.crc32))
            records.append(record)
        if sum(p.length for p in plan) != st.st_size:
            raise FileChanged("parts do not add up to the file size")
        stream_id = state.stream_id
        expected = Expected(stream_id, st.st_size, s3_composite_crc32(records))
        await self.view.record(
            lock, StreamFinalizing(stream_id=stream_id, path=path, size=st.st_size)
        )
        try:
            await lock.fence()
            etag = await self.storage.complete(state.s3_key, state.upload_id, sent)
        except StorageError as exc:
            # A predecessor may have completed it and died before recording that: its
            # object counts only if it provably is this stream's, never by its size alone.
            if exc.code != "NoSuchUpload" or not expected.met_by(
                await self.storage.object_facts(state.s3_key)
            ):
                raise
            etag = ""
        facts = await self.storage.object_facts(state.s3_key)
        if not expected.met_by(facts):
            raise StorageError(
                f"the object {state.s3_key} is not what was uploaded: {facts}, not {expected}",
                code="ObjectMismatch",
            )
        assert facts is not None
        identity = ContentIdentity(st.st_size, st.st_mtime_ns, facts.crc32, stream_id)
        await self.tags.label(state.s3_key, identity)
        if not etag:
            etag = facts.etag  # a predecessor completed it: the object's own ETag
        completed = await self.view.record(
            lock,
            StreamCompleted(
                stream_id=stream_id,
                path=path,
                size=st.st_size,
                etag=etag,
                mtime_ns=st.st_mtime_ns,
                ctime_ns=st.st_ctime_ns,
            ),
        )
        metrics.observe_completed(completed, st.st_mtime_ns)
        await self.intents.done(stream_id)
        await self.claims.forget(stream_id)
        self.sidecar.publish_soon(completed)
        logger.info(
            "completed %s (%d bytes, %d parts, %d read at the end)",
            path,
            st.st_size,
            len(plan),
            again,
            extra={"stream_id": stream_id, "path": path},
        )


class Expected(NamedTuple):
    """What the completed object of a stream must be."""

    stream_id: str
    size: int
    crc32: str  # S3's composite checksum of the recorded parts

    def met_by(self, facts: ObjectFacts | None) -> bool:
        return (
            facts is not None
            and (facts.stream_id, facts.size) == (self.stream_id, self.size)
            and facts.crc32 in ("", self.crc32)  # a server that keeps no checksum: size only
        )


def _still_as_read(record: PartRecord, part: Part, st: os.stat_result) -> bool:
    """Whether the file cannot have changed since the part was read (no need to re-read)."""
    return (
        record.ctime_ns != 0
        and record.ctime_ns == st.st_ctime_ns
        and (record.offset, record.length) == (part.offset, part.length)
    )


async def _settled(fd: int, st: os.stat_result) -> None:
    """Return once the file is still as `st` says after its ctime has settled.

    A pass that follows the last write closely (its writer closed the file, or it was moved
    in) may meet a second writer: one more write in place within the same tick of the file
    system's clock leaves size, mtime and ctime as they were, and would go unseen. Once
    the ctime is older than a few ticks, any later write moves it.
    """
    wait_ns = settle_wait_ns(st, time.time_ns())
    if wait_ns == 0:
        return
    await asyncio.sleep(wait_ns / 1e9)
    if _changed(os.fstat(fd), st):
        raise FileChanged("file changed while finalizing")


def _changed(now: os.stat_result, then: os.stat_result) -> bool:
    return (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
        then.st_size,
        then.st_mtime_ns,
        then.st_ctime_ns,
    )
