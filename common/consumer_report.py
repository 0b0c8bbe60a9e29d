"""What each consumer is doing now, for `cefmp4 status`: its upload rate limit, the rate it
achieves, and the parts it is sending with how far each has gone.

Not state (nothing here comes from the log): each consumer writes its own field of one
hash every few seconds. A report older than STALE_AFTER_MS is of a consumer that stopped
or died, and is not shown.
"""

from __future__ import annotations

import msgspec

from cefmp4.common.eventlog import Redis
from cefmp4.common.keys import Keys

STALE_AFTER_MS = 30_000
FORGOTTEN_AFTER_MS = 3_600_000  # a dead consumer's report is deleted by the next to publish


class PartProgress(msgspec.Struct, frozen=True):
    s3_key: str
    part_number: int
    length: int
    sent_bytes: int  # read by the HTTP client so far


class ConsumerReport(msgspec.Struct, frozen=True):
    consumer: str
    at_ms: int
    rate_limit_bytes_per_s: int | None  # UPLOAD_RATE_LIMIT_MBPS; None: no limit
    sent_bytes_per_s: int  # over the last seconds
    parts_in_flight: list[PartProgress]


_decoder = msgspec.json.Decoder(ConsumerReport)


async def publish(redis: Redis, keys: Keys, report: ConsumerReport) -> None:
    await redis.hset(keys.consumer_reports, report.consumer, msgspec.json.encode(report))


async def withdraw(redis: Redis, keys: Keys, consumer: str) -> None:
    await redis.hdel(keys.consumer_reports, consumer)


async def read_all(redis: Redis, keys: Keys) -> list[ConsumerReport]:
    """Every report kept, newest first; undecodable ones are left out."""
    raw: dict[bytes | str, bytes | str] = await redis.hgetall(keys.consumer_reports)
    reports = []
    for value in raw.values():
        try:
            reports.append(_decoder.decode(value))
        except msgspec.DecodeError:
            continue
    return sorted(reports, key=lambda r: r.at_ms, reverse=True)


async def current(redis: Redis, keys: Keys, now_ms: int) -> list[ConsumerReport]:
    """The reports of the consumers running now, by name."""
    fresh = [r for r in await read_all(redis, keys) if now_ms - r.at_ms <= STALE_AFTER_MS]
    return sorted(fresh, key=lambda r: r.consumer)


async def forget_old(redis: Redis, keys: Keys, now_ms: int) -> None:
    old = [r.consumer for r in await read_all(redis, keys) if now_ms - r.at_ms > FORGOTTEN_AFTER_MS]
    if old:
        await redis.hdel(keys.consumer_reports, *old)
