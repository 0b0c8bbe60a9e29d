"""The gauges read from Redis: streams by state, consumer groups, dead letters.

A consumer refreshes them every REFRESH_INTERVAL_S. Streams are counted by the sizes of
the state's status indexes (one ZCARD each), so a refresh costs the same at any history;
should one still be slow, the pause grows so that refreshing takes at most MAX_DUTY of
the time.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from cefmp4.common import metrics
from cefmp4.common.errors import LogError
from cefmp4.common.eventlog import EventLog
from cefmp4.common.keys import GROUPS
from cefmp4.common.statestore import StateReader
from cefmp4.consumer.notifier import notify_backlog

logger = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 5.0
MAX_DUTY = 0.1


async def refresh(log: EventLog) -> None:
    counts = await StateReader(log.redis, log.keys).count_by_status()
    groups = await log.groups()
    dead = (await log.info()).dead_letters
    for state, count in counts.items():
        metrics.STREAMS.labels(state=state).set(count)
    for group in groups:
        if group.name not in GROUPS:
            continue  # labels stay bounded to the groups cefmp4 creates
        metrics.GROUP_PENDING.labels(group=group.name).set(group.pending)
        if group.lag is not None:  # unknown after entries were deleted from the middle
            metrics.GROUP_LAG.labels(group=group.name).set(group.lag)
    metrics.DEAD_LETTER_ENTRIES.set(dead)
    notify = await notify_backlog(log.redis, log.keys)
    if notify is not None:
        metrics.NOTIFY_PENDING.set(notify)
    metrics.GAUGES_REFRESHED.set_to_current_time()


async def refresh_forever(log: EventLog) -> None:
    """Refresh the gauges until cancelled; a Redis failure is counted and retried."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await refresh(log)
        except (LogError, RedisError) as exc:
            metrics.count_redis_error(exc)
            logger.debug("cannot refresh the gauges: %s", exc)
        took_s = loop.time() - started
        await asyncio.sleep(max(REFRESH_INTERVAL_S, took_s / MAX_DUTY - took_s))
