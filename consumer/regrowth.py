"""Regrowth: a file that changes after its object was completed costs only the new bytes.

The file's new stream makes each whole part that is still as it was sent by copying it on
the server from the completed object (UploadPartCopy), and leaves the rest (the bytes that
changed, the previous short last part, what was added) to the pass, which sends them as
usual. The finalizer then checks every part against the file as for any stream.

A part is copied only when both ends are proven:
- the object is the previous stream's: HEAD gives its stream id, size and composite CRC32
  as that stream completed it, and every copy is conditional on the ETag HEAD saw, so an
  object overwritten in between is refused rather than copied;
- the file still holds the bytes that were sent: the part is read again here and its CRC32
  compared with the one recorded. The "settled ctime" evidence the finalizer uses
  (PartRecord.ctime_ns) cannot serve: any write, an append included, moves the file's
  ctime, so after the file grew it says nothing about its earlier bytes. Reading a part
  from the local disk costs far less than sending it.
Anything else (the stream was pruned, the object is gone or not ours, S3 refuses copies)
leaves every part to be sent, after one warning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from cefmp4.common import metrics
from cefmp4.common.checksums import s3_composite_crc32
from cefmp4.common.errors import StorageError
from cefmp4.common.events import PartUploaded
from cefmp4.common.files import settled_ctime
from cefmp4.common.parts import Part, plan_parts
from cefmp4.common.s3 import Storage, crc32_b64
from cefmp4.common.streamstate import PartRecord, StreamState
from cefmp4.consumer.finalize import Expected
from cefmp4.consumer.partio import PartSender, part_crc32, send_all
from cefmp4.consumer.pathlock import PathLock
from cefmp4.consumer.pathview import PathView

logger = logging.getLogger(__name__)


def copy_candidates(
    previous: StreamState | None, file_size: int, part_size: int
) -> list[tuple[Part, PartRecord]]:
    """The parts of the new stream that may be copied from `previous`'s object, each with
    the record of the part that was sent: every whole part lying in both the object and the
    file, numbered and placed as it was then. Pure."""
    if previous is None or previous.status != "completed":
        return []
    common = min(file_size, previous.size_bytes)
    return [
        (part, record)
        for part in plan_parts(common, part_size, final=False)
        if (record := previous.parts.get(part.number)) is not None
        and (record.offset, record.length) == (part.offset, part.length)
    ]


def previous_object(previous: StreamState) -> Expected:
    """What the object of the completed stream `previous` is, if it is still that one."""
    records = [previous.parts[number] for number in sorted(previous.parts)]
    return Expected(previous.stream_id, previous.size_bytes, s3_composite_crc32(records))


class Regrowth:
    def __init__(self, storage: Storage, sender: PartSender, view: PathView, part_size: int):
        self.storage = storage
        self.sender = sender
        self.view = view
        self.part_size = part_size

    async def copy_unchanged(
        self,
        lock: PathLock,
        previous: StreamState | None,
        state: StreamState,
        fd: int,
        st: os.stat_result,
        crcs: dict[int, int],
    ) -> StreamState:
        """Copy into the new stream `state` the parts of `previous`'s object that the file
        `fd` (as of `st`) still holds; returns the stream as it then stands.

        The CRC32 of each part copied goes into `crcs`, as the pass's own reads do.
        """
        candidates = copy_candidates(previous, st.st_size, self.part_size)
        if previous is None or not candidates:
            return state
        path = lock.path
        try:
            facts = await self.storage.object_facts(previous.s3_key)
        except StorageError as exc:
            logger.warning("cannot look at the object of %s (%s): sending it whole", path, exc)
            return state
        if not previous_object(previous).met_by(facts):
            logger.warning(
                "the object of %s is not the one its last stream completed: sending it whole",
                path,
            )
            return state
        assert facts is not None
        source_key, source_etag = previous.s3_key, facts.etag
        refusals: list[StorageError] = []

        async def copy(part: Part, record: PartRecord) -> None:
            async with self.sender.slot(part):
                if refusals:
                    return
                ctime = settled_ctime(os.fstat(fd), time.time_ns())
                crc = await asyncio.to_thread(part_crc32, fd, part)
                if crc != record.crc32:
                    return  # changed since it was sent: the pass sends it
                await lock.fence()
                try:
                    copied = await self.storage.copy_part(
                        state.s3_key,
                        state.upload_id,
                        part.number,
                        source_key,
                        source_etag,
                        part.offset,
                        part.length,
                    )
                except StorageError as exc:
                    refusals.append(exc)
                    return
            if copied.crc32 not in ("", crc32_b64(crc)):
                refusals.append(
                    StorageError(f"part {part.number} copied with checksum {copied.crc32}")
                )
                return  # not recorded: the pass sends the part, which replaces the copy
            metrics.count_part_copied(part.length)
            event = PartUploaded(
                stream_id=state.stream_id,
                path=path,
                part_number=part.number,
                offset=part.offset,
                length=part.length,
                crc32=crc,
                etag=copied.etag,
                file_size=st.st_size,
                ctime_ns=ctime,
                copied=True,
            )
            await self.view.record(lock, event)
            crcs[part.number] = crc

        await send_all(copy(part, record) for part, record in candidates)
        if refusals:
            logger.warning(
                "S3 refused to copy parts of %s from its object (%s): sending them",
                path,
                refusals[0],
            )
        copied_count = sum(1 for part, _ in candidates if part.number in crcs)
        logger.info(
            "copied %d of %d parts of %s from its previous object",
            copied_count,
            len(candidates),
            path,
            extra={"stream_id": state.stream_id, "path": path},
        )
        return self.view.known(path) or state
