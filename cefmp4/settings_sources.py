"""Which settings a command runs with, and where its Redis came from, to say so.

`make run` starts Redis and S3 on ports of their own and writes where they listen to
`.data/services.env` (ops/local_services.py), with the id of the process that runs them.
A command run from the project folder while they run uses them, unless the environment
names a Redis itself; `.env` still wins over that file, the environment over both.
"""

from __future__ import annotations

import os
from pathlib import Path

from cefmp4.common.config import Settings, load_settings
from cefmp4.common.health import pid_running

# Written by ops/local_services.py (`run --data .data`), relative to the project folder.
LOCAL_SERVICES_ENV = Path(".data") / "services.env"
DOT_ENV = Path(".env")  # pydantic-settings reads it by default too
REDIS_VARIABLES = ("REDIS_URL", "REDIS_HOST", "REDIS_PORT")


def running_services_file(path: Path = LOCAL_SERVICES_ENV) -> Path | None:
    """`path` if the `make run` that wrote it still runs; else None."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    pids = [line.split()[-1] for line in lines if line.startswith("# pid ")]
    if not pids or not pids[0].isdigit():
        return None
    return path if pid_running(int(pids[0])) else None


def load() -> tuple[Settings, str]:
    """The settings, and where the Redis they name came from (said at start)."""
    if any(name in os.environ for name in REDIS_VARIABLES):
        return load_settings(), "from the environment"
    settings = load_settings()
    if settings.model_fields_set & {name.lower() for name in REDIS_VARIABLES}:
        return settings, "from .env"
    services = running_services_file()
    if services is not None:
        settings = load_settings(_env_file=(services, DOT_ENV))
        return settings, f"started by `make run`, from {services}"
    return settings, "the default; set REDIS_URL to use another"
