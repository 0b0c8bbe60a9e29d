"""Writes that must be on a replica before the step after them is taken (Redis WAIT).

Replication is asynchronous: what the primary acknowledged may die with it. WAIT, sent on
the connection that wrote, returns once `replicas` replicas hold everything written on it
or the timeout passes. Too few in time is logged and counted, and the step goes on: the
write is on the primary already, waiting again cannot make it safer, and refusing to
work while a replica is down would turn a replica's outage into everyone's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import Pipeline

from cefmp4.common import metrics
from cefmp4.common.config import Settings
from cefmp4.common.eventlog import Redis

logger = logging.getLogger(__name__)


class Replicated:
    """Runs writes in one pipeline followed by WAIT, when `replicas` is above zero."""

    def __init__(self, replicas: int = 0, timeout_ms: int = 1000) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._short = False  # logged once until enough replicas answer again

    @classmethod
    def of(cls, settings: Settings) -> Replicated:
        return cls(settings.wait_replicas, settings.redis_wait_timeout_ms)

    async def write(self, redis: Redis, queue: Callable[[Pipeline], Any]) -> None:
        """Queue the writes on a pipeline, run them, wait for the replicas."""
        async with redis.pipeline(transaction=False) as pipe:
            queue(pipe)
            if self.replicas:
                pipe.wait(self.replicas, self.timeout_ms)  # same connection as the writes
            replies = await pipe.execute()
        if self.replicas:
            self._acknowledged(int(replies[-1]))

    def _acknowledged(self, replicas: int) -> None:
        if replicas >= self.replicas:
            if self._short:
                logger.info("writes reach %d replica(s) again", replicas)
                self._short = False
            return
        metrics.count_unreplicated_write()
        if not self._short:
            logger.warning(
                "only %d of REDIS_WAIT_REPLICAS=%d replica(s) acknowledged a write within "
                "%d ms; going on (a failover now could lose it)",
                replicas,
                self.replicas,
                self.timeout_ms,
            )
            self._short = True
