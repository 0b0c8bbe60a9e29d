"""NOTIFY_URL: every completion posted, signed, until it is answered 2xx, across crashes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import SecretStr

from cefmp4.common.completions import Completion
from cefmp4.common.config import Settings
from cefmp4.common.eventlog import EventLog
from cefmp4.common.keys import NOTIFIER
from cefmp4.common.s3 import Storage
from cefmp4.common.statestore import STATUSES
from cefmp4.consumer.notifier import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    Notifier,
    ensure_group,
    notify_backlog,
)
from cefmp4.status import NotifyStatus, StatusReport, gather, render_table
from ops.local_services import free_port
from tests.conftest import Processes, eventually
from tests.test_metrics import scrape, scrape_when_up, value
from tests.test_pipeline import MIB, wait_completed

SECRET = "a-secret-of-more-than-16-chars"
TIMEOUT_S = 1.0


@dataclass
class Post:
    key: str
    signature: str
    body: bytes
    answer: str


@dataclass
class Receiver:
    """A local HTTP endpoint that answers as told: `plan` first, then `then`."""

    plan: list[str]
    then: str = "500"
    posts: list[Post] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        answer = self.plan.pop(0) if self.plan else self.then
        body = await request.read()
        self.posts.append(
            Post(
                request.headers.get(IDEMPOTENCY_HEADER, ""),
                request.headers.get(SIGNATURE_HEADER, ""),
                body,
                answer,
            )
        )
        if answer == "hang":
            await asyncio.sleep(TIMEOUT_S * 3)  # the poster gives up first
        if answer == "500":
            return web.Response(status=500, text="down")
        return web.Response(status=204)

    def answered(self) -> set[str]:
        """Idempotency keys of the posts answered 2xx."""
        return {p.key for p in self.posts if p.answer == "ok"}


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    endpoint = Receiver(plan=["500", "hang"])
    app = web.Application()
    app.router.add_post("/hook", endpoint.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield endpoint, f"http://127.0.0.1:{port}/hook?token=do-not-log"
    await runner.cleanup()


async def record(watch_dir: Path, rel: str) -> None:
    path = watch_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(MIB + len(rel)))


async def test_completions_reach_a_failing_endpoint_once_it_recovers_across_a_crash(
    processes: Processes,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    receiver: tuple[Receiver, str],
) -> None:
    endpoint, url = receiver
    port = free_port()
    processes.start("producer")
    processes.start(
        "consumer",
        NOTIFY_URL=url,
        NOTIFY_SECRET=SECRET,
        NOTIFY_TIMEOUT_SECONDS=str(TIMEOUT_S),
        METRICS_PORT=str(port),
        METRICS_HOST="127.0.0.1",
    )
    await scrape_when_up(port)
    # The endpoint fails (500), hangs past the timeout, then fails again: uploads go on.
    streams: list[str] = []
    for rel in ("cam/a.mp4", "cam/b.mp4"):
        await record(watch_dir, rel)
    for rel in ("cam/a.mp4", "cam/b.mp4"):
        streams.append((await wait_completed(log, storage, watch_dir, rel)).stream_id)

    async def failed_thrice() -> bool:
        return len(endpoint.posts) >= 3 and endpoint.answered() == set()

    await eventually(failed_thrice, 60, "three failed posts")
    scraped: dict[str, float] = {}

    async def failures_shown() -> bool:
        report = await gather(log)
        now = await asyncio.to_thread(scrape, port)
        scraped.update(
            five=value(now, "cefmp4_notify_failures_total", kind="5xx"),
            timeout=value(now, "cefmp4_notify_failures_total", kind="timeout"),
            pending=value(now, "cefmp4_notify_pending_entries"),
        )
        return (
            report.notify is not None
            and report.notify.failures >= 3
            and report.notify.pending == 2
            and scraped["timeout"] >= 1
            and scraped["pending"] == 2
        )

    await eventually(failures_shown, 30, "failures in status and metrics")
    assert scraped["five"] >= 2
    report = await gather(log)
    assert report.notify is not None and report.notify.last_error is not None
    assert "do-not-log" not in report.notify.last_error
    assert "do-not-log" not in processes.output(100_000)

    # Killed while its posts are pending; the endpoint recovers meanwhile.
    processes.signal("consumer", signal.SIGKILL)
    endpoint.then = "ok"
    processes.restart("consumer")
    await record(watch_dir, "cam/c.mp4")
    streams.append((await wait_completed(log, storage, watch_dir, "cam/c.mp4")).stream_id)

    async def all_answered() -> bool:
        return endpoint.answered() == set(streams)

    await eventually(all_answered, 90, "every completion answered 2xx")

    for post in endpoint.posts:
        body = json.loads(post.body)
        expected = "sha256=" + hmac.new(SECRET.encode(), post.body, hashlib.sha256).hexdigest()
        assert post.signature == expected
        assert post.key == body["stream_id"]
        assert body["v"] == 1 and body["bucket"] == storage.bucket
    keys = [p.key for p in endpoint.posts]
    assert max(keys.count(k) for k in streams) > 1  # some were posted again, same key
    by_key = {p.key: p.body for p in endpoint.posts}
    assert all(p.body == by_key[p.key] for p in endpoint.posts)

    async def nothing_pending() -> bool:
        report = await gather(log)
        now = await asyncio.to_thread(scrape, port)
        return (
            report.notify is not None
            and report.notify.pending == 0
            and value(now, "cefmp4_notify_pending_entries") == 0
        )

    await eventually(nothing_pending, 30, "nothing pending in status and metrics")


def test_status_table_says_what_is_pending_and_the_last_failure() -> None:
    now = 1_800_000_000_000
    report = StatusReport(
        now_ms=now,
        streams=[],
        totals=dict.fromkeys(STATUSES, 0),
        groups=[],
        leases={},
        events=0,
        first_event_id=None,
        last_event_id=None,
        dead_letters=0,
        projector_position=None,
        snapshot=None,
        trim=None,
        completions=7,
        notify=NotifyStatus(
            pending=2,
            delivered=5,
            failures=3,
            last_delivered_at_ms=now - 60_000,
            last_error="HTTP 500 Internal\nServer Error",
            last_error_at_ms=now - 4_000,
        ),
    )

    lines = render_table(report).splitlines()

    assert "completions published: 7 kept" in lines
    assert (
        "notify: 2 pending, 5 posted, 3 failed posts; last failure 4.0s ago: "
        "HTTP 500 Internal\\nServer Error"
    ) in lines


async def test_completions_trimmed_before_they_were_posted_are_skipped_and_the_rest_posted(
    log: EventLog, settings: Settings, receiver: tuple[Receiver, str]
) -> None:
    endpoint, url = receiver
    endpoint.plan, endpoint.then = [], "ok"
    await ensure_group(log.redis, log.keys)
    for n in range(5):
        completion = Completion(
            event_id=f"{n}-0",
            stream_id=f"s{n}",
            bucket="b",
            key=f"k{n}",
            path=f"p{n}",
            size=n,
            etag="e",
            crc32="c",
            duration_s=1.0,
            started_at="t",
            completed_at="t",
        )
        await log.redis.xadd(log.keys.completed, dict(completion.fields()))  # type: ignore[arg-type]
    # Read by a notifier that died; then three of them trimmed away.
    await log.redis.xreadgroup(NOTIFIER, NOTIFIER, {log.keys.completed: ">"}, count=10)
    await log.redis.xtrim(log.keys.completed, maxlen=2, approximate=False)
    configured = settings.model_copy(
        update={"notify_url": SecretStr(url), "notify_secret": SecretStr(SECRET)}
    )
    stop = asyncio.Event()
    task = asyncio.create_task(Notifier(configured, log.redis, log.keys).run(stop))

    async def settled() -> bool:
        return await notify_backlog(log.redis, log.keys) == 0

    try:
        await eventually(settled, 30, "nothing left pending")
    finally:
        stop.set()
        await task

    assert endpoint.answered() == {"s3", "s4"}
