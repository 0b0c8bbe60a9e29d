"""The `cefmp4` command as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cefmp4.common.eventlog import EventLog
from cefmp4.common.s3 import Storage
from cefmp4.settings_sources import REDIS_VARIABLES
from tests.conftest import Processes
from tests.test_pipeline import assert_nothing_open, wait_completed


def cefmp4(
    env: dict[str, str], *args: str, cwd: Path, outer_redis: bool = True
) -> subprocess.CompletedProcess[str]:
    """`cefmp4 ARGS` in `cwd` with `env` over the outer environment; the outer environment's
    Redis variables are left out unless `outer_redis` (they would hide the ones under test)."""
    outer = {k: v for k, v in os.environ.items() if outer_redis or k not in REDIS_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "cefmp4", *args],
        env={**outer, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_wrong_setting_stops_with_one_line_naming_it_and_no_secret(
    env: dict[str, str], tmp_path: Path
) -> None:
    secret = "s3cr3t-never-print-me"
    bad = {**env, "STREAM_CHUNK_SIZE_MB": "3", "S3_SECRET_ACCESS_KEY": secret}

    result = cefmp4(bad, "consumer", cwd=tmp_path)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "STREAM_CHUNK_SIZE_MB" in lines[0]
    assert secret not in result.stderr + result.stdout


def test_missing_watch_dir_is_named_at_start(env: dict[str, str], tmp_path: Path) -> None:
    result = cefmp4({**env, "WATCH_DIR": str(tmp_path / "nope")}, "producer", cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"cefmp4: invalid setting WATCH_DIR: {tmp_path / 'nope'} is not a directory"
    ]


async def test_status_shows_streams_as_table_and_json(
    processes: Processes,
    env: dict[str, str],
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    tmp_path: Path,
) -> None:
    processes.start("producer")
    processes.start("consumer")
    (watch_dir / "cam").mkdir()
    (watch_dir / "cam" / "a.mp4").write_bytes(os.urandom(6 * 1024 * 1024))
    await wait_completed(log, storage, watch_dir, "cam/a.mp4")

    table = cefmp4(env, "status", cwd=tmp_path)
    as_json = cefmp4(env, "status", "--json", cwd=tmp_path)

    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == [
        "PATH",
        "STATUS",
        "PROGRESS",
        "UPLOADED",
        "SIZE",
        "PARTS",
        "RATE",
        "AGE",
    ]
    assert row.split()[:9] == [
        "cam/a.mp4",
        "completed",
        "[##########]",
        "100%",
        "6.0",
        "MiB",
        "6.0",
        "MiB",
        "2",
    ]
    assert any(line.split()[:3] == ["uploaders", "1", "0"] for line in table.stdout.splitlines())
    status = json.loads(as_json.stdout)
    [stream] = status["streams"]
    assert stream["path"] == "cam/a.mp4"
    assert stream["s3_key"] == "cam/a.mp4"
    assert stream["status"] == "completed"
    assert stream["size_bytes"] == stream["uploaded_bytes"] == 6 * 1024 * 1024
    assert stream["parts"] == 2
    assert {g["name"] for g in status["groups"]} == {"uploaders", "projector", "stale-checker"}
    assert status["dead_letters"] == 0
    await assert_nothing_open(storage)


def streams_now(env: dict[str, str], cwd: Path) -> list[dict[str, object]]:
    """The streams `status --json` shows, without the fields that change with the clock."""
    streams = json.loads(cefmp4(env, "status", "--json", cwd=cwd).stdout)["streams"]
    clock = {"age_s", "idle_s", "rate_bytes_per_s"}
    return [{k: v for k, v in s.items() if k not in clock} for s in streams]


async def test_replay_command_rebuilds_deleted_state(
    processes: Processes,
    env: dict[str, str],
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    tmp_path: Path,
) -> None:
    processes.start("producer")
    processes.start("consumer")
    (watch_dir / "b.mp4").write_bytes(os.urandom(1000))
    await wait_completed(log, storage, watch_dir, "b.mp4")
    before = streams_now(env, tmp_path)
    keys = [k async for k in log.redis.scan_iter(match=log.keys.stream("*"))]
    await log.redis.delete(*keys, log.keys.streams, log.keys.paths)
    assert json.loads(cefmp4(env, "status", "--json", cwd=tmp_path).stdout)["streams"] == []

    result = cefmp4(env, "replay", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "into 1 streams" in result.stdout
    assert streams_now(env, tmp_path) == before


def test_status_without_redis_fails_at_once_with_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    result = cefmp4({**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, "status", cwd=tmp_path)

    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    said = "cefmp4: cannot reach Redis redis://127.0.0.1:1/0 (from the environment):"
    assert line.startswith(said)
