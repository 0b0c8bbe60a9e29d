"""The images built and run with podman against the tests' Redis and S3 (see tests/podman.py)."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cefmp4.common.eventlog import EventLog
from cefmp4.common.s3 import Storage
from ops.deployment import DeploymentEnv
from tests.conftest import ROOT, eventually
from tests.podman import build_images, podman, podman_env, why_podman_cannot_run
from tests.test_pipeline import wait_completed

_WHY_NOT = why_podman_cannot_run()
pytestmark = [
    pytest.mark.podman,
    pytest.mark.skipif(_WHY_NOT is not None, reason=f"podman cannot run here: {_WHY_NOT}"),
    # The first run makes the base image (about 2 min) and builds both images.
    pytest.mark.timeout(900),
]
UID = "10001"


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    return build_images()


class Containers:
    """Containers a test started, each removed at its end."""

    def __init__(self, deployment: DeploymentEnv) -> None:
        self.deployment = deployment
        self.token = uuid.uuid4().hex[:8]
        self.names: list[str] = []

    def start(self, role: str, image: str) -> str:
        name = f"cefmp4-test-{self.token}-{role}"
        variables = {**self.deployment.variables(), "WATCH_DIR": "/recordings"}
        env_args = [arg for key, value in variables.items() for arg in ("--env", f"{key}={value}")]
        self.names.append(name)  # removed at the end even if it fails to start
        podman(
            "run",
            "--detach",
            "--name",
            name,
            "--init",
            "--network",
            "host",
            "--volume",
            f"{self.deployment.watch_dir}:/recordings:ro",
            *env_args,
            image,
        )
        return name

    def logs(self, name: str) -> str:
        result = podman("logs", name, check=False)
        return result.stdout + result.stderr

    def remove_all(self) -> None:
        for name in self.names:
            podman("rm", "--force", "--time", "0", name, check=False)


@pytest.fixture
def containers(deployment_env: DeploymentEnv) -> Iterator[Containers]:
    deployment_env.watch_dir.chmod(0o755)  # the images run as uid 10001; pytest's is 0700
    started = Containers(deployment_env)
    yield started
    started.remove_all()


def record(path: Path, mib: int) -> None:
    with path.open("wb") as recording:
        for _ in range(mib):
            recording.write(os.urandom(1024 * 1024))
            recording.flush()


async def healthy(name: str) -> bool:
    result = await asyncio.to_thread(podman, "healthcheck", "run", name, check=False)
    return result.returncode == 0


async def test_images_record_into_s3_as_non_root_healthy_and_stop_cleanly(
    images: dict[str, str],
    containers: Containers,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
) -> None:
    started = {role: containers.start(role, image) for role, image in images.items()}
    # Written after both started: the producer sees it grow, the consumer streams it.
    record(watch_dir / "cam1.mp4", mib=12)

    await wait_completed(log, storage, watch_dir, "cam1.mp4", timeout_s=90)

    for role, name in started.items():
        await eventually(functools.partial(healthy, name), 60, f"{role} healthy")
        users = podman("top", name, "huser").stdout.split()[1:]
        assert users and set(users) == {UID}, f"{role} runs as {users}\n{containers.logs(name)}"
        assert podman("exec", name, "id", "-u").stdout.strip() == UID
        podman("stop", "--time", "30", name, timeout=60)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0", f"{role} exited {code} on SIGTERM\n{containers.logs(name)}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Compose:
    """docker-compose.yml itself, driven by podman-compose in a folder of its own.

    The folder holds the compose file as it is, a .env from this test's deployment (its
    Redis and, in MinIO's place, its S3) and an override that puts the two roles on the
    host network, where those services listen.
    """

    def __init__(self, deployment: DeploymentEnv, folder: Path) -> None:
        folder.mkdir()
        shutil.copy(ROOT / "docker-compose.yml", folder / "docker-compose.yml")
        variables = {
            key: value for key, value in deployment.variables().items() if key != "WATCH_DIR"
        }
        lines = [f"{key}={value}" for key, value in variables.items()]
        (folder / ".env").write_text("\n".join(lines) + "\n")
        # On the host network each role needs a metrics port of its own.
        (folder / "override.yml").write_text(
            "services:\n"
            + "".join(
                f"  {role}:\n    network_mode: host\n"
                f"    environment:\n      METRICS_PORT: '{free_port()}'\n"
                for role in ("producer", "consumer")
            )
        )
        self.folder = folder
        self.project = f"cefmp4t{uuid.uuid4().hex[:8]}"
        self.env = {**podman_env(), **variables, "RECORDINGS_DIR": str(deployment.watch_dir)}

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [
            str(Path(sys.executable).parent / "podman-compose"),
            "--project-name",
            self.project,
            "--file",
            "docker-compose.yml",
            "--file",
            "override.yml",
            *args,
        ]
        return subprocess.run(
            command,
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture
def compose(deployment_env: DeploymentEnv, tmp_path: Path) -> Iterator[Compose]:
    deployment_env.watch_dir.chmod(0o755)
    project = Compose(deployment_env, tmp_path / "compose")
    yield project
    project.run("down", "--timeout", "0")


async def test_docker_compose_runs_the_two_roles_against_other_services(
    images: dict[str, str],
    compose: Compose,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    deployment_env: DeploymentEnv,
) -> None:
    config = compose.run("config")
    assert config.returncode == 0, config.stderr
    services = yaml.safe_load(config.stdout)["services"]
    for role in ("producer", "consumer"):
        assert services[role]["network_mode"] == "host"
        environment = services[role]["environment"]
        assert environment["S3_ENDPOINT_URL"] == deployment_env.s3_endpoint_url
        assert environment["REDIS_URL"] == deployment_env.redis_url

    # What the README says for one's own Redis and S3: only the two roles.
    up = compose.run("up", "--detach", "--no-build", "--no-deps", "producer", "consumer")
    assert up.returncode == 0, up.stdout + up.stderr
    record(watch_dir / "cam2.mp4", mib=7)

    try:
        await wait_completed(log, storage, watch_dir, "cam2.mp4", timeout_s=90)
    except BaseException:
        logs = compose.run("logs")
        print(up.stdout, up.stderr, logs.stdout, logs.stderr)  # shown with the failure
        raise
    names = podman(
        "ps",
        "--filter",
        f"label=io.podman.compose.project={compose.project}",
        "--format",
        "{{.Names}}",
    ).stdout.split()
    assert len(names) == 2, names
    for name in names:
        await eventually(functools.partial(healthy, name), 60, f"{name} healthy")
