"""What every case of one benchmark run shares: the services' clients, s5cmd, scratch files."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ops.bench.s5cmd import S5cmd
from ops.bench.services import S3Endpoint
from ops.bench.sizes import MIB, Sizes


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(8 * MIB, left))
            f.write(block)
            left -= len(block)


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
