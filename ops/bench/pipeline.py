"""One measured cefmp4 deployment: started, ready, measured, checked and removed again."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

import redis
from prometheus_client.parser import text_string_to_metric_families

from cefmp4.common.keys import Keys
from ops.bench.errors import BenchError
from ops.bench.procstats import cpu_seconds, local_tcp_ports, peak_rss_bytes
from ops.bench.projected import Projected
from ops.bench.sizes import MIB, Live
from ops.bench.workspace import Bench
from ops.cpu_quota import CpuQuota, QuotaUnavailable
from ops.deployment import Deployment, DeploymentEnv
from ops.local_services import free_port

CANARY = "bench-ready.mp4"


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
        metrics: bool = False,
        idle_s: float | None = None,
        finalize_on_close: bool = False,
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
        # The first consumer's /metrics port, when asked for (see `consumer_counter`).
        self.metrics_port = free_port() if metrics else None
        settings = {
            "WATCH_FILTER_GLOBS": "*.mp4",
            "WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE": str(idle_s or bench.sizes.idle_s),
            # Off unless a case measures it: the other cases time the idle timer's end.
            "WATCH_FINALIZE_ON_CLOSE": "true" if finalize_on_close else "false",
            "S3_REGION_NAME": bench.s3.region,
            "S3_KEY_PREFIX": "",
            "PYTHON_LOG_LEVEL": "WARNING",
        }
        if part_mib:
            settings["STREAM_CHUNK_SIZE_MB"] = str(part_mib)
        env = DeploymentEnv(
            watch_dir=self.watch_dir,
            redis_url=bench.redis_url,
            s3_endpoint_url=bench.s3.url,
            s3_access_key=bench.s3.access_key,
            s3_secret_key=bench.s3.secret_key,
            bucket=self.bucket,
            key_prefix=self.keys.prefix,
            settings=settings,
        )
        self.deployment = Deployment(env, log_dir=self.dir, stop_timeout_s=30)
        self.projected = Projected(bench.redis_url, self.keys)
        self.profilers: list[subprocess.Popen[bytes]] = []
        self._cpu_at_start: dict[int, float] = {}
        self._redis_at_start = 0

    # lifecycle

    def __enter__(self) -> Self:
        self.watch_dir.mkdir(parents=True)
        self.staging.mkdir()
        try:
            self.deployment.start("producer")
            for i in range(self.consumers):
                name = f"consumer{i}"
                if i == 0 and self.metrics_port is not None:
                    consumer = self.deployment.start(
                        "consumer",
                        name=name,
                        CONSUMER_NAME=f"{self.label}-c{i}",
                        METRICS_PORT=str(self.metrics_port),
                        METRICS_HOST="127.0.0.1",
                    )
                else:
                    consumer = self.deployment.start(
                        "consumer", name=name, CONSUMER_NAME=f"{self.label}-c{i}"
                    )
                if self.consumer_cpus is not None:
                    self._hold_to_quota(name, consumer.pid, self.consumer_cpus)
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
        self.deployment.stop_all()
        self.projected.close()
        for profiler in self.profilers:
            try:
                profiler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                profiler.kill()
                profiler.wait()
        for quota in self.quotas:
            quota.remove()
        self.bench.s5cmd.remove_bucket(self.bucket)
        with contextlib.suppress(redis.RedisError):
            for key in list(self.bench.redis.scan_iter(match=self.keys.prefix + "*", count=1000)):
                self.bench.redis.unlink(key)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _hold_to_quota(self, name: str, pid: int, cpus: float) -> None:
        try:
            quota = CpuQuota(cpus, f"{self.label}-{name}")
        except QuotaUnavailable as exc:
            raise BenchError(str(exc)) from exc
        self.quotas.append(quota)
        quota.add(pid)

    def _check_alive(self) -> None:
        for role in self.deployment.exited():
            raise BenchError(
                f"{self.label}: {role.name} exited with {role.process.returncode}:\n"
                + self.deployment.log_tail(role.name)
            )

    def _wait_ready(self) -> None:
        # Redis before 7.2 lists a consumer in its group only once it was handed an entry,
        # so "reading" is: the process holds a connection blocked in XREADGROUP.
        deadline = time.monotonic() + 60
        waiting = [r for r in self.deployment.processes() if r.name != "producer"]
        while waiting:
            self._check_alive()
            blocked = {
                int(c["addr"].rsplit(":", 1)[1])
                for c in self.bench.redis.client_list()
                if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
            }
            waiting = [r for r in waiting if not blocked & local_tcp_ports(r.pid)]
            if waiting and time.monotonic() > deadline:
                raise BenchError(f"{self.label}: consumers not reading the log after 60 s")
            time.sleep(0.05)
        canary = self.watch_dir / CANARY
        canary.write_bytes(b"\0" * 4096)
        self.wait_completed({CANARY: 4096}, timeout_s=60)  # left in place: no more events
        if self.bench.profile_dir is not None:
            self._attach_profilers(self.bench.profile_dir)
        self._cpu_at_start = {r.pid: cpu_seconds(r.pid) for r in self.deployment.processes()}
        self._redis_at_start = self.redis_bytes()

    def _attach_profilers(self, out_dir: Path) -> None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out_dir.mkdir(parents=True, exist_ok=True)
        for role in self.deployment.processes():
            output = out_dir / f"{self.label}-{role.name}-{role.pid}.txt"
            record = ["record", "--format=raw", "--rate=200", "--native"]
            profiler = subprocess.Popen(
                [py_spy, *record, f"--pid={role.pid}", f"--output={output}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.profilers.append(profiler)
        time.sleep(0.5)  # py-spy needs a moment to attach; nothing is being measured yet

    # what the pipeline did

    def wait_completed(self, sizes: dict[str, int], timeout_s: float) -> float:
        """Poll until every path's stream is completed at its size; monotonic time then."""
        rels = list(sizes)
        interval_s = 0.01 if len(rels) <= 8 else 0.05
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            streams = self.projected.latest(rels)
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
                    + "\n".join(
                        self.deployment.log_tail(r.name, 5) for r in self.deployment.processes()
                    )
                )
            self._check_alive()
            time.sleep(interval_s)

    def wait_each_completed(self, sizes: dict[str, int], timeout_s: float) -> dict[str, float]:
        """Poll until every path's stream is completed at its size; when each was seen so."""
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout_s
        while len(seen) < len(sizes):
            now = time.monotonic()
            rels = [rel for rel in sizes if rel not in seen]
            for rel, s in zip(rels, self.projected.latest(rels), strict=True):
                if s is not None and s.status == "completed" and s.size_bytes == sizes[rel]:
                    seen[rel] = now
                elif s is not None and s.status in {"failed", "aborted"}:
                    raise BenchError(f"{self.label}: {rel} {s.status}: {s.reason}")
            if now > deadline:
                raise BenchError(f"{self.label}: {len(seen)}/{len(sizes)} completed")
            self._check_alive()
            time.sleep(0.02)
        return seen

    def uploaded_bytes(self, rel: str) -> int:
        stream = self.projected.latest([rel])[0]
        return stream.uploaded_bytes if stream is not None else 0

    def consumer_counter(self, name: str) -> float:
        """A counter of the first consumer's /metrics (the pipeline made with `metrics`)."""
        assert self.metrics_port is not None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        )

    def cpu_used(self, role: str = "") -> float:
        """CPU seconds of the cefmp4 processes (named `role*`) since the measurement started."""
        return sum(
            cpu_seconds(r.pid) - self._cpu_at_start[r.pid]
            for r in self.deployment.processes()
            if r.name.startswith(role)
        )

    def consumer_peak_rss(self) -> int:
        consumers = [r for r in self.deployment.processes() if r.name != "producer"]
        return max(peak_rss_bytes(r.pid) for r in consumers)

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
        """Write `rel` at the given rate from the pool file; (monotonic time right after
        its close(), MiB/s)."""
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

    def write_fleet(
        self, rels: list[str], size: int, seconds: float, pool: Path, rounds: int = 32
    ) -> dict[str, float]:
        """Write every file together, a round of chunks at a time, over `seconds`.

        Returns the monotonic time of each file's last write.
        """
        chunk = -(-size // rounds)
        with contextlib.ExitStack() as stack:
            outs = {
                rel: stack.enter_context((self.watch_dir / rel).open("xb", buffering=0))
                for rel in rels
            }
            last: dict[str, float] = {}
            with pool.open("rb") as source:
                start = time.monotonic()
                for n in range(rounds):
                    data = source.read(min(chunk, size - n * chunk))
                    for rel, out in outs.items():
                        out.write(data)
                        last[rel] = time.monotonic()
                    delay = start + (n + 1) * seconds / rounds - time.monotonic()
                    if delay > 0 and n + 1 < rounds:
                        time.sleep(delay)
        return last
