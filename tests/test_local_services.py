"""The local Redis / S3 servers used by the test fixtures and ``make run``: real processes."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from botocore.config import Config
from botocore.exceptions import ClientError

from ops.local_services import LocalRedis, LocalS3

ACCESS_KEY = "test-access"
SECRET_KEY = "test-secret-key"


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def test_redis_stop_and_restart_on_same_port(tmp_path: Path) -> None:
    with LocalRedis(tmp_path / "redis") as r:
        assert r.url == f"redis://127.0.0.1:{r.port}/0"
        assert client(r.url).ping()
        client(r.url).set("k", "v")
        r.stop()
        r.stop()  # idempotent
        assert refused(r.port)
        with pytest.raises(redis.ConnectionError):
            client(r.url).ping()
        r.start()
        assert client(r.url).ping()
        assert client(r.url).get("k") is None  # not persistent
        r.kill()
        assert refused(r.port)
        r.start()
        assert client(r.url).ping()
    assert refused(r.port)


def test_redis_persist_keeps_data_across_restarts(tmp_path: Path) -> None:
    with LocalRedis(tmp_path / "redis", persist=True) as r:
        client(r.url).set("k", "v")
        r.stop()
        r.start()
        assert client(r.url).get("k") == b"v"


def s3_client(s3: LocalS3, secret: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )


def test_s3_put_get_auth_and_restart(tmp_path: Path) -> None:
    with LocalS3(tmp_path / "s3", ACCESS_KEY, SECRET_KEY) as s3:
        assert s3.endpoint_url == f"http://127.0.0.1:{s3.port}"
        c = s3_client(s3, SECRET_KEY)
        c.create_bucket(Bucket="bucket")
        c.put_object(Bucket="bucket", Key="a/b.mp4", Body=b"hello")
        got = c.get_object(Bucket="bucket", Key="a/b.mp4")
        assert got["Body"].read() == b"hello"

        bad = s3_client(s3, "wrong-secret")
        with pytest.raises(ClientError) as exc:
            bad.get_object(Bucket="bucket", Key="a/b.mp4")
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

        s3.stop()
        assert refused(s3.port)
        s3.start()
        got = c.get_object(Bucket="bucket", Key="a/b.mp4")
        assert got["Body"].read() == b"hello"
    assert refused(s3.port)
