"""Reading parts of a recording and sending them to S3: a few at once, in bounded memory.

Every part a consumer sends, for its own streams or as a helper, takes one of its
UPLOAD_CONCURRENCY slots. A part of up to BUFFERED_MAX_BYTES is read whole into a buffer
its slot keeps, so reading a whole file again at the end neither allocates nor faults in
fresh pages. A bigger part (up to S3's 5 GiB) is read twice in pieces instead: once for
its CRC32, then again as it is sent, straight from the file. Should its bytes change in
between, S3 refuses them for their checksum, and that is a file change like any other.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import os
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any, NamedTuple

from cefmp4.common import metrics
from cefmp4.common.errors import FileChanged, Stopping, StorageError
from cefmp4.common.events import PartUploaded
from cefmp4.common.files import settled_ctime
from cefmp4.common.parts import MIB, Part
from cefmp4.common.ratelimit import SentBody, TokenBucket
from cefmp4.common.s3 import Storage
from cefmp4.common.streamstate import PartRecord


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


BUFFERED_MAX_BYTES = 64 * MIB
PIECE_BYTES = 8 * MIB

# What S3 (and S3-compatible stores) answer when a part's bytes do not match its checksum.
CHECKSUM_MISMATCH_CODES = frozenset({"BadDigest", "XAmzContentChecksumMismatch", "InvalidDigest"})


def read_part(fd: int, part: Part, buffer: PartBuffer) -> int:
    """Read the part into `buffer`; returns the bytes' CRC32."""
    buffer.seek(0)
    with buffer.getbuffer() as view:
        _read_into(fd, view, part.offset, part.number)
        return zlib.crc32(view)


def part_crc32(fd: int, part: Part) -> int:
    """The part's CRC32, read in pieces of at most PIECE_BYTES."""
    crc = 0
    done = 0
    with memoryview(bytearray(min(PIECE_BYTES, part.length))) as piece:
        while done < part.length:
            with piece[: min(len(piece), part.length - done)] as view:
                _read_into(fd, view, part.offset + done, part.number)
                crc = zlib.crc32(view, crc)
                done += len(view)
    return crc


def _read_into(fd: int, view: memoryview, offset: int, number: int) -> None:
    """Fill `view` from `offset`; a read may return less (Linux: at most 2 GiB - 4 KiB)."""
    done = 0
    while done < len(view):
        with view[done:] as rest:
            count = os.preadv(fd, [rest], offset + done)
        if count == 0:
            raise FileChanged(f"short read of part {number}")
        done += count


class PartFile(io.RawIOBase):
    """A part's bytes, read from the file as they are sent.

    botocore takes the length from len() and rewinds with seek(0); aiohttp reads it in
    small pieces in a worker thread. Should the file end before the part does, the read
    fails (so does the request) rather than leaving S3 waiting for bytes.
    """

    def __init__(self, fd: int, part: Part) -> None:
        super().__init__()
        self.fd = fd
        self.part = part
        self.position = 0
        self.ended_early = False

    def __len__(self) -> int:
        return self.part.length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.part.length}
        if whence not in base or base[whence] + offset < 0:
            raise ValueError(f"cannot seek to {offset} from {whence}")
        self.position = base[whence] + offset
        return self.position

    def readinto(self, buffer: Any) -> int:
        with memoryview(buffer).cast("B") as view:
            wanted = min(len(view), self.part.length - self.position)
            if wanted <= 0:
                return 0
            with view[:wanted] as target:
                count = os.preadv(self.fd, [target], self.part.offset + self.position)
        if count == 0:
            self.ended_early = True
            raise FileChanged(f"short read of part {self.part.number}")
        self.position += count
        return count


async def send_part(
    storage: Storage,
    s3_key: str,
    upload_id: str,
    part: Part,
    body: PartBuffer | PartFile,
    crc: int,
    sending: SentBody | None = None,
) -> str:
    """Send one part (as `sending` if given, which reads `body`); FileChanged if its bytes
    were not those its CRC32 was taken of."""
    try:
        return await storage.upload_part(s3_key, upload_id, part.number, sending or body, crc)
    except StorageError as exc:
        if exc.code in CHECKSUM_MISMATCH_CODES or (isinstance(body, PartFile) and body.ended_early):
            raise FileChanged(f"part {part.number} changed while it was sent") from exc
        raise


class PartRead(NamedTuple):
    crc32: int
    etag: str | None  # None: not sent, S3 already has these bytes
    ctime_ns: int  # the settled ctime the part was read at, or 0


class PartInFlight(NamedTuple):
    s3_key: str
    part: Part
    body: SentBody  # its sent_bytes: how far the HTTP client has read it


class PartSender:
    """Sends parts, UPLOAD_CONCURRENCY at once, all under one rate limit if there is one."""

    def __init__(
        self,
        storage: Storage,
        concurrency: int,
        stop: asyncio.Event,
        bucket: TokenBucket | None = None,
    ) -> None:
        self.storage = storage
        self.stop = stop
        self.bucket = bucket
        self.sent_bytes = 0  # of every part body, as the HTTP client read it
        self.in_flight: dict[tuple[str, int], PartInFlight] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._spare: collections.deque[PartBuffer] = collections.deque(maxlen=concurrency)

    def _count_sent(self, count: int) -> None:
        self.sent_bytes += count
        metrics.PART_BYTES_SENT.inc(count)

    @property
    def all_busy(self) -> bool:
        return self._slots.locked()

    @contextlib.asynccontextmanager
    async def slot(self, part: Part) -> AsyncIterator[None]:
        """Hold one upload slot for `part`; Stopping if the process stops meanwhile."""
        async with self._slots:
            if self.stop.is_set():
                raise Stopping(f"stopping before part {part.number}")
            yield

    async def read_and_send(
        self,
        s3_key: str,
        upload_id: str,
        fd: int,
        part: Part,
        sent: PartRecord | None,
        fence: Callable[[], Awaitable[None]],
    ) -> PartRead:
        """Read the part; send it unless `sent` says S3 holds these bytes. Hold a slot.

        `fence` runs right before the part is sent: it raises if this process may no
        longer write to the upload (its lock or claim lapsed).
        """
        st = os.fstat(fd)
        ctime = settled_ctime(st, time.time_ns())
        body: PartBuffer | PartFile
        if part.length <= BUFFERED_MAX_BYTES:
            body = self._buffer_for(part)
            crc = await asyncio.to_thread(read_part, fd, part, body)
        else:
            body = PartFile(fd, part)
            crc = await asyncio.to_thread(part_crc32, fd, part)
        etag = None
        if sent is None or (sent.offset, sent.length, sent.crc32) != (
            part.offset,
            part.length,
            crc,
        ):
            await fence()
            sending = SentBody(
                body,
                part.length,
                bucket=self.bucket,
                priority=st.st_mtime_ns,  # the recording that ended first goes first
                blocking=isinstance(body, PartFile),
                counted=self._count_sent,
            )
            flight = (s3_key, part.number)
            self.in_flight[flight] = PartInFlight(s3_key, part, sending)
            try:
                etag = await send_part(self.storage, s3_key, upload_id, part, body, crc, sending)
            finally:
                if (now := self.in_flight.get(flight)) is not None and now.body is sending:
                    del self.in_flight[flight]
            metrics.count_part_uploaded(part.length)
        if isinstance(body, PartBuffer):
            self._spare.append(body)
        return PartRead(crc, etag, ctime)

    def _buffer_for(self, part: Part) -> PartBuffer:
        for _ in range(len(self._spare)):
            buffer = self._spare.popleft()
            if buffer.length == part.length:
                return buffer
            self._spare.append(buffer)
        return PartBuffer(part.length)


def part_uploaded(
    stream_id: str, path: str, part: Part, read: PartRead, etag: str, file_size: int
) -> PartUploaded:
    return PartUploaded(
        stream_id=stream_id,
        path=path,
        part_number=part.number,
        offset=part.offset,
        length=part.length,
        crc32=read.crc32,
        etag=etag,
        file_size=file_size,
        ctime_ns=read.ctime_ns,
    )


async def send_all(sends: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run the part sends at once; of several failures, raise the deciding one."""
    try:
        async with asyncio.TaskGroup() as tasks:
            for send in sends:
                tasks.create_task(send)
    except ExceptionGroup as failures:
        raise deciding_error(failures) from None


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
