"""Posting each completed recording to NOTIFY_URL, at least once, until it answers 2xx.

The notifier reads the public completions stream with a consumer group of its own and
acknowledges an entry only once NOTIFY_URL answered it with a 2xx, so an entry whose post
failed, or whose poster died, stays pending and is posted again. One consumer process at a
time posts (by lease), always as the group's one consumer `notifier`: whoever takes over
finds the pending entries as its own. Posts run beside the uploads, never in their way.

Each post is the completion's JSON, signed with HMAC-SHA256 under NOTIFY_SECRET in
`X-Cefmp4-Signature: sha256=<hex>`, and carries the stream id as `Idempotency-Key`: the
same recording posted twice has the same key. How it goes (posts, failures, the last
error) is kept in `<prefix>notify` for `cefmp4 status`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from typing import TYPE_CHECKING, Any, NamedTuple

from redis.exceptions import ResponseError

from cefmp4.common import metrics
from cefmp4.common.completions import Completion, parse
from cefmp4.common.config import Settings
from cefmp4.common.errors import CorruptEvent
from cefmp4.common.eventlog import Redis, text_of
from cefmp4.common.events import now_ms
from cefmp4.common.keys import NOTIFIER, Keys
from cefmp4.common.printable import printable
from cefmp4.common.tasks import stopped_within

if TYPE_CHECKING:
    import aiohttp

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Cefmp4-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
BATCH = 50
POSTS_AT_ONCE = 8
READ_BLOCK_MS = 1000
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0
ERROR_CHARS = 300


def signature(secret: bytes, body: bytes) -> str:
    """The signature header's value: what a receiver computes to check a post."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


async def ensure_group(redis: Redis, keys: Keys) -> None:
    """Create the notifier's group at the stream's end: completions from now on are posted."""
    try:
        await redis.xgroup_create(keys.completed, NOTIFIER, id="$", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Outcome(NamedTuple):
    entry_id: bytes
    error: str | None  # None: answered 2xx


class Notifier:
    """Posts completions to NOTIFY_URL; run it only while holding the notifier lease."""

    def __init__(self, settings: Settings, redis: Redis, keys: Keys) -> None:
        assert settings.notify_url is not None and settings.notify_secret is not None
        self.url = settings.notify_url.get_secret_value()
        self.secret = settings.notify_secret.get_secret_value().encode()
        self.timeout_s = settings.notify_timeout_seconds
        self.redis = redis
        self.keys = keys
        self._delay_s = FIRST_DELAY_S

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_group(self.redis, self.keys)
        # Imported here: `cefmp4 status` reads this module's reports and need not pay for it.
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                # Those still pending first (failed, or left by a process that died).
                entries = await self._read("0", block_ms=None)
                if not entries:
                    entries = await self._read(">", block_ms=READ_BLOCK_MS)
                if not entries:
                    continue
                outcomes = await self._post_all(session, entries)
                failed = await self._settle(outcomes)
                if failed:
                    await stopped_within(stop, self._backoff())
                else:
                    self._delay_s = FIRST_DELAY_S

    async def _read(
        self, start: str, block_ms: int | None
    ) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        reply: Any = await self.redis.xreadgroup(
            NOTIFIER, NOTIFIER, {self.keys.completed: start}, count=BATCH, block=block_ms
        )
        if not reply:
            return []
        entries: list[tuple[bytes, dict[bytes, bytes] | None]] = reply[0][1]
        return entries

    async def _post_all(
        self, session: aiohttp.ClientSession, entries: list[tuple[bytes, dict[bytes, bytes] | None]]
    ) -> list[Outcome]:
        slots = asyncio.Semaphore(POSTS_AT_ONCE)

        async def post(entry_id: bytes, fields: dict[bytes, bytes] | None) -> Outcome:
            if not fields:  # trimmed from the stream (COMPLETIONS_MAX_ENTRIES) while pending
                logger.error("completion %s was trimmed before it was posted", entry_id.decode())
                return Outcome(entry_id, None)
            try:
                completion = parse(fields)
            except CorruptEvent as exc:
                logger.error("completion %s set aside: %s", entry_id.decode(), exc)
                return Outcome(entry_id, None)
            async with slots:
                return Outcome(entry_id, await self._post(session, completion))

        return await asyncio.gather(*(post(entry_id, fields) for entry_id, fields in entries))

    async def _post(self, session: aiohttp.ClientSession, completion: Completion) -> str | None:
        """Post one completion; None if it was answered with a 2xx, else what went wrong."""
        import aiohttp

        body = completion.json()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self.secret, body),
            IDEMPOTENCY_HEADER: completion.stream_id,
            "User-Agent": "cefmp4",
        }
        try:
            async with session.post(self.url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    return None
                reason = f"HTTP {response.status} {response.reason or ''}".rstrip()
                kind = f"{response.status // 100}xx"
        except TimeoutError:
            reason, kind = f"no answer within {self.timeout_s:g}s", "timeout"
        except aiohttp.ClientConnectorError as exc:
            # Its message names the host and port, never the URL's path or query (a token).
            reason, kind = f"{type(exc).__name__}: {exc}", "connection"
        except aiohttp.ClientError as exc:
            reason, kind = type(exc).__name__, "connection"
        metrics.count_notify_failure(kind)
        return printable(reason)[:ERROR_CHARS]

    async def _settle(self, outcomes: list[Outcome]) -> int:
        """Acknowledge what was posted and record how it went; returns how many failed."""
        done = [o.entry_id for o in outcomes if o.error is None]
        failed = [o for o in outcomes if o.error is not None]
        async with self.redis.pipeline(transaction=True) as pipe:
            if done:
                pipe.xack(self.keys.completed, NOTIFIER, *done)
                pipe.hincrby(self.keys.notify_report, "delivered", len(done))
                pipe.hset(self.keys.notify_report, "last_delivered_at_ms", now_ms())
            if failed:
                error = failed[-1].error or ""
                pipe.hincrby(self.keys.notify_report, "failures", len(failed))
                pipe.hset(
                    self.keys.notify_report,
                    mapping={"last_error": error, "last_error_at_ms": now_ms()},
                )
            await pipe.execute()
        metrics.NOTIFY_DELIVERED.inc(len(done))
        if failed:
            logger.warning(
                "%d of %d completions not posted to NOTIFY_URL (%s); trying again",
                len(failed),
                len(outcomes),
                failed[-1].error,
            )
        return len(failed)

    def _backoff(self) -> float:
        delay = self._delay_s * random.uniform(0.5, 1.0)
        self._delay_s = min(self._delay_s * 2, MAX_DELAY_S)
        return delay


class NotifyReport(NamedTuple):
    delivered: int
    failures: int
    last_delivered_at_ms: int | None
    last_error: str | None
    last_error_at_ms: int | None


async def notify_report(redis: Redis, keys: Keys) -> NotifyReport | None:
    """How posting to NOTIFY_URL went so far; None if nothing was tried yet."""
    raw: dict[Any, Any] = await redis.hgetall(keys.notify_report)
    if not raw:
        return None

    def number(name: bytes) -> int | None:
        return int(raw[name]) if name in raw else None

    return NotifyReport(
        delivered=number(b"delivered") or 0,
        failures=number(b"failures") or 0,
        last_delivered_at_ms=number(b"last_delivered_at_ms"),
        last_error=raw[b"last_error"].decode(errors="replace") if b"last_error" in raw else None,
        last_error_at_ms=number(b"last_error_at_ms"),
    )


async def notify_backlog(redis: Redis, keys: Keys) -> int | None:
    """Completions not yet posted (pending, and not yet read); None without a notifier group."""
    try:
        groups: list[dict[Any, Any]] = await redis.xinfo_groups(keys.completed)
    except ResponseError:
        return None  # no completions stream yet
    for group in groups:
        if text_of(group["name"]) == NOTIFIER:
            lag = group.get("lag")
            return int(group["pending"]) + (int(lag) if lag is not None else 0)
    return None
