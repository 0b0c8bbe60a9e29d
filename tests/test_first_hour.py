"""The first hour of a new user: commands find `make run`'s services and say which Redis they
use, `health` tells an exited process from a stuck one, each deployment has its own
heartbeat, `make clean-data` keeps the data of running services, `--help` speaks to users,
and status shows a recording below one part on its way."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from cefmp4.common.config import load_settings, masked_url
from cefmp4.common.eventlog import EventLog
from cefmp4.common.s3 import Storage
from cefmp4.settings_sources import REDIS_VARIABLES
from tests.conftest import ROOT, Processes, eventually
from tests.test_cli import cefmp4
from tests.test_pipeline import stream_of, wait_completed

MB = 1_000_000


def without_redis(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in REDIS_VARIABLES}


def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_help_says_what_cefmp4_does_and_where_settings_come_from() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "cefmp4", "--help"], capture_output=True, text=True, check=True
    ).stdout

    assert "Stream the recordings that appear in WATCH_DIR into S3-compatible storage" in shown
    assert "Settings come from environment variables and a .env file" in shown
    assert "the one place that reads settings" not in shown  # the module's docstring
    assert "status" in shown and "health" in shown


def test_a_redis_password_is_masked_wherever_it_is_shown() -> None:
    assert masked_url("redis://default:s3cret@h:6379/0") == "redis://default:***@h:6379/0"
    assert masked_url("rediss://:s3cret@h/0") == "rediss://:***@h/0"
    assert masked_url("redis://h/0?password=s3cret") == "redis://h/0?password=***"
    assert masked_url("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/0"


def test_a_command_says_which_redis_it_cannot_reach_password_masked(
    env: dict[str, str], tmp_path: Path
) -> None:
    url = "redis://default:s3cret-pw@127.0.0.1:1/0"

    result = cefmp4({**env, "REDIS_URL": url}, "status", cwd=tmp_path, outer_redis=False)

    assert result.returncode == 1
    assert result.stderr.startswith(
        "cefmp4: cannot reach Redis redis://default:***@127.0.0.1:1/0 (from the environment)"
    )
    assert "s3cret-pw" not in result.stderr + result.stdout


async def test_commands_in_the_project_folder_use_the_services_make_run_started(
    pipeline: Processes,
    env: dict[str, str],
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    tmp_path: Path,
) -> None:
    (watch_dir / "a.mp4").write_bytes(os.urandom(MB))
    await wait_completed(log, storage, watch_dir, "a.mp4")
    project = tmp_path / "project"
    (project / ".data").mkdir(parents=True)
    services = project / ".data" / "services.env"
    services.write_text(f"# pid {os.getpid()}\nREDIS_URL={env['REDIS_URL']}\n")
    rest = without_redis(env)

    found = cefmp4(rest, "status", "--json", cwd=project, outer_redis=False)
    services.write_text(f"# pid {dead_pid()}\nREDIS_URL={env['REDIS_URL']}\n")
    stopped = cefmp4({**rest, "REDIS_PORT": "1"}, "status", cwd=project, outer_redis=False)

    assert found.returncode == 0, found.stderr
    assert found.stderr.splitlines() == [
        f"cefmp4: redis {env['REDIS_URL']} (started by `make run`, from .data/services.env)"
    ]
    assert [s["path"] for s in json.loads(found.stdout)["streams"]] == ["a.mp4"]
    # Once `make run` stopped, its file is not followed: here Redis comes from REDIS_PORT.
    assert stopped.returncode == 1
    assert "cannot reach Redis redis://localhost:1/0 (from the environment)" in stopped.stderr


def test_a_redis_in_dot_env_wins_over_make_runs_services(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "services.env").write_text(
        f"# pid {os.getpid()}\nREDIS_URL={env['REDIS_URL']}\n"
    )
    (tmp_path / ".env").write_text("REDIS_URL=redis://127.0.0.1:1/0\n")

    result = cefmp4(without_redis(env), "status", cwd=tmp_path, outer_redis=False)

    assert result.stderr.startswith("cefmp4: cannot reach Redis redis://127.0.0.1:1/0 (from .env)")


def test_each_deployment_has_a_heartbeat_file_of_its_own(tmp_path: Path) -> None:
    def heartbeat(**settings: Any) -> Path:
        return load_settings(_env_file=None, **settings).heartbeat_path

    site = {"redis_url": "redis://h:6379/0", "redis_key_prefix": "a:", "watch_dir": tmp_path}
    one = heartbeat(**site)

    assert heartbeat(**site) == one
    assert heartbeat(**{**site, "redis_key_prefix": "b:"}) != one
    assert heartbeat(**{**site, "watch_dir": tmp_path / "x"}) != one
    assert heartbeat(**{**site, "redis_url": "redis://h:6390/0"}) != one
    assert heartbeat(**site, health_file=tmp_path / "hb") == tmp_path / "hb"


async def test_health_finds_its_deployments_heartbeat_and_tells_exited_from_stuck(
    processes: Processes, env: dict[str, str], tmp_path: Path
) -> None:
    other = {**env, "REDIS_KEY_PREFIX": env["REDIS_KEY_PREFIX"] + "other:"}

    def health(checked: dict[str, str]) -> tuple[int, str]:
        result = cefmp4(checked, "health", cwd=tmp_path, outer_redis=False)
        return result.returncode, (result.stdout + result.stderr).strip()

    consumer = processes.start("consumer")  # HEALTH_FILE left to its default

    async def healthy() -> bool:
        return health(env)[0] == 0

    await eventually(healthy, 30, "the consumer healthy")
    code, said = health(other)
    assert code == 1 and "no heartbeat at" in said, said  # not the other deployment's file

    os.kill(consumer.pid, signal.SIGKILL)
    consumer.wait()
    code, said = health(env)

    assert code == 1
    assert f"(pid {consumer.pid}) is not running: it exited without a clean stop" in said
    assert "stuck" not in said


async def test_status_shows_a_recording_below_one_part_on_disk_and_on_its_way(
    processes: Processes,
    env: dict[str, str],
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    tmp_path: Path,
) -> None:
    processes.start("producer", WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE="4")
    # 4 Mbit/s: its one part of 3 MB takes six seconds to go, long enough to be seen.
    processes.start("consumer", UPLOAD_RATE_LIMIT_MBPS="4", WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE="4")
    recording = watch_dir / "short.mp4"
    recording.write_bytes(os.urandom(3 * MB))
    seen: dict[str, Any] = {}

    def stream_in_status() -> dict[str, Any] | None:
        result = cefmp4(env, "status", "--json", cwd=tmp_path)
        streams = json.loads(result.stdout)["streams"]
        return next((s for s in streams if s["path"] == "short.mp4"), None)

    async def on_disk() -> bool:
        shown = await asyncio.to_thread(stream_in_status)
        return shown is not None and shown["on_disk_bytes"] == 3 * MB

    async def sending() -> bool:
        shown = await asyncio.to_thread(stream_in_status)
        seen.update(shown or {})
        return shown is not None and shown["in_flight_bytes"] > 0

    await eventually(on_disk, 30, "status showing the bytes on disk")
    await eventually(sending, 30, "status showing the part on its way")
    table = cefmp4(env, "status", cwd=tmp_path).stdout
    await wait_completed(log, storage, watch_dir, "short.mp4")

    assert seen["status"] in {"active", "finalizing"} and seen["uploaded_bytes"] == 0
    assert 0 < seen["in_flight_bytes"] <= 3 * MB
    row = next(line for line in table.splitlines() if line.startswith("short.mp4"))
    assert "sending" in row or "100%" in row  # the part may have gone meanwhile
    state = await stream_of(log, "short.mp4")
    assert state is not None and state.status == "completed"


def test_clean_data_refuses_while_services_use_the_data(tmp_path: Path) -> None:
    data = tmp_path / ".data"
    (data / "redis").mkdir(parents=True)
    server = subprocess.Popen(["sleep", "60"], cwd=data / "redis")  # a service working there

    def clean() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "-f", str(ROOT / "Makefile"), "clean-data"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        refused = clean()
    finally:
        server.kill()
        server.wait()
    (data / "services.env").write_text(f"# pid {os.getpid()}\n")
    refused_for_run = clean()
    (data / "services.env").write_text(f"# pid {dead_pid()}\n")
    deleted = clean()

    assert refused.returncode != 0
    assert f"services still use it (pids {server.pid})" in refused.stderr
    assert refused_for_run.returncode != 0
    assert f"(pids {os.getpid()})" in refused_for_run.stderr
    assert deleted.returncode == 0, deleted.stderr
    assert not data.exists()
