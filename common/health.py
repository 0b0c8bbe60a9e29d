"""Liveness: a heartbeat file the long-running commands touch, and `cefmp4 health`.

`cefmp4 producer`, `consumer` and `run` touch HEALTH_FILE every few seconds from their
event loop, so a loop that is stuck (blocked by a call that never returns) stops
touching it. `cefmp4 health` (the containers' HEALTHCHECK) passes only when Redis answers
PING and that file was touched within the last STALE_AFTER_S seconds.

The file holds the process id and its start time, so that an old heartbeat tells a process
that exited without a clean stop (killed, crashed) from one whose event loop is stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from redis.exceptions import RedisError

from cefmp4.common import metrics
from cefmp4.common.errors import LogError
from cefmp4.common.eventlog import Redis

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
STALE_AFTER_S = 30.0
PING_TIMEOUT_S = 5.0


async def beat(path: Path) -> None:
    """Touch `path` every HEARTBEAT_INTERVAL_S while the event loop turns; until cancelled."""
    warned = False
    clear(path)  # an old heartbeat names another process
    while True:
        error = touch(path)
        if error is not None and not warned:
            logger.warning("cannot touch the heartbeat file %s: %s", path, error)
        warned = error is not None
        metrics.HEARTBEAT.set_to_current_time()
        await asyncio.sleep(HEARTBEAT_INTERVAL_S)


def touch(path: Path) -> str | None:
    """Set the file's mtime to now (one quick syscall, on purpose on the loop's thread);
    write who beats into it when it is not there."""
    try:
        try:
            os.utime(path)
        except FileNotFoundError:
            path.write_text(f"{os.getpid()} {process_start(os.getpid()) or ''}\n")
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The name (field 2) may hold spaces and parentheses: count from its closing one.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def beating_process_gone(path: Path) -> int | None:
    """The id of the process that wrote the heartbeat if it no longer runs; else None."""
    try:
        pid_text, _, started = path.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None  # no id written: nothing to say
    if not pid_running(pid):
        return pid
    now_started = process_start(pid)
    if started and now_started is not None and now_started != started:
        return pid  # the id was taken again by another process
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


async def check(redis: Redis, heartbeat: Path, redis_url: str) -> tuple[bool, str]:
    """(healthy, one line saying why) for the process whose heartbeat is `heartbeat`;
    `redis_url` (its password masked) is the Redis the line names."""
    try:
        await asyncio.wait_for(redis.ping(), PING_TIMEOUT_S)
    except (LogError, RedisError, TimeoutError) as exc:
        cause = exc.__cause__ if isinstance(exc, LogError) and exc.__cause__ else exc
        return False, f"unhealthy: redis {redis_url} does not answer ({type(cause).__name__})"
    age_s = heartbeat_age_s(heartbeat)
    if age_s is None:
        return False, f"unhealthy: no heartbeat at {heartbeat} (no producer/consumer running?)"
    gone = beating_process_gone(heartbeat)
    if gone is not None:
        return False, (
            f"unhealthy: the process that wrote {heartbeat} (pid {gone}) is not running: "
            f"it exited without a clean stop, at most {age_s + HEARTBEAT_INTERVAL_S:.0f}s ago"
        )
    if age_s > STALE_AFTER_S:
        return False, f"unhealthy: heartbeat {age_s:.0f}s old, the event loop is stuck"
    return True, f"healthy: redis {redis_url} answers, heartbeat {age_s:.1f}s old"


def pid_running(pid: int) -> bool:
    """Whether a process `pid` runs, as this user or another."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, as another user
    return True
