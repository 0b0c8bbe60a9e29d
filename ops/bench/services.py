"""The Redis and S3 server the benchmark runs against: its own, or those the environment names."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ops.local_services import LocalRedis, LocalS3

S3_ACCESS_KEY = "cefmp4-bench"
S3_SECRET_KEY = "cefmp4-bench-secret-0123456789"


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str
    region: str


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
