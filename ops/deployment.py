"""The cefmp4 processes of one deployment: started, watched, signalled, restarted, stopped.

A deployment is a set of ``python -m producer`` / ``python -m consumer`` processes, as the
containers run them, that share one environment: a WATCH_DIR, a Redis key prefix, a bucket.
Each process runs in its own session with its output in a log file of its own. The
benchmark (``ops/bench``), the chaos run (``ops/chaos.py``) and the tests' fixtures all
start cefmp4 this way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project_pythonpath(environ: Mapping[str, str]) -> str:
    """`environ`'s PYTHONPATH with the project first: ``python -m producer`` from any cwd."""
    others = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)]
    return os.pathsep.join([str(ROOT), *others])


@dataclass(frozen=True)
class DeploymentEnv:
    """What every process of one deployment is told: where to watch, log and upload."""

    watch_dir: Path
    redis_url: str
    s3_endpoint_url: str
    s3_access_key: str
    s3_secret_key: str
    bucket: str
    key_prefix: str | None = None  # None: cefmp4's default
    settings: Mapping[str, str] = field(default_factory=dict)  # any other cefmp4 variables

    def variables(self) -> dict[str, str]:
        """The environment variables that say all this to a cefmp4 process."""
        variables = {
            "WATCH_DIR": str(self.watch_dir),
            "REDIS_URL": self.redis_url,
            "S3_ENDPOINT_URL": self.s3_endpoint_url,
            "S3_ACCESS_KEY_ID": self.s3_access_key,
            "S3_SECRET_ACCESS_KEY": self.s3_secret_key,
            "S3_BUCKET_NAME": self.bucket,
        }
        if self.key_prefix is not None:
            variables["REDIS_KEY_PREFIX"] = self.key_prefix
        return {**variables, **self.settings}


@dataclass(frozen=True)
class RoleProcess:
    """One started process and how it was started, so that it can be started again."""

    name: str  # "producer", "consumer1", ...: a later start under this name replaces it
    role: str  # what runs: `python -m role`
    process: subprocess.Popen[bytes]
    log_path: Path
    prefix: tuple[str, ...]
    extra_env: Mapping[str, str]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class Deployment:
    """The processes started on one `DeploymentEnv`; `stop_all` stops every one of them.

    Their logs and working directory are `log_dir` (so no stray .env is read). A name
    stands for the latest process started under it; restarting starts another.
    """

    def __init__(self, env: DeploymentEnv, log_dir: Path, stop_timeout_s: float = 15.0) -> None:
        self.env = env
        self.log_dir = log_dir
        self.stop_timeout_s = stop_timeout_s
        self._all: list[RoleProcess] = []
        self._latest: dict[str, RoleProcess] = {}

    @property
    def started(self) -> list[subprocess.Popen[bytes]]:
        """Every process started, in that order."""
        return [p.process for p in self._all]

    def start(
        self, role: str, *, name: str = "", prefix: tuple[str, ...] = (), **extra_env: str
    ) -> subprocess.Popen[bytes]:
        """Start `python -m role` as `name` (the role by default) with `extra_env` added.

        `prefix` is a command to run it under (e.g. setpriv).
        """
        name = name or role
        log_path = self.log_dir / f"{len(self._all)}-{name}.log"
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [*prefix, sys.executable, "-m", role],
                env={
                    **os.environ,
                    "PYTHONPATH": project_pythonpath(os.environ),
                    **self.env.variables(),
                    **extra_env,
                },
                cwd=self.log_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = RoleProcess(name, role, process, log_path, prefix, extra_env)
        self._all.append(started)
        self._latest[name] = started
        return process

    def processes(self) -> list[RoleProcess]:
        """The latest process of every name, in the order the names were first started."""
        return list(self._latest.values())

    def exited(self) -> list[RoleProcess]:
        """The latest processes that are no longer running."""
        return [p for p in self._latest.values() if not p.alive]

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send `sig` to `name`, wait for it to exit (SIGKILL after the timeout); its exit code."""
        process = self._latest[name].process
        if process.poll() is None:
            process.send_signal(sig)
        return self._wait_or_kill(process)

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send `sig` to `name` if it runs, without waiting (SIGSTOP, SIGCONT)."""
        process = self._latest[name].process
        if process.poll() is None:
            process.send_signal(sig)

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start `name` again as it was started; stop it first if it still runs."""
        old = self._latest[name]
        if old.alive:
            self.stop(name)
        return self.start(old.role, name=name, prefix=old.prefix, **old.extra_env)

    def stop_all(self) -> None:
        """SIGTERM every process still running, then wait for each (SIGKILL after the timeout)."""
        for started in self._all:
            if started.alive:
                started.process.send_signal(signal.SIGTERM)
        for started in self._all:
            self._wait_or_kill(started.process)

    def _wait_or_kill(self, process: subprocess.Popen[bytes]) -> int:
        try:
            return process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def log_tail(self, name: str, lines: int = 15) -> str:
        """The last `lines` lines of `name`'s log."""
        try:
            text = self._latest[name].log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def output(self, chars: int = 4000) -> str:
        """The end of every process's log, in the order started, for a failing check's message."""
        return "\n".join(
            f"--- {p.log_path.name}\n{p.log_path.read_text(errors='replace')[-chars:]}"
            for p in self._all
        )
