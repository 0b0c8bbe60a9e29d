"""A wrong setting ends in one line naming it; no traceback, no secret; stopping is clean."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cefmp4.common.eventlog import EventLog
from tests.conftest import Processes, Services, eventually
from tests.s3edge import s3_edge
from tests.test_cli import cefmp4

SECRET = "Pa55-never-printed"


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        (
            "REDIS_URL",
            f"redis://user:{SECRET[:4]}/{SECRET[4:]}@localhost:6379/0",
            "percent-encoded",
        ),
        ("REDIS_URL", f"redis//user:{SECRET}@localhost", "redis://, rediss:// or unix://"),
        ("S3_ENDPOINT_URL", "notaurl", "http:// or https:// URL"),
        ("S3_ENDPOINT_URL", "http://minio:90x0", "http:// or https:// URL"),
    ],
)
@pytest.mark.parametrize("role", ["producer", "consumer", "status"])
def test_a_malformed_url_is_one_line_naming_it(
    env: dict[str, str], tmp_path: Path, name: str, value: str, said: str, role: str
) -> None:
    started = time.monotonic()
    result = cefmp4({**env, name: value}, role, cwd=tmp_path)

    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cefmp4: invalid setting {name}: ") and said in line
    assert SECRET[:4] not in result.stderr + result.stdout
    assert time.monotonic() - started < 20


def test_wrong_s3_keys_stop_the_consumer_at_start_with_one_line(
    env: dict[str, str], tmp_path: Path, services: Services
) -> None:
    for access_key, secret in ((services.s3_access_key, SECRET), ("nobody", SECRET)):
        wrong = {**env, "S3_ACCESS_KEY_ID": access_key, "S3_SECRET_ACCESS_KEY": secret}

        result = cefmp4(wrong, "consumer", cwd=tmp_path)

        assert result.returncode == 2, result.stderr
        [line] = [text for text in result.stderr.splitlines() if text.startswith("cefmp4:")]
        assert "S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY" in line
        assert "Traceback" not in result.stderr
        assert SECRET not in result.stderr + result.stdout


async def test_a_second_signal_stops_at_once_without_a_traceback(
    processes: Processes, log: EventLog, watch_dir: Path, services: Services
) -> None:
    async with s3_edge(services.s3_endpoint_url) as edge:
        consumer = processes.start("consumer", S3_ENDPOINT_URL=edge.url)
        processes.start("producer")
        edge.delay("UploadPart", 60)  # a slow link: the first signal waits for parts in flight
        (watch_dir / "cam.mp4").write_bytes(os.urandom(12 * 1024 * 1024))

        async def part_in_flight() -> bool:
            return edge.count("UploadPart") > 0

        await eventually(part_in_flight, 30, "a part in flight")
        consumer.send_signal(signal.SIGTERM)

        async def stopping() -> bool:
            return "SIGTERM: stopping" in processes.output()

        await eventually(stopping, 10, "the first signal taken")
        assert consumer.poll() is None  # still finishing the part in flight
        consumer.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(consumer.wait, 10)
        took_s = time.monotonic() - started

    assert took_s < 3
    assert code == 130
    output = processes.output()
    assert "SIGTERM again: stopping at once" in output
    assert "Traceback" not in output


def test_every_service_says_when_it_starts_stopping_and_when_it_stopped(
    env: dict[str, str], tmp_path: Path
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "producer"],
        env={**os.environ, **env},
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=2)
    finally:
        process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0
    assert process.stderr is not None
    lines = process.stderr.read().splitlines()
    assert sum("SIGINT: stopping" in line for line in lines) == 1
    assert lines[-1].endswith("cefmp4: stopped")
