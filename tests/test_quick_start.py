"""The README's quick start, run as a new user runs it: `make run` in the project folder, a
recording dropped into ./recordings, `make status` in another shell, SIGINT to `make run`,
then `make clean-data`."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import boto3
from botocore.config import Config

from tests.conftest import ROOT, eventually

# Not copied: what a fresh checkout does not have; .venv is linked, not built again.
LEFT_OUT = shutil.ignore_patterns(
    ".venv", ".data", "recordings", ".git", "*.egg-info", "__pycache__", ".*_cache", ".env"
)


def quick_start_commands() -> list[str]:
    """The commands of the README's Quick start, comments removed, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def new_user_environment() -> dict[str, str]:
    """The tests' environment without any cefmp4 or service setting."""
    ours = re.compile(r"^(REDIS_|S3_|WATCH_|STREAM_|UPLOAD_|HEALTH_|METRICS_|AWS_)")
    return {k: v for k, v in os.environ.items() if not ours.match(k) and k != "PYTHONPATH"}


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def start(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)


def refused(url: str) -> bool:
    host, port = re.findall(r"//([^:/]+):(\d+)", url)[0]
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_the_quick_start_as_written(tmp_path: Path) -> None:
    commands = quick_start_commands()
    assert commands[:3] == ["make run", "make test", "make status"]
    project = tmp_path / "cefmp4"
    shutil.copytree(ROOT, project, ignore=LEFT_OUT, symlinks=True)  # mtimes kept: no rebuild
    (project / ".venv").symlink_to(ROOT / ".venv")
    env = new_user_environment()
    make_run = start(commands[0].split(), project, env, tmp_path / "make-run.log")
    try:

        async def started() -> bool:
            assert make_run.poll() is None, (tmp_path / "make-run.log").read_text()
            return "drop recordings into" in (tmp_path / "make-run.log").read_text()

        await eventually(started, 120, "`make run` ready")
        recording = os.urandom(12 * 1024 * 1024)
        (project / "recordings" / "cam1").mkdir(parents=True)
        (project / "recordings" / "cam1" / "rec.mp4").write_bytes(recording)
        shown: list[str] = []

        async def completed_in_status() -> bool:
            result = await asyncio.to_thread(run, commands[2].split(), project, env)
            shown[:] = [line for line in result.stdout.splitlines() if "cam1/rec.mp4" in line]
            return bool(shown) and "completed" in shown[0]

        await eventually(completed_in_status, 90, "`make status` showing the recording done")
        own = await asyncio.to_thread(run, [".venv/bin/cefmp4", "status"], project, env)
        health = await asyncio.to_thread(run, [".venv/bin/cefmp4", "health"], project, env)
        services = dict(
            line.split("=", 1)
            for line in (project / ".data" / "services.env").read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
        s3 = boto3.client(
            "s3",
            endpoint_url=services["S3_ENDPOINT_URL"],
            aws_access_key_id="cefmp4",  # as the README says
            aws_secret_access_key="cefmp4-local-secret",
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )
        stored = s3.get_object(Bucket="recordings", Key="cam1/rec.mp4")["Body"].read()

        make_run.send_signal(signal.SIGINT)  # to make's own process, not its group
        code = await asyncio.to_thread(make_run.wait, 60)
    finally:
        if make_run.poll() is None:
            make_run.terminate()  # make passes SIGTERM on to its recipe
            make_run.wait(30)
    cleaned = await asyncio.to_thread(run, ["make", "clean-data"], project, env)

    assert "[##########] 100%" in shown[0]
    assert "cam1/rec.mp4" in own.stdout, own.stderr
    assert "(started by `make run`, from .data/services.env)" in own.stderr
    assert health.returncode == 0, health.stderr  # it finds `make run`'s heartbeat
    assert stored == recording
    log = (tmp_path / "make-run.log").read_text()
    assert code != 0 and "SIGINT: stopping" in log, log[-2000:]
    assert refused(services["REDIS_URL"]) and refused(services["S3_ENDPOINT_URL"])
    assert cleaned.returncode == 0, cleaned.stderr
    assert not (project / ".data").exists()
