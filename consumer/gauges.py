"""The gauges read from Redis: streams by state, consumer groups, dead letters.

A consumer refreshes them every REFRESH_INTERVAL_S. Counting streams reads one field of
every stream hash (ZSCAN and pipelined HGETs, never KEYS); on a large state the pause
between refreshes grows so that refreshing takes at most MAX_DUTY of the time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import RedisError

from common import metrics
from common.keys import GROUPS, Keys
from common.log import EventLog, Redis
from common.status import xinfo_groups

logger = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 5.0
MAX_DUTY = 0.1
SCAN_BATCH = 500


async def count_states(redis: Redis, keys: Keys) -> dict[str, int]:
    counts = dict.fromkeys(metrics.STATES, 0)
    cursor = 0
    while True:
        reply: Any = await redis.zscan(keys.streams, cursor, count=SCAN_BATCH)
        cursor, members = int(reply[0]), reply[1]
        if members:
            async with redis.pipeline(transaction=False) as pipe:
                for stream_id, _score in members:
                    pipe.hget(keys.stream(stream_id.decode()), "status")
                statuses: list[bytes | None] = await pipe.execute()
            for raw in statuses:
                state = raw.decode() if raw is not None else None
                if state in counts:
                    counts[state] += 1
        if cursor == 0:
            return counts


async def refresh(redis: Redis, keys: Keys) -> None:
    counts = await count_states(redis, keys)
    groups = await xinfo_groups(redis, keys)
    dead = int(await redis.xlen(keys.dead))
    for state, count in counts.items():
        metrics.STREAMS.labels(state=state).set(count)
    for group in groups:
        name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
        if name not in GROUPS:
            continue  # labels stay bounded to the groups cefmp4 creates
        metrics.GROUP_PENDING.labels(group=name).set(int(group["pending"]))
        if group.get("lag") is not None:  # unknown after entries were deleted from the middle
            metrics.GROUP_LAG.labels(group=name).set(int(group["lag"]))
    metrics.DEAD_LETTER_ENTRIES.set(dead)
    metrics.GAUGES_REFRESHED.set_to_current_time()


async def refresh_forever(log: EventLog) -> None:
    """Refresh the gauges until cancelled; a Redis failure is counted and retried."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await refresh(log.redis, log.keys)
        except (RedisError, OSError) as exc:
            metrics.count_redis_error(exc)
            logger.debug("cannot refresh the gauges: %s", type(exc).__name__)
        took_s = loop.time() - started
        await asyncio.sleep(max(REFRESH_INTERVAL_S, took_s / MAX_DUTY - took_s))
