"""Chaos run: many growing recordings, several consumers, random kills and outages.

    python -m ops.chaos [--minutes 15] [--consumers 3] [--recorders 3] [--seed N]

Starts its own Redis (with AOF) and `weed mini`, one producer and N consumers, and
recorders that keep writing recordings: some patch their header at the end as ffmpeg
does, some are deleted or truncated mid-way, some are moved in whole, some have odd names
(spaces, a newline, a leading dash, accents), and some are written in a folder of their own
that is removed or renamed mid-way. A file whose name is not UTF-8 lies in WATCH_DIR
throughout. Meanwhile it kills, stops (SIGTERM) and freezes (SIGSTOP, then SIGCONT)
random processes, and restarts both services, now and then for longer than
CLAIM_IDLE_SECONDS x DEAD_LETTER_AFTER_DELIVERIES. At the end it lets the pipeline settle,
compares every object with its file, counts multipart uploads left open and dead letters,
and prints one JSON report. Exit code 0 only if every object is right, nothing is left
open, nothing was dead-lettered and no process exited by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cefmp4.common.config import Settings
from cefmp4.common.errors import LogError
from cefmp4.common.eventlog import Redis, connect
from cefmp4.common.keys import Keys
from cefmp4.common.s3 import Storage
from cefmp4.common.statestore import StateReader
from cefmp4.common.streamstate import StreamState
from ops.deployment import Deployment, DeploymentEnv
from ops.local_services import LocalRedis, LocalS3

MIB = 1024 * 1024
SETTLE_TIMEOUT_S = 300.0
ORPHAN_GRACE_S = 60
ORPHAN_INTERVAL_S = 15
CLAIM_IDLE_S = 5
DEAD_LETTER_AFTER = 5
LONG_OUTAGE_S = CLAIM_IDLE_S * DEAD_LETTER_AFTER + 5
ODD_NAMES = ("with space {n}.mp4", "-dash {n}.mp4", "new\nline {n}.mp4", "ñandú {n}.mp4")


@dataclass
class Run:
    base: Path
    deployment: Deployment  # the producer and consumer0 .. consumerN-1
    consumers: int
    rng: random.Random
    redis: LocalRedis
    s3: LocalS3
    counts: dict[str, int] = field(default_factory=dict)
    live: set[Path] = field(default_factory=set)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


async def recorder(run: Run, index: int, stop: asyncio.Event) -> None:
    """Write recordings one after another until `stop`, with the odd mishap."""
    rng = random.Random(run.rng.random())
    n = 0
    while not stop.is_set():
        n += 1
        camera = run.base / "rec" / f"cam{index}"
        path = camera / f"{n:05d}.mp4"
        size = rng.randint(0, 16 * MIB)
        rate = rng.uniform(2, 8) * MIB
        fate = rng.random()
        run.count("recordings")
        if 0.80 <= fate < 0.85:
            path = camera / ODD_NAMES[n % len(ODD_NAMES)].format(n=n)
            run.count("recordings_odd_names")
        elif 0.85 <= fate < 0.95:
            path = camera / f"s{n:05d}" / "rec.mp4"  # a folder of its own, removed or renamed
        path.parent.mkdir(parents=True, exist_ok=True)
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
            moved = False
            while written < size and not stop.is_set():
                chunk = min(rng.randint(4096, 512 * 1024), size - written)
                f.write(os.urandom(chunk))
                f.flush()
                written += chunk
                await asyncio.sleep(chunk / rate)
                if fate < 0.05 and written > size // 2:
                    break  # deleted below, mid-recording
                if 0.85 <= fate < 0.90 and written > size // 2:
                    break  # its folder removed below, mid-recording
                if 0.90 <= fate < 0.95 and written > size // 2 and not moved:
                    # The folder renamed; the recorder writes on through its open file.
                    path.parent.rename(path.parent.with_name(path.parent.name + "-moved"))
                    moved = True
                    run.count("folders_renamed")
            if fate < 0.05:
                path.unlink()
                run.count("recordings_deleted")
            elif 0.85 <= fate < 0.90:
                shutil.rmtree(path.parent)
                run.count("folders_removed")
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
    actions = ["kill_consumer"] * 2 + ["term_consumer", "freeze_consumer", "kill_producer"]
    actions += ["redis", "s3", "long_outage"]
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(4, 15))
        action = rng.choice(actions)
        if action == "long_outage":
            action = rng.choice(["long_redis_outage", "long_s3_outage"])
        run.count(action)
        victim = f"consumer{rng.randrange(run.consumers)}"
        if action in {"kill_consumer", "term_consumer"}:
            sig = signal.SIGKILL if action == "kill_consumer" else signal.SIGTERM
            await asyncio.to_thread(run.deployment.stop, victim, sig)
            await asyncio.sleep(rng.uniform(0, 3))
            run.deployment.restart(victim)
        elif action == "freeze_consumer":
            # Past its locks and claims (CLAIM_IDLE_SECONDS / 2), then resumed.
            run.deployment.signal(victim, signal.SIGSTOP)
            await asyncio.sleep(rng.uniform(CLAIM_IDLE_S / 2, 3 * CLAIM_IDLE_S))
            run.deployment.signal(victim, signal.SIGCONT)
        elif action == "kill_producer":
            await asyncio.to_thread(run.deployment.stop, "producer", signal.SIGKILL)
            await asyncio.sleep(rng.uniform(0, 3))
            run.deployment.restart("producer")
        elif action in {"redis", "long_redis_outage"}:
            await asyncio.to_thread(run.redis.stop)
            await asyncio.sleep(LONG_OUTAGE_S if action != "redis" else rng.uniform(1, 5))
            await asyncio.to_thread(run.redis.start)
        elif action in {"s3", "long_s3_outage"}:
            await asyncio.to_thread(run.s3.stop)
            await asyncio.sleep(LONG_OUTAGE_S if action != "s3" else rng.uniform(1, 10))
            await asyncio.to_thread(run.s3.start)


async def projected_streams(redis: Redis, keys: Keys) -> list[StreamState]:
    """Every stream as the projected state has it; none while Redis is down."""
    try:
        return [s async for states in StateReader(redis, keys).slices() for s in states]
    except LogError:
        return []


def recordings(root: Path) -> dict[str, int]:
    """Every recording on disk that should have an object (a name that is not UTF-8 has none)."""
    found: dict[str, int] = {}
    for path in root.rglob("*.mp4"):
        rel = path.relative_to(root).as_posix()
        with contextlib.suppress(UnicodeEncodeError):
            rel.encode()
            found[rel] = path.stat().st_size
    return found


async def settle_and_verify(run: Run, settings: Settings) -> dict[str, float]:
    """Wait until every file's object is complete; then compare bytes and list open uploads."""
    root = run.base / "rec"
    keys = Keys(settings.keys_prefix)
    redis = connect(settings)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    try:
        while True:
            files = recordings(root)
            streams = await projected_streams(redis, keys)
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
    env = DeploymentEnv(
        watch_dir=base / "rec",
        redis_url=redis.url,
        s3_endpoint_url=s3.endpoint_url,
        s3_access_key="chaos",
        s3_secret_key="chaos-secret-0123456789",
        bucket=f"chaos{uuid.uuid4().hex[:8]}",
        settings={
            "STREAM_CHUNK_SIZE_MB": "5",
            "WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE": "1",
            "STREAM_TIMEOUT_SECONDS": "10",
            "CLAIM_IDLE_SECONDS": str(CLAIM_IDLE_S),
            "DEAD_LETTER_AFTER_DELIVERIES": str(DEAD_LETTER_AFTER),
            "UPLOAD_CONCURRENCY": "2",
            "ORPHAN_UPLOAD_GRACE_SECONDS": str(ORPHAN_GRACE_S),
            "ORPHAN_CHECK_INTERVAL_SECONDS": str(ORPHAN_INTERVAL_S),
            "PYTHON_LOG_LEVEL": "INFO",
        },
    )
    os.environ.update(env.variables())
    settings = Settings()
    deployment = Deployment(env, base / "logs", stop_timeout_s=20)
    run = Run(base, deployment, args.consumers, random.Random(args.seed), redis, s3)
    stop = asyncio.Event()
    started = time.monotonic()
    # A name that is not UTF-8: never uploaded, and it must stop nothing.
    fd = os.open(bytes(base / "rec") + b"/not-utf8-\xff.mp4", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, os.urandom(MIB))
    os.close(fd)
    try:
        deployment.start("producer")
        for i in range(args.consumers):
            deployment.start("consumer", name=f"consumer{i}")
        async with asyncio.TaskGroup() as tasks:
            for index in range(args.recorders):
                tasks.create_task(recorder(run, index, stop))
            tasks.create_task(chaos(run, stop))
            await asyncio.sleep(args.minutes * 60)
            stop.set()
        report = {"minutes": round((time.monotonic() - started) / 60, 1), **run.counts}
        report.update(await settle_and_verify(run, settings))
        report["processes_exited_by_themselves"] = len(deployment.exited())
        return report
    finally:
        deployment.stop_all()
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
    counted = ("objects_wrong", "objects_missing", "uploads_left_open", "dead_letters")
    bad = sum(report[name] for name in counted) + report["processes_exited_by_themselves"]
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
