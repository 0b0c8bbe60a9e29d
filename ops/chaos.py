"""Chaos run: many growing recordings, several consumers, random kills and outages.

    python -m ops.chaos [--minutes 15] [--consumers 3] [--recorders 3] [--seed N]

Starts its own Redis (with AOF) and `weed mini`, one producer and N consumers, and
recorders that keep writing recordings (some patch their header at the end as ffmpeg
does, some are deleted or truncated mid-way). Meanwhile it kills and restarts random
processes and both services. At the end it lets the pipeline settle, compares every
object with its file, counts multipart uploads left open, and prints one JSON report.
Exit code 0 only if every object is right and nothing is left open.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from common.config import Settings
from common.keys import Keys
from common.log import connect
from common.s3 import Storage
from common.status import read_streams
from ops.local_services import LocalRedis, LocalS3

MIB = 1024 * 1024
SETTLE_TIMEOUT_S = 300.0
ORPHAN_GRACE_S = 60
ORPHAN_INTERVAL_S = 15


@dataclass
class Run:
    base: Path
    env: dict[str, str]
    rng: random.Random
    redis: LocalRedis
    s3: LocalS3
    producer: subprocess.Popen[bytes] | None = None
    consumers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    live: set[Path] = field(default_factory=set)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def spawn(self, role: str) -> subprocess.Popen[bytes]:
        log = open(self.base / "logs" / f"{role}-{time.time_ns()}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", role], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return process


async def recorder(run: Run, index: int, stop: asyncio.Event) -> None:
    """Write recordings one after another until `stop`, with the odd mishap."""
    rng = random.Random(run.rng.random())
    n = 0
    while not stop.is_set():
        n += 1
        path = run.base / "rec" / f"cam{index}" / f"{n:05d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = rng.randint(0, 16 * MIB)
        rate = rng.uniform(2, 8) * MIB
        fate = rng.random()
        run.count("recordings")
        if 0.50 <= fate < 0.65:
            # Copied in whole: more parts than upload slots, so consumers share them.
            staged = run.base / "staging" / path.name
            staged.parent.mkdir(exist_ok=True)
            staged.write_bytes(os.urandom(rng.randint(10 * MIB, 40 * MIB)))
            staged.rename(path)
            run.count("recordings_moved_in")
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            continue
        run.live.add(path)
        with path.open("wb") as f:
            written = 0
            while written < size and not stop.is_set():
                chunk = min(rng.randint(4096, 512 * 1024), size - written)
                f.write(os.urandom(chunk))
                f.flush()
                written += chunk
                await asyncio.sleep(chunk / rate)
                if fate < 0.05 and written > size // 2:
                    break  # deleted below, mid-recording
            if fate < 0.05:
                path.unlink()
                run.count("recordings_deleted")
            elif fate < 0.10 and written > MIB:
                f.truncate(written // 3)
                f.seek(0, os.SEEK_END)
                f.write(os.urandom(MIB))
                run.count("recordings_truncated")
            elif fate < 0.50 and written > 64:
                f.seek(40)
                f.write(os.urandom(8))  # what ffmpeg's muxer does when it closes
                run.count("headers_patched")
        run.live.discard(path)
        await asyncio.sleep(rng.uniform(0.5, 2.0))


async def chaos(run: Run, stop: asyncio.Event) -> None:
    """Every few seconds, break something; bring it back."""
    rng = run.rng
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(4, 15))
        action = rng.choice(
            ["kill_consumer", "kill_consumer", "term_consumer", "kill_producer", "redis", "s3"]
        )
        run.count(action)
        if action in {"kill_consumer", "term_consumer"}:
            victim = rng.randrange(len(run.consumers))
            process = run.consumers[victim]
            process.send_signal(signal.SIGKILL if action == "kill_consumer" else signal.SIGTERM)
            await asyncio.to_thread(process.wait)
            await asyncio.sleep(rng.uniform(0, 3))
            run.consumers[victim] = run.spawn("consumer")
        elif action == "kill_producer" and run.producer is not None:
            run.producer.send_signal(signal.SIGKILL)
            await asyncio.to_thread(run.producer.wait)
            await asyncio.sleep(rng.uniform(0, 3))
            run.producer = run.spawn("producer")
        elif action == "redis":
            await asyncio.to_thread(run.redis.stop)
            await asyncio.sleep(rng.uniform(1, 5))
            await asyncio.to_thread(run.redis.start)
        elif action == "s3":
            await asyncio.to_thread(run.s3.stop)
            await asyncio.sleep(rng.uniform(1, 10))
            await asyncio.to_thread(run.s3.start)


async def settle_and_verify(run: Run, settings: Settings) -> dict[str, float]:
    """Wait until every file's object is complete; then compare bytes and list open uploads."""
    root = run.base / "rec"
    keys = Keys(settings.redis_key_prefix)
    redis = connect(settings)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    try:
        while True:
            files = {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*.mp4")}
            try:
                streams = await read_streams(redis, keys)
            except OSError:
                streams = []
            latest = {s.path: s for s in streams}
            done = all(
                (s := latest.get(rel)) is not None
                and s.status == "completed"
                and s.size_bytes == size
                for rel, size in files.items()
            )
            if done or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        report: dict[str, float] = {
            "objects": len(files),
            "objects_ok": 0,
            "objects_wrong": 0,
            "objects_missing": 0,
        }
        async with Storage(settings) as storage:
            for rel in sorted(files):
                state = latest.get(rel)
                if state is None or state.status != "completed":
                    report["objects_missing"] += 1
                    print(f"missing: {rel} ({state.status if state else 'no stream'})")
                    continue
                same = await storage.read_object(rel) == (root / rel).read_bytes()
                report["objects_ok" if same else "objects_wrong"] += 1
                if not same:
                    print(f"wrong: {rel}")
            # Uploads a crash left unrecorded are the orphan sweep's, after its grace period.
            for _ in range(int(ORPHAN_GRACE_S + ORPHAN_INTERVAL_S + 30) // 2):
                if not (open_uploads := await storage.open_uploads()):
                    break
                await asyncio.sleep(2)
            report["uploads_left_open"] = len(open_uploads)
        report["dead_letters"] = int(await redis.xlen(keys.dead))
        report["streams"] = len(streams)
        return report
    finally:
        await redis.aclose()


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="cefmp4-chaos-"))
    (base / "rec").mkdir()
    (base / "logs").mkdir()
    redis = LocalRedis(base / "redis", persist=True)
    s3 = LocalS3(base / "s3", "chaos", "chaos-secret-0123456789")
    redis.start()
    s3.start()
    env = {
        **os.environ,
        "WATCH_DIR": str(base / "rec"),
        "REDIS_URL": redis.url,
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_ACCESS_KEY_ID": "chaos",
        "S3_SECRET_ACCESS_KEY": "chaos-secret-0123456789",
        "S3_BUCKET_NAME": f"chaos{uuid.uuid4().hex[:8]}",
        "STREAM_CHUNK_SIZE_MB": "5",
        "WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE": "1",
        "STREAM_TIMEOUT_SECONDS": "10",
        "CLAIM_IDLE_SECONDS": "5",
        "UPLOAD_CONCURRENCY": "2",
        "ORPHAN_UPLOAD_GRACE_SECONDS": str(ORPHAN_GRACE_S),
        "ORPHAN_CHECK_INTERVAL_SECONDS": str(ORPHAN_INTERVAL_S),
        "PYTHON_LOG_LEVEL": "INFO",
    }
    os.environ.update(env)
    settings = Settings()
    run = Run(base, env, random.Random(args.seed), redis, s3)
    run.producer = run.spawn("producer")
    run.consumers = [run.spawn("consumer") for _ in range(args.consumers)]
    stop = asyncio.Event()
    started = time.monotonic()
    try:
        async with asyncio.TaskGroup() as tasks:
            for index in range(args.recorders):
                tasks.create_task(recorder(run, index, stop))
            tasks.create_task(chaos(run, stop))
            await asyncio.sleep(args.minutes * 60)
            stop.set()
        report = {"minutes": round((time.monotonic() - started) / 60, 1), **run.counts}
        report.update(await settle_and_verify(run, settings))
        processes = [run.producer, *run.consumers]
        report["processes_exited_by_themselves"] = sum(
            p is not None and p.poll() is not None for p in processes
        )
        return report
    finally:
        for process in [run.producer, *run.consumers]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [run.producer, *run.consumers]:
            if process is not None:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        s3.stop()
        redis.stop()
        print(f"logs and data in {base}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.chaos", description=__doc__)
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--consumers", type=int, default=3)
    parser.add_argument("--recorders", type=int, default=3)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    print(json.dumps(report, indent=2))
    bad = report["objects_wrong"] + report["objects_missing"] + report["uploads_left_open"]
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
