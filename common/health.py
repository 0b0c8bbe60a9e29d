"""Liveness: a heartbeat file the long-running commands touch, and `cefmp4 health`.

`cefmp4 producer`, `consumer` and `run` touch HEALTH_FILE every few seconds from their
event loop, so a loop that is stuck (blocked by a call that never returns) stops
touching it. `cefmp4 health` (the containers' HEALTHCHECK) passes only when Redis answers
PING and that file was touched within the last STALE_AFTER_S seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from redis.exceptions import RedisError

from common import metrics
from common.log import Redis

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
STALE_AFTER_S = 30.0
PING_TIMEOUT_S = 5.0


async def beat(path: Path) -> None:
    """Touch `path` every HEARTBEAT_INTERVAL_S while the event loop turns; until cancelled."""
    warned = False
    while True:
        error = touch(path)
        if error is not None and not warned:
            logger.warning("cannot touch the heartbeat file %s: %s", path, error)
        warned = error is not None
        metrics.HEARTBEAT.set_to_current_time()
        await asyncio.sleep(HEARTBEAT_INTERVAL_S)


def touch(path: Path) -> str | None:
    """Set the file's mtime to now (one quick syscall, on purpose on the loop's thread)."""
    try:
        path.touch()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def clear(path: Path) -> None:
    """Remove the heartbeat at a clean stop, so `health` fails at once afterwards."""
    with contextlib.suppress(OSError):
        path.unlink()


def heartbeat_age_s(path: Path) -> float | None:
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return max(0.0, time.time() - mtime)


async def check(redis: Redis, heartbeat: Path) -> tuple[bool, str]:
    """(healthy, one line saying why) for the process whose heartbeat is `heartbeat`."""
    try:
        await asyncio.wait_for(redis.ping(), PING_TIMEOUT_S)
    except (RedisError, OSError, TimeoutError) as exc:
        return False, f"unhealthy: redis does not answer ({type(exc).__name__})"
    age_s = heartbeat_age_s(heartbeat)
    if age_s is None:
        return False, f"unhealthy: no heartbeat at {heartbeat} (no producer/consumer running?)"
    if age_s > STALE_AFTER_S:
        return False, f"unhealthy: heartbeat {age_s:.0f}s old, the event loop is stuck"
    return True, f"healthy: redis answers, heartbeat {age_s:.1f}s old"
