"""How the state scales: Redis and process memory, and times, at up to a million recordings.

    python -m ops.statescale [--recordings 1000000] [--case pruned|parts|kept ...]

Each case starts its own Redis and S3 server and seeds the state through the real code:
every recording's events (UploadStarted, one PartUploaded a part, StreamCompleted) are
appended to the log as uploaders append them, and a real consumer process folds them.

- pruned: every recording finished, FINISHED_STREAM_RETENTION_SECONDS=1; Redis
  used_memory once a tenth of them and once all of them are pruned and the log trimmed.
- parts: 10,000 recordings of 100 parts each, kept; Redis memory a recording.
- kept: `--recordings` kept (retention 0); the peak RSS of a fresh consumer holding every
  lease while it snapshots, sweeps and refreshes its gauges, against the same at 1,000;
  `cefmp4 status` seconds and peak RSS; the snapshot's seconds; replay's events a second.

It prints one JSON object; ops/BENCHMARKS.md holds the figures of a run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from cefmp4.common.events import FIELD, AnyEvent, PartUploaded, StreamCompleted, UploadStarted
from cefmp4.common.events import encode as encode_event
from cefmp4.common.keys import Keys
from cefmp4.common.statestore import StateReader
from ops.bench.procstats import peak_rss_bytes
from ops.bench.services import services
from ops.deployment import Deployment, DeploymentEnv, project_pythonpath
from ops.local_services import free_port

KEYS = Keys()
BUCKET = "statescale"
PART = 5 * 1024 * 1024
SEED_BATCH = 2_000  # recordings appended between two looks at the projector
AHEAD = 20_000  # recordings appended beyond what the projector has folded, at most
SNAPSHOT_LINE = re.compile(rb"snapshot at \S+ \((\d+) streams\) in ([\d.]+)s")


def recording_events(number: int, parts: int, at_ms: int) -> Iterator[AnyEvent]:
    """What the uploaders append for one finished recording of `parts` parts."""
    stream_id = f"{number:016x}"
    path = f"cam{number % 100:03d}/{number:08d}.mp4"
    size = parts * PART
    yield UploadStarted(
        stream_id=stream_id,
        path=path,
        s3_key=path,
        upload_id=f"{number:064x}",
        inode=number,
        device=1,
        size=0,
        at_ms=at_ms,
    )
    for part in range(parts):
        yield PartUploaded(
            stream_id=stream_id,
            path=path,
            part_number=part + 1,
            offset=part * PART,
            length=PART,
            crc32=(number * 131 + part) & 0xFFFFFFFF,
            etag=f'"{number:024x}{part:08x}"',
            file_size=(part + 1) * PART,
            ctime_ns=at_ms * 1_000_000,
            at_ms=at_ms,
        )
    yield StreamCompleted(
        stream_id=stream_id,
        path=path,
        size=size,
        etag=f'"{number:032x}-{parts}"',
        mtime_ns=at_ms * 1_000_000,
        at_ms=at_ms,
    )


class Site:
    """One Redis and S3, a consumer folding what is appended, and the seeding of recordings."""

    def __init__(self, redis_url: str, deployment: Deployment) -> None:
        # A dropped connection (the box is shared) is made again, not the end of a long run.
        self.redis = aioredis.from_url(
            redis_url,
            retry=Retry(ExponentialBackoff(cap=2.0), 20),
            retry_on_error=[redis.exceptions.ConnectionError],
        )
        self.deployment = deployment
        self.seeded = 0
        self.appended = 0
        self.seeding_s = 0.0  # appending and waiting for the projector to fold it

    async def seed(self, until: int, parts: int) -> None:
        """Append recordings until `until` were, keeping the projector at most AHEAD behind."""
        at_ms = int(time.time() * 1000)
        started = time.monotonic()
        while self.seeded < until:
            count = min(SEED_BATCH, until - self.seeded)
            async with self.redis.pipeline(transaction=False) as pipe:
                for number in range(self.seeded, self.seeded + count):
                    for event in recording_events(number, parts, at_ms):
                        pipe.xadd(KEYS.events, {FIELD: encode_event(event)})
                ids = await pipe.execute()
            self.seeded += count
            self.appended += len(ids)
            last = ids[-1]
            if self.seeded % AHEAD < SEED_BATCH or self.seeded == until:
                await self.folded(last)
        self.seeding_s += time.monotonic() - started

    def fold_rate(self) -> int:
        """Events appended and folded a second, over every seeding so far."""
        return round(self.appended / self.seeding_s)

    async def folded(self, entry_id: bytes) -> None:
        """Wait until the projector has folded the log up to `entry_id`."""
        wanted = _id(entry_id)
        while True:
            position = await self.redis.get(KEYS.projector_position)
            if position is not None and _id(position) >= wanted:
                return
            self.check_alive()
            await asyncio.sleep(0.2)

    async def settled(self, pruned: int) -> None:
        """Wait until `pruned` streams are pruned and the log trimmed to its minimum."""
        while True:
            done = int(await self.redis.get(KEYS.pruned) or 0)
            length = int(await self.redis.xlen(KEYS.events))
            if done >= pruned and length <= 10_000 + SEED_BATCH * 3:
                return
            self.check_alive()
            await asyncio.sleep(0.5)

    async def used_memory(self) -> int:
        info = await self.redis.info("memory")
        return int(info["used_memory"])

    async def memory(self) -> dict[str, int]:
        """Redis's used_memory, and the shares of the log and of the completions stream (each
        trimmed to a length of its own: LOG_RETENTION_MIN_ENTRIES, COMPLETIONS_MAX_ENTRIES)."""
        return {
            "used_memory": await self.used_memory(),
            "log_entries": int(await self.redis.xlen(KEYS.events)),
            "log_bytes": int(await self.redis.memory_usage(KEYS.events, samples=0) or 0),
            "completions_entries": int(await self.redis.xlen(KEYS.completed)),
            "completions_bytes": int(await self.redis.memory_usage(KEYS.completed, samples=0) or 0),
        }

    def check_alive(self) -> None:
        # A process stopped here exits 0; any other exit is a failure of the run.
        if failed := [p for p in self.deployment.exited() if p.process.returncode != 0]:
            raise RuntimeError(f"{failed[0].name} exited:\n{self.deployment.output()}")


def _id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    millis, _, seq = text.partition("-")
    return int(millis), int(seq or 0)


def _deployment(base: Path, redis_url: str, endpoint: Any) -> Deployment:
    watch = base / "recordings"
    watch.mkdir(parents=True, exist_ok=True)
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    env = DeploymentEnv(
        watch_dir=watch,
        redis_url=redis_url,
        s3_endpoint_url=endpoint.url,
        s3_access_key=endpoint.access_key,
        s3_secret_key=endpoint.secret_key,
        bucket=BUCKET,
        settings={"S3_REGION_NAME": endpoint.region, "HEALTH_FILE": str(base / "health")},
    )
    return Deployment(env, logs, stop_timeout_s=120)


async def case_pruned(base: Path, recordings: int) -> dict[str, Any]:
    with services(base) as (redis_url, endpoint):
        deployment = _deployment(base, redis_url, endpoint)
        deployment.start(
            "consumer",
            FINISHED_STREAM_RETENTION_SECONDS="1",
            LOG_RETENTION_SNAPSHOT_INTERVAL_SECONDS="2",
        )
        site = Site(redis_url, deployment)
        try:
            figures: dict[str, Any] = {"recordings": recordings}
            started = time.monotonic()
            for share in (recordings // 10, recordings):
                await site.seed(share, parts=1)
                await site.settled(share)
                figures[f"at_{share}"] = await site.memory()
            figures["seconds"] = round(time.monotonic() - started, 1)
            figures["events"] = site.appended
            deployment.stop_all()
            before = await _state_digest(site.redis)
            replayed = _timed(deployment, ["-m", "cefmp4", "replay"], base / "replay.out")
            figures["replay"] = {
                **replayed,
                "same_state": await _state_digest(site.redis) == before,
            }
            figures["folded_a_second"] = site.fold_rate()
            return figures
        finally:
            deployment.stop_all()


async def case_parts(base: Path, recordings: int = 10_000, parts: int = 100) -> dict[str, Any]:
    with services(base) as (redis_url, endpoint):
        deployment = _deployment(base, redis_url, endpoint)
        site = Site(redis_url, deployment)
        empty = await site.used_memory()
        deployment.start("consumer", FINISHED_STREAM_RETENTION_SECONDS="0")
        try:
            await site.seed(recordings, parts)
            deployment.stop_all()
            state, snapshot = await _state_memory(site.redis)
            replayed = _timed(deployment, ["-m", "cefmp4", "replay"], base / "replay.out")
            # "replayed N events into M streams"
            words = (base / "replay.out").read_text().split()
            events, streams = int(words[1]), int(words[4])
            return {
                "recordings": recordings,
                "parts": parts,
                "state_bytes": state,
                "snapshot_bytes": snapshot,
                "bytes_a_recording": round(state / recordings),
                "budget_a_recording": 1024 + 64 * parts,
                "used_memory_empty": empty,
                "used_memory": await site.used_memory(),
                "folded_a_second": site.fold_rate(),
                "replay": {
                    **replayed,
                    "events": events,
                    "streams": streams,
                    "events_a_second": round(events / replayed["seconds"]),
                },
            }
        finally:
            deployment.stop_all()


async def _state_digest(redis: aioredis.Redis) -> str:
    """A digest of every kept stream (parts included) and of the paths index."""
    reader = StateReader(redis, KEYS)
    streams = [msgspec.msgpack.encode(s) async for states in reader.slices() for s in states]
    paths = [item async for chunk in reader.paths() for item in chunk.items()]
    encoded = msgspec.msgpack.encode([sorted(streams), sorted(paths)])
    return hashlib.sha256(encoded).hexdigest()


async def _state_memory(redis: aioredis.Redis) -> tuple[int, int]:
    """Bytes of the state's keys and of the snapshot's (MEMORY USAGE, every element)."""
    state = snapshot = 0
    async for batch in _key_batches(redis):
        async with redis.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.memory_usage(key, samples=0)
            sizes = await pipe.execute()
        for key, size in zip(batch, sizes, strict=True):
            if key.startswith(KEYS.snapshot.encode()):
                snapshot += size or 0
            else:
                state += size or 0
    return state, snapshot


async def _key_batches(redis: aioredis.Redis) -> Any:
    cursor = 0
    while True:
        cursor, keys = await redis.scan(cursor, match=f"{KEYS.prefix}*", count=1000)
        batch = [key for key in keys if key != KEYS.events.encode()]
        if batch:
            yield batch
        if cursor == 0:
            return


async def case_kept(base: Path, recordings: int) -> dict[str, Any]:
    with services(base) as (redis_url, endpoint):
        deployment = _deployment(base, redis_url, endpoint)
        site = Site(redis_url, deployment)
        figures: dict[str, Any] = {"recordings": recordings}
        try:
            deployment.start("consumer", name="seeder", FINISHED_STREAM_RETENTION_SECONDS="0")
            for count in (1_000, recordings):
                await site.seed(count, parts=1)
                deployment.stop("seeder")
                figures[f"at_{count}"] = await _fresh_consumer(site, deployment, count)
                deployment.start("consumer", name="seeder", FINISHED_STREAM_RETENTION_SECONDS="0")
            deployment.stop_all()
            figures["status"] = _timed(
                deployment, ["-m", "cefmp4", "status", "--json"], base / "status.json"
            )
            figures["used_memory"] = await site.used_memory()
            figures["folded_a_second"] = site.fold_rate()
            return figures
        finally:
            deployment.stop_all()


async def _fresh_consumer(site: Site, deployment: Deployment, count: int) -> dict[str, Any]:
    """A new consumer's peak RSS once it has snapshotted, swept and refreshed its gauges."""
    name = f"consumer-{count}"
    port = free_port()
    process = deployment.start(
        "consumer",
        name=name,
        LOG_RETENTION_SNAPSHOT_INTERVAL_SECONDS="1",
        ORPHAN_CHECK_INTERVAL_SECONDS="1",
        METRICS_PORT=str(port),
        FINISHED_STREAM_RETENTION_SECONDS="0",
    )
    log_path = next(p.log_path for p in deployment.processes() if p.name == name)
    refreshes: set[str] = set()
    while True:
        snapshots = [
            m for m in SNAPSHOT_LINE.finditer(log_path.read_bytes()) if int(m.group(1)) >= count
        ]
        refreshes.add(await asyncio.to_thread(_gauges_refreshed, port))
        # Two snapshots of everything; the sweep runs every second meanwhile; two refreshes.
        if len(snapshots) >= 2 and len(refreshes - {""}) >= 2:
            break
        site.check_alive()
        await asyncio.sleep(0.5)
    rss = peak_rss_bytes(process.pid) // 1024  # KiB
    deployment.stop(name)
    return {
        "consumer_peak_rss_mib": round(rss / 1024, 1),
        "snapshot_seconds": float(snapshots[-1].group(2)),
    }


def _gauges_refreshed(port: int) -> str:
    """The gauges' last refresh time from /metrics, or "" before the first (or no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith("cefmp4_gauges_refreshed_timestamp_seconds "):
            value = line.split()[1]
            return "" if float(value) == 0 else value
    return ""


# Runs the command as its own child and prints the child's seconds and peak RSS (KiB): a
# child of this process would count this process's pages from before its exec in its peak.
_MEASURE = """
import os, resource, subprocess, sys, time
started = time.monotonic()
code = subprocess.call(sys.argv[1:])
seconds = time.monotonic() - started
print(code, seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
"""


def _timed(deployment: Deployment, args: list[str], out: Path) -> dict[str, Any]:
    """Seconds and peak RSS of one cefmp4 command run as a user runs it."""
    env = {
        **os.environ,
        "PYTHONPATH": project_pythonpath(os.environ),
        **deployment.env.variables(),
    }
    with out.open("wb") as stdout:
        measured = subprocess.run(
            [sys.executable, "-c", _MEASURE, sys.executable, *args],
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            check=True,
        )
    code, seconds, peak_kib = measured.stderr.split()[-3:]
    if int(code) != 0:
        raise RuntimeError(f"{args} exited with {int(code)}: {measured.stderr.decode()}")
    return {"seconds": round(float(seconds), 2), "peak_rss_mib": round(int(peak_kib) / 1024, 1)}


CASES = {"pruned": case_pruned, "parts": case_parts, "kept": case_kept}


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in args.case:
        with tempfile.TemporaryDirectory(prefix=f"cefmp4-statescale-{name}-") as base:
            started = time.monotonic()
            if name == "parts":
                results[name] = await case_parts(Path(base))
            else:
                results[name] = await CASES[name](Path(base), args.recordings)
            results[name]["case_seconds"] = round(time.monotonic() - started, 1)
            print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.statescale", description=__doc__)
    parser.add_argument("--recordings", type=int, default=1_000_000)
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    args = parser.parse_args(argv)
    args.case = args.case or list(CASES)
    # Stopped with SIGTERM, stop the servers and processes started too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(json.dumps(asyncio.run(_main(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
