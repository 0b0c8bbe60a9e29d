"""A lease in Redis: at most one holder of a role (projector, stale checker) at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.log import Redis
from common.retry import REDIS_OUTAGE, Outage, transient


def _transient(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return all(_transient(e) for e in error.exceptions)
    return transient(error)


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


@contextlib.asynccontextmanager
async def renewed(
    renew: Callable[[], Awaitable[bool]], ttl_ms: int, what: str
) -> AsyncIterator[None]:
    """Renew something held for `ttl_ms` while the block runs.

    If it lapses (a renewal is refused, or Redis stays unreachable for a whole ttl), the
    block's task is cancelled: whoever takes it over must not meet this one still at work.
    """
    task = asyncio.current_task()
    assert task is not None
    keeper = asyncio.create_task(_keep(renew, ttl_ms, task, what))
    try:
        yield
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper


async def _keep(
    renew: Callable[[], Awaitable[bool]], ttl_ms: int, task: asyncio.Task[Any], what: str
) -> None:
    loop = asyncio.get_running_loop()
    renewed_at = loop.time()
    while True:
        await asyncio.sleep(ttl_ms / 3000)
        try:
            if await renew():
                renewed_at = loop.time()
                continue
        except REDIS_OUTAGE:
            if loop.time() - renewed_at < ttl_ms / 1000:
                continue
        logger.warning("%s lapsed; stopping the work that held it", what)
        task.cancel()
        return


class Lease:
    def __init__(self, redis: Redis, key: str, owner: str, ttl_ms: int = 10_000) -> None:
        self.redis = redis
        self.key = key
        self.owner = owner
        self.ttl_ms = ttl_ms
        self._renew = redis.register_script(RENEW_SCRIPT)
        self._outage = Outage(f"lease {key}", logger)
        self._release = redis.register_script(RELEASE_SCRIPT)

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    async def fence(self, pipe: Pipeline) -> bool:
        """WATCH the lease in `pipe`; True if this owner still holds it.

        The MULTI/EXEC that follows then fails (WatchError) if the lease changes hands.
        """
        await pipe.watch(self.key)
        return bool(await pipe.get(self.key) == self.owner.encode())

    async def take(self) -> None:
        """Take the lease whoever holds it; the holder finds out at its next renewal."""
        await self.redis.set(self.key, self.owner, px=self.ttl_ms)

    async def keep(self) -> None:
        """Renew until cancelled."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            await self.renew()

    async def renew(self) -> bool:
        return bool(await self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.owner])

    async def hold_while(
        self, role: Callable[[asyncio.Event], Coroutine[Any, Any, None]], stop: asyncio.Event
    ) -> None:
        """Run `role` whenever this process holds the lease, until `stop` is set.

        The role gets an event of its own, set when it must stop; it is cancelled only
        if it does not stop within the lease's time.
        """
        interval_s = self.ttl_ms / 3000
        while not stop.is_set():
            try:
                held = await self.acquire()
            except (RedisConnectionError, RedisTimeoutError):
                held = False
            if held:
                self._outage.recovered()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)
                continue
            logger.info("took lease %s", self.key)
            role_stop = asyncio.Event()
            task = asyncio.create_task(role(role_stop))
            stopping = asyncio.create_task(stop.wait())
            try:
                while not stop.is_set():
                    done, _ = await asyncio.wait(
                        {task, stopping}, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    if done:
                        break
                    try:
                        renewed = await self.renew()
                    except (RedisConnectionError, RedisTimeoutError):
                        renewed = False
                    if not renewed:
                        logger.warning("lost lease %s", self.key)
                        break
            finally:
                finished_alone = task.done()
                stopping.cancel()
                role_stop.set()
                # A cancelled redis-py call can swallow the cancellation, so ask first.
                await asyncio.wait({task}, timeout=self.ttl_ms / 1000)
                if not task.done():
                    task.cancel()
                    await asyncio.wait({task})
                with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
                    await self.release()
            error = task.exception() if finished_alone and not task.cancelled() else None
            if error is not None:
                if _transient(error):
                    delay_s = self._outage.failed(error)
                else:
                    logger.error("%s stopped: %r; restarting it", self.key, error)
                    delay_s = interval_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay_s)
