"""Leases in Redis, and the one keeper that renews whatever a task holds while it works.

A lease makes one process the holder of a role (projector, stale checker) at a time.
Path locks and part claims are `Held`, the same way: `Keeper` renews them while a block
runs and, if one lapses, cancels the block and raises LeaseLost from it, so the holder
stops before whoever takes over meets it still at work, and can tell that from a shutdown;
`Held.fence` checks one before each S3 call it guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any

import msgspec
from redis.asyncio.client import Pipeline

from cefmp4.common.errors import LeaseLost, LogUnavailable
from cefmp4.common.eventlog import Redis
from cefmp4.common.keys import Keys
from cefmp4.common.retry import Outage, transient
from cefmp4.common.tasks import cancel_and_wait, stopped_within

logger = logging.getLogger(__name__)

RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Keeper:
    """Renews something held for `ttl_ms` while the `async with` block runs.

    It lapses when a renewal is refused, or when Redis stays unreachable for a whole ttl;
    the block is then cancelled and LeaseLost raised from it. A shutdown (the block's task
    cancelled from outside) still comes out as CancelledError.
    """

    def __init__(self, renew: Callable[[], Awaitable[bool]], ttl_ms: int, what: str) -> None:
        self.renew = renew
        self.ttl_ms = ttl_ms
        self.what = what
        self._lapsed = False
        self._closing = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._keeper = asyncio.create_task(self._keep())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        self._keeper.cancel()
        await asyncio.wait({self._keeper})
        if self._lapsed and self._task.uncancel() == 0:
            raise LeaseLost(f"{self.what} lapsed") from exc

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        renewed_at = loop.time()
        while not self._closing:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                if await self.renew():
                    renewed_at = loop.time()
                    continue
            except LogUnavailable:
                if loop.time() - renewed_at < self.ttl_ms / 1000:
                    continue
            if self._closing:
                return
            logger.warning("%s lapsed; stopping the work that held it", self.what)
            self._lapsed = True
            self._task.cancel()
            return


class Held:
    """Something this process holds in Redis for `ttl_ms` at a time (a path lock, a part
    claim): `kept()` renews it while a block runs, `fence()` checks it before a step.

    `renewed_at` is the monotonic time of the last renewal Redis confirmed (-inf: none yet).
    """

    def __init__(
        self,
        renew: Callable[[], Awaitable[bool]],
        ttl_ms: int,
        what: str,
        *,
        renewed_at: float = -math.inf,
    ) -> None:
        self._renew_in_redis = renew
        self.ttl_ms = ttl_ms
        self.what = what
        self._renewed_at = renewed_at

    async def renew(self) -> bool:
        renewed = await self._renew_in_redis()
        if renewed:
            self._renewed_at = time.monotonic()
        return renewed

    async def fence(self) -> None:
        """LeaseLost unless it is still ours: call before every S3 call that needs it, so a
        process that was frozen past its hold and resumes does not touch an upload (or a
        part) another holder now works on.

        Redis is asked only when the last renewal is older than half the ttl: a hold
        renewed since cannot have lapsed, and the monotonic clock runs on while a process
        is frozen, so a resumed one always asks.
        """
        if time.monotonic() - self._renewed_at < self.ttl_ms / 2000:
            return
        if not await self.renew():
            raise LeaseLost(f"{self.what} is not ours any more")

    def kept(self) -> Keeper:
        """Renew it while the block runs; LeaseLost from the block if it lapses."""
        return Keeper(self.renew, self.ttl_ms, self.what)


class Lease:
    def __init__(self, redis: Redis, key: str, owner: str, ttl_ms: int = 10_000) -> None:
        self.redis = redis
        self.key = key
        self.owner = owner
        self.ttl_ms = ttl_ms
        self._renew = redis.register_script(RENEW_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._outage = Outage(f"lease {key}", logger)

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    async def take(self) -> None:
        """Take the lease whoever holds it; the holder finds out at its next renewal."""
        await self.redis.set(self.key, self.owner, px=self.ttl_ms)

    async def renew(self) -> bool:
        return bool(await self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.owner])

    def kept(self) -> Keeper:
        """Renew the lease while the block runs; LeaseLost if it goes to someone else."""
        return Keeper(self.renew, self.ttl_ms, f"lease {self.key}")

    async def fence(self, pipe: Pipeline) -> bool:
        """WATCH the lease in `pipe`; True if this owner still holds it.

        The MULTI/EXEC that follows then fails (WatchError) if the lease changes hands.
        """
        await pipe.watch(self.key)
        return bool(await pipe.get(self.key) == self.owner.encode())

    async def hold_while(
        self, role: Callable[[asyncio.Event], Coroutine[Any, Any, None]], stop: asyncio.Event
    ) -> None:
        """Run `role` whenever this process holds the lease, until `stop` is set.

        The role gets an event of its own, set when it must stop (shutdown, or the lease
        lost); it is cancelled only if it does not stop within the lease's time.
        """
        interval_s = self.ttl_ms / 3000
        while not stop.is_set():
            try:
                held = await self.acquire()
            except LogUnavailable:
                held = False
            if not held:
                await stopped_within(stop, interval_s)
                continue
            self._outage.recovered()
            logger.info("took lease %s", self.key)
            role_stop = asyncio.Event()
            task = asyncio.create_task(role(role_stop))
            try:
                async with self.kept():
                    await _until_done_or_set(task, stop)
            except LeaseLost:
                logger.warning("lost lease %s", self.key)
            finally:
                finished_alone = task.done()
                role_stop.set()
                # Asked first; cancelled only if it does not stop within the lease's time.
                await asyncio.wait({task}, timeout=self.ttl_ms / 1000)
                await cancel_and_wait([task])
                with contextlib.suppress(LogUnavailable):  # it expires by itself
                    await self.release()
            error = task.exception() if finished_alone and not task.cancelled() else None
            if error is not None:
                if transient(error):
                    delay_s = self._outage.failed(error)
                else:
                    logger.error("%s stopped: %r; restarting it", self.key, error)
                    delay_s = interval_s
                await stopped_within(stop, delay_s)


async def _until_done_or_set(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()


class LeaseHolder(msgspec.Struct, frozen=True):
    holder: str | None
    expires_in_ms: int | None


async def lease_holders(redis: Redis, keys: Keys, roles: tuple[str, ...]) -> dict[str, LeaseHolder]:
    """Who holds each role's lease, and for how much longer."""
    async with redis.pipeline(transaction=False) as pipe:
        for role in roles:
            pipe.get(keys.lease(role))
            pipe.pttl(keys.lease(role))
        replies = await pipe.execute()
    return {
        role: LeaseHolder(
            holder=holder.decode() if holder is not None else None,
            expires_in_ms=int(ttl) if holder is not None and ttl >= 0 else None,
        )
        for role, holder, ttl in zip(roles, replies[::2], replies[1::2], strict=True)
    }
