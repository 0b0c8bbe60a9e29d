"""UPLOAD_RATE_LIMIT_MBPS: one token bucket per consumer, shared by all its parts in flight."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from cefmp4.common.config import load_settings
from cefmp4.common.errors import ConfigError
from cefmp4.common.eventlog import EventLog
from cefmp4.common.ratelimit import CHUNK_BYTES, TokenBucket, bytes_per_s
from cefmp4.common.s3 import Storage
from ops.local_services import free_port
from tests.conftest import Processes, eventually
from tests.test_cli import cefmp4
from tests.test_metrics import scrape, scrape_when_up, value
from tests.test_pipeline import stream_of, wait_completed

MB = 1_000_000
LIMIT_MBPS = 16  # 2 MB/s


def test_the_limit_is_in_megabits_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPLOAD_RATE_LIMIT_MBPS", "16")

    assert load_settings().upload_rate_limit_mbps == 16
    assert bytes_per_s(16) == 2 * MB


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("raw", ["0", "-1", "fast"])
def test_a_bad_rate_limit_stops_start(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("UPLOAD_RATE_LIMIT_MBPS", raw)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert str(caught.value).startswith("invalid setting UPLOAD_RATE_LIMIT_MBPS: ")


async def test_waiting_bytes_go_lowest_priority_first_then_first_come() -> None:
    bucket = TokenBucket(4 * MB)
    done: list[str] = []

    async def send(name: str, priority: int, chunks: int) -> None:
        for _ in range(chunks):
            await bucket.take(CHUNK_BYTES, priority)
        done.append(name)

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(send("live, first to ask", 200, 20))
        await asyncio.sleep(0)
        tasks.create_task(send("ended earlier", 100, 20))
        tasks.create_task(send("live, second to ask", 200, 20))

    assert done == ["ended earlier", "live, first to ask", "live, second to ask"]


async def test_a_limited_consumer_sends_at_its_limit_and_says_so_in_status(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path, env: dict[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    port = free_port()
    processes.start("producer")
    processes.start(
        "consumer",
        METRICS_PORT=str(port),
        METRICS_HOST="127.0.0.1",
        UPLOAD_RATE_LIMIT_MBPS=str(LIMIT_MBPS),
    )
    await scrape_when_up(port)
    (watch_dir / "big.mp4").write_bytes(os.urandom(30 * MB))

    async def sending() -> bool:
        return value(await asyncio.to_thread(scrape, port), "cefmp4_part_bytes_sent_total") > MB

    await eventually(sending, 30, "the consumer sending")
    first = value(scrape(port), "cefmp4_part_bytes_sent_total")
    started = time.monotonic()
    await asyncio.sleep(8)  # the measured window itself, not a wait for a condition
    last = value(scrape(port), "cefmp4_part_bytes_sent_total")
    rate = (last - first) / (time.monotonic() - started)
    shown = json.loads(
        (await asyncio.to_thread(cefmp4, env, "status", "--json", cwd=tmp_path)).stdout
    )

    assert abs(rate - 2 * MB) <= 0.1 * 2 * MB, f"{rate / MB:.2f} MB/s"
    assert value(scrape(port), "cefmp4_upload_rate_limit_bytes_per_second") == 2 * MB
    (consumer,) = shown["consumers"]
    assert consumer["rate_limit_bytes_per_s"] == 2 * MB
    assert 0 < consumer["sent_bytes_per_s"] <= 1.1 * 2 * MB
    assert consumer["parts_in_flight"]
    table = (await asyncio.to_thread(cefmp4, env, "status", cwd=tmp_path)).stdout
    assert "RATE LIMIT" in table and "16.0 Mbit/s" in table


async def test_the_recording_that_ended_first_completes_first(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    processes.start("producer")
    processes.start("consumer", UPLOAD_RATE_LIMIT_MBPS=str(LIMIT_MBPS))
    (watch_dir / "later.mp4").write_bytes(os.urandom(8 * MB))
    await eventually(
        lambda: _has_stream(log, "later.mp4"), 30, "the later recording being uploaded"
    )
    earlier = watch_dir / "earlier.mp4"
    earlier.write_bytes(os.urandom(8 * MB))
    hour_ago = time.time() - 3600
    os.utime(earlier, (hour_ago, hour_ago))  # it ended an hour before the other

    first = await wait_completed(log, storage, watch_dir, "earlier.mp4", 60)
    second = await wait_completed(log, storage, watch_dir, "later.mp4", 60)

    assert first.completed_at_ms is not None and second.completed_at_ms is not None
    assert first.completed_at_ms < second.completed_at_ms


async def _has_stream(log: EventLog, rel: str) -> bool:
    return await stream_of(log, rel) is not None


async def test_a_consumer_stopped_is_no_longer_shown(
    processes: Processes, env: dict[str, str], tmp_path: Path
) -> None:
    processes.start("consumer")

    def shown() -> list[dict[str, object]]:
        result = cefmp4(env, "status", "--json", cwd=tmp_path)
        consumers: list[dict[str, object]] = json.loads(result.stdout)["consumers"]
        return consumers

    async def reported() -> bool:
        return len(await asyncio.to_thread(shown)) == 1

    await eventually(reported, 30, "the consumer's report")
    assert shown()[0]["rate_limit_bytes_per_s"] is None  # no limit set
    processes.stop_all()

    assert shown() == []
