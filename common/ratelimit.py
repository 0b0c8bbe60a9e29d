"""UPLOAD_RATE_LIMIT_MBPS: one token bucket per consumer, shared by every part it sends.

A part's body is handed to the HTTP client as `SentBody`, an async iterable that takes
its bytes from the bucket as the client reads them, a chunk at a time; so the parts in
flight share the limit however many there are. Waiting chunks are served lowest
priority first (the file's last write time: recordings that ended first complete first),
then in the order they came.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import io
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import BinaryIO

CHUNK_BYTES = 64 * 1024
# How much the bucket holds at most: a pause of a tenth of a second is not made up later.
BURST_S = 0.1


def bytes_per_s(megabits_per_s: float) -> float:
    """Megabits per second (10^6 bits, as uplinks are sold) in bytes per second."""
    return megabits_per_s * 1_000_000 / 8


@dataclass(order=True)
class _Waiter:
    priority: int
    arrival: int
    wake: asyncio.Event = field(compare=False, default_factory=asyncio.Event)


class TokenBucket:
    """`rate_bytes_per_s` bytes a second, refilled continuously, lent to one waiter at a time."""

    def __init__(self, rate_bytes_per_s: float) -> None:
        self.rate_bytes_per_s = rate_bytes_per_s
        self.burst_bytes = max(float(CHUNK_BYTES), rate_bytes_per_s * BURST_S)
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._waiting: list[_Waiter] = []
        self._arrivals = itertools.count()

    def _refill(self) -> None:
        now = time.monotonic()
        elapsed_s = now - self._stamp
        self._tokens = min(self.burst_bytes, self._tokens + elapsed_s * self.rate_bytes_per_s)
        self._stamp = now

    async def take(self, count: int, priority: int) -> None:
        """Wait until `count` bytes may be sent; lower `priority` first, then first come."""
        waiter = _Waiter(priority, next(self._arrivals))
        heapq.heappush(self._waiting, waiter)
        try:
            while True:
                delay_s: float | None = None
                if self._waiting[0] is waiter:
                    self._refill()
                    needed = min(float(count), self.burst_bytes)
                    if self._tokens >= needed:
                        self._tokens -= count  # a chunk above the burst leaves a debt
                        return
                    delay_s = (needed - self._tokens) / self.rate_bytes_per_s
                waiter.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s):
                        await waiter.wake.wait()
        finally:
            self._waiting.remove(waiter)
            heapq.heapify(self._waiting)
            if self._waiting:
                self._waiting[0].wake.set()


class SentBody:
    """A part's body as the HTTP client reads it: counted and, with a bucket, throttled.

    botocore takes the length from len() and checks the body has read(); aiohttp sends any
    async iterable that is not a file, with the Content-Length botocore set. `blocking`
    bodies (read from the file) are read in a worker thread.
    """

    def __init__(
        self,
        body: BinaryIO | io.RawIOBase,
        length: int,
        *,
        bucket: TokenBucket | None,
        priority: int,
        blocking: bool,
        counted: Callable[[int], None],
    ) -> None:
        self._body = body
        self._length = length
        self._bucket = bucket
        self._priority = priority
        self._blocking = blocking
        self._counted = counted
        self._start = body.tell()
        self.sent_bytes = 0

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        return self._body.read(size) or b""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._body.seek(offset, whence)

    def tell(self) -> int:
        return self._body.tell()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        self._body.seek(self._start)  # each sending of the request sends the whole body
        while (wanted := min(CHUNK_BYTES, self._start + self._length - self._body.tell())) > 0:
            if self._bucket is not None:
                await self._bucket.take(wanted, self._priority)
            if self._blocking:
                chunk = await asyncio.to_thread(self.read, wanted)
            else:
                chunk = self.read(wanted)
            if not chunk:
                return  # the length botocore declared tells the server it is short
            self.sent_bytes += len(chunk)
            self._counted(len(chunk))
            yield chunk
