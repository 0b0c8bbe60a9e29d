"""The consumer's report for `cefmp4 status` (common/consumer_report.py), every few seconds."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

from redis.exceptions import RedisError

from cefmp4.common import consumer_report, metrics
from cefmp4.common.consumer_report import ConsumerReport, PartProgress
from cefmp4.common.errors import LogError
from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import now_ms
from cefmp4.common.tasks import stopped_within
from cefmp4.consumer.partio import PartSender

logger = logging.getLogger(__name__)

REPORT_INTERVAL_S = 2.0
RATE_WINDOW_S = 10.0
FORGET_EVERY = 150  # reports (five minutes): dead consumers' reports are deleted this often


def report(consumer: str, sender: PartSender, rate_bytes_per_s: int) -> ConsumerReport:
    limit = sender.bucket.rate_bytes_per_s if sender.bucket else None
    return ConsumerReport(
        consumer=consumer,
        at_ms=now_ms(),
        rate_limit_bytes_per_s=int(limit) if limit else None,
        sent_bytes_per_s=rate_bytes_per_s,
        parts_in_flight=[
            PartProgress(f.s3_key, f.part.number, f.part.length, f.body.sent_bytes)
            for f in sender.in_flight.values()
        ],
    )


async def report_until(
    log: EventLog, consumer: str, sender: PartSender, stop: asyncio.Event
) -> None:
    """Publish this consumer's report until `stop`, then withdraw it."""
    limit = sender.bucket.rate_bytes_per_s if sender.bucket else 0
    metrics.UPLOAD_RATE_LIMIT.set(limit)
    samples: collections.deque[tuple[float, int]] = collections.deque()
    reports = 0
    while True:
        now = time.monotonic()
        samples.append((now, sender.sent_bytes))
        while now - samples[0][0] > RATE_WINDOW_S:
            samples.popleft()
        since, sent_then = samples[0]
        rate = int((sender.sent_bytes - sent_then) / (now - since)) if now > since else 0
        try:
            if reports % FORGET_EVERY == 0:
                await consumer_report.forget_old(log.redis, log.keys, now_ms())
            reports += 1
            await consumer_report.publish(log.redis, log.keys, report(consumer, sender, rate))
        except (LogError, RedisError, OSError) as exc:
            logger.debug("cannot publish this consumer's report: %s", exc)
        if await stopped_within(stop, REPORT_INTERVAL_S):
            break
    with contextlib.suppress(LogError, RedisError, OSError):
        await consumer_report.withdraw(log.redis, log.keys, consumer)
