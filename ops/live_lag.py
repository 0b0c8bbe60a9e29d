"""Measure live lag: a recording written at a steady rate, timed from its last write.

    python -m ops.live_lag [--size-mib 64] [--rate-mib-s 8] [--idle-s 1]

Starts its own Redis and `weed mini` (unless REDIS_URL / S3_ENDPOINT_URL are set) and one
`cefmp4 run`, writes the file, and prints one JSON line: seconds from the last write to
the completed object, minus the idle setting, and MiB already uploaded when the writer
stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common.config import Settings
from common.keys import Keys
from common.log import connect
from common.s3 import Storage
from consumer.projector import read_state
from ops.local_services import LocalRedis, LocalS3

MIB = 1024 * 1024
WRITE_CHUNK = 256 * 1024


async def uploaded_and_status(settings: Settings, rel: str) -> tuple[int, str]:
    redis = connect(settings)
    keys = Keys(settings.redis_key_prefix)
    try:
        stream_id = await redis.hget(keys.paths, rel)
        if stream_id is None:
            return 0, "none"
        state = await read_state(redis, keys, stream_id.decode())  # type: ignore[union-attr]
        return (state.uploaded_bytes, state.status) if state else (0, "none")
    finally:
        await redis.aclose()


async def wait_running(settings: Settings) -> None:
    """Until the pipeline has created its log (and consumer groups), at most 30 s."""
    redis = connect(settings)
    try:
        for _ in range(600):
            if await redis.exists(Keys(settings.redis_key_prefix).events):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("the pipeline did not start within 30 s")
    finally:
        await redis.aclose()


async def measure(settings: Settings, size: int, rate: float, idle_s: float) -> dict[str, float]:
    rel = "bench/live.mp4"
    path = settings.watch_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(WRITE_CHUNK)
    start = time.monotonic()
    with path.open("wb") as f:
        written = 0
        while written < size:
            f.write(payload[: min(WRITE_CHUNK, size - written)])
            f.flush()
            written += min(WRITE_CHUNK, size - written)
            delay = start + written / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    last_write = time.monotonic()
    uploaded_at_stop, _ = await uploaded_and_status(settings, rel)
    while True:
        _, status = await uploaded_and_status(settings, rel)
        if status == "completed":
            break
        if time.monotonic() - last_write > 120:
            raise RuntimeError(f"not completed after 120 s (status {status})")
        await asyncio.sleep(0.02)
    done = time.monotonic()
    async with Storage(settings) as storage:
        same = await storage.read_object(rel) == path.read_bytes()
    return {
        "size_mib": size / MIB,
        "rate_mib_s": rate / MIB,
        "lag_after_last_write_s": round(done - last_write, 3),
        "lag_minus_idle_s": round(done - last_write - idle_s, 3),
        "uploaded_mib_when_writer_stopped": round(uploaded_at_stop / MIB, 1),
        "object_identical": float(same),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.live_lag", description=__doc__)
    parser.add_argument("--size-mib", type=float, default=64)
    parser.add_argument("--rate-mib-s", type=float, default=8)
    parser.add_argument("--idle-s", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cefmp4-lag-") as tmp:
        base = Path(tmp)
        env = dict(os.environ)
        services: list[LocalRedis | LocalS3] = []
        if not env.get("REDIS_URL"):
            services.append(LocalRedis(base / "redis"))
        if not env.get("S3_ENDPOINT_URL"):
            env.setdefault("S3_ACCESS_KEY_ID", "bench")
            env.setdefault("S3_SECRET_ACCESS_KEY", "bench-secret-0123456789")
            services.append(
                LocalS3(base / "s3", env["S3_ACCESS_KEY_ID"], env["S3_SECRET_ACCESS_KEY"])
            )
        for service in services:
            service.start()
            if isinstance(service, LocalRedis):
                env["REDIS_URL"] = service.url
            else:
                env["S3_ENDPOINT_URL"] = service.endpoint_url
        (base / "rec").mkdir()
        env.update(
            WATCH_DIR=str(base / "rec"),
            WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE=str(args.idle_s),
            REDIS_KEY_PREFIX=f"lag{uuid.uuid4().hex[:8]}:",
            S3_BUCKET_NAME=f"lag{uuid.uuid4().hex[:8]}",
            PYTHON_LOG_LEVEL="WARNING",
        )
        runner = subprocess.Popen([sys.executable, "-m", "common.cli", "run"], env=env)
        try:
            os.environ.update(env)
            settings = Settings()
            asyncio.run(wait_running(settings))
            result = asyncio.run(
                measure(settings, int(args.size_mib * MIB), args.rate_mib_s * MIB, args.idle_s)
            )
        finally:
            runner.send_signal(signal.SIGTERM)
            runner.wait(timeout=30)
            for service in services:
                service.stop()
    print(json.dumps(result))
    return 0 if result["object_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
