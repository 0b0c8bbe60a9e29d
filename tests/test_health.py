"""`cefmp4 health`, the containers' HEALTHCHECK: Redis answers and the event loop turns."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ops.local_services import free_port
from tests.conftest import Processes, eventually
from tests.test_cli import cefmp4


def test_health_fails_at_once_when_redis_is_unreachable(
    env: dict[str, str], tmp_path: Path
) -> None:
    heartbeat = tmp_path / "heartbeat"
    heartbeat.touch()  # fresh: only Redis can be the reason
    unreachable = {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}

    result = cefmp4({**unreachable, "HEALTH_FILE": str(heartbeat)}, "health", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"unhealthy: redis {unreachable['REDIS_URL']} does not answer (ConnectionError)"
    ]


async def test_health_follows_the_heartbeat_of_a_running_consumer(
    processes: Processes, env: dict[str, str], tmp_path: Path
) -> None:
    heartbeat = tmp_path / "heartbeat"
    checked = {**env, "HEALTH_FILE": str(heartbeat)}

    def health() -> tuple[int, str]:
        result = cefmp4(checked, "health", cwd=tmp_path)
        return result.returncode, (result.stdout + result.stderr).strip()

    assert health()[0] == 1  # nothing running yet: no heartbeat
    consumer = processes.start("consumer", HEALTH_FILE=str(heartbeat))

    async def beating() -> bool:
        return heartbeat.exists()

    await eventually(beating, 30, "the consumer's first heartbeat")
    code, said = health()
    assert code == 0, said
    assert said.startswith(f"healthy: redis {env['REDIS_URL']} answers, heartbeat")

    # A stopped process stands for a stuck event loop; its last beat is made old rather
    # than waited for.
    os.kill(consumer.pid, signal.SIGSTOP)
    try:
        old = time.time() - 120
        os.utime(heartbeat, (old, old))
        code, said = health()
        assert code == 1
        assert said.startswith("unhealthy: heartbeat 12")
        assert said.endswith("s old, the event loop is stuck")
    finally:
        os.kill(consumer.pid, signal.SIGCONT)

    async def healthy_again() -> bool:
        return health()[0] == 0

    await eventually(healthy_again, 30, "health back once the loop turns again")
    processes.stop_all()
    assert consumer.returncode == 0
    assert health()[0] == 1  # a clean stop removes the heartbeat
