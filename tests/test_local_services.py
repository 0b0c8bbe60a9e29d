"""The local Redis / S3 servers used by the test fixtures and ``make run``: real processes."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from botocore.config import Config
from botocore.exceptions import ClientError

from ops import local_services
from ops.local_services import LocalRedis, LocalS3, free_port

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


def test_s3_has_room_for_a_bucket_per_test(tmp_path: Path) -> None:
    # weed keeps one volume per bucket; its own limit (free disk / volume size, about 80
    # here) ran out late in a full run and every later upload failed with InternalError.
    with LocalS3(tmp_path / "s3", ACCESS_KEY, SECRET_KEY) as s3:
        status_url = f"http://127.0.0.1:{s3.ports['master.port']}/dir/status"
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(status_url, timeout=5) as answer:
                topology = json.load(answer)["Topology"]
            if topology["DataCenters"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # the volume server has not registered with the master yet
        assert topology["Max"] >= 5000


def test_ports_are_outside_the_ephemeral_range_and_given_out_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_services, "_CLAIMS", tmp_path / "claims")
    ports = {free_port() for _ in range(50)}
    assert len(ports) == 50
    assert all(20000 <= port < 32768 for port in ports)  # Linux hands out 32768 and up

    claims = tmp_path / "claims"
    dead = subprocess.Popen(["true"])
    dead.wait()
    (claims / "20000").write_text(str(dead.pid))
    with subprocess.Popen(["sleep", "30"]) as live:
        (claims / "20001").write_text(str(live.pid))
        assert local_services._claim(20000)  # its holder has exited: taken over
        assert not local_services._claim(20001)  # held by another live process
        live.kill()
    for port in ports:
        assert not local_services._claim(port)  # ours already
