"""Backoff for outages: capped exponential delays with jitter, logged once per outage."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cefmp4.common import metrics
from cefmp4.common.errors import LogUnavailable, Stopping, StorageError
from cefmp4.common.tasks import stopped_within

T = TypeVar("T")

FIRST_DELAY_S = 0.25
MAX_DELAY_S = 10.0


def transient(exc: BaseException) -> bool:
    """Whether `exc` is an outage that waiting can end: Redis or S3 down, slow or throttling."""
    if isinstance(exc, StorageError):
        return exc.retryable
    if isinstance(exc, BaseExceptionGroup):
        return all(transient(e) for e in exc.exceptions)
    return isinstance(exc, LogUnavailable)


class Outage:
    """Tracks one kind of outage so it is logged when it starts and when it ends, not per try."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.logger = logger
        self.failures = 0
        self._delay_s = FIRST_DELAY_S

    def failed(self, exc: BaseException) -> float:
        """Record a failed try; returns how long to wait before the next one."""
        metrics.count_retry(exc)
        if self.failures == 0:
            self.logger.warning(
                "%s unavailable (%s); retrying with backoff", self.what, _brief(exc)
            )
        self.failures += 1
        delay = self._delay_s * random.uniform(0.5, 1.0)
        self._delay_s = min(self._delay_s * 2, MAX_DELAY_S)
        return delay

    def recovered(self) -> None:
        if self.failures:
            self.logger.info("%s available again after %d retries", self.what, self.failures)
        self.failures = 0
        self._delay_s = FIRST_DELAY_S


async def until_done(
    action: Callable[[], Awaitable[T]],
    outage: Outage,
    stop: asyncio.Event | None = None,
    retry_if: Callable[[BaseException], bool] = transient,
) -> T:
    """Run `action` until it succeeds, waiting out transient failures.

    Raises what `retry_if` rejects, and Stopping if `stop` is set while waiting.
    """
    while True:
        try:
            result = await action()
        except Exception as exc:
            if not retry_if(exc):
                raise
            delay = outage.failed(exc)
            if stop is None:
                await asyncio.sleep(delay)
            elif await stopped_within(stop, delay):
                raise Stopping(f"stopped while {outage.what} was unavailable") from exc
            continue
        outage.recovered()
        return result


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
