"""A CPU quota for one process, as `docker run --cpus` or a Kubernetes CPU limit sets it.

The benchmark's scale-out case gives each consumer its own quota, so that one consumer is
bounded by its own CPU as on a node of its own, and not by what the other processes of a
small shared machine leave. It needs a writable cgroup CPU controller: cgroup v2 with the
`cpu` controller enabled, or cgroup v1's `cpu` hierarchy (usually as root).
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

PERIOD_US = 100_000
V1_CPU = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")


class QuotaUnavailable(Exception):
    """No writable cgroup CPU controller on this machine."""


class CpuQuota:
    """A cgroup of its own with `cpus` CPUs' worth of time per period; add processes to it."""

    def __init__(self, cpus: float, name: str = "") -> None:
        if cpus <= 0:
            raise ValueError(f"a CPU quota must be positive, not {cpus}")
        self.cpus = cpus
        leaf = f"cefmp4-{name or 'quota'}-{uuid.uuid4().hex[:8]}"
        quota_us = max(1000, round(cpus * PERIOD_US))
        try:
            if (V1_CPU / "cpu.cfs_quota_us").exists():
                self.path = V1_CPU / leaf
                self.path.mkdir()
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota_us))
            elif "cpu" in _words(V2_ROOT / "cgroup.subtree_control"):
                self.path = V2_ROOT / leaf
                self.path.mkdir()
                (self.path / "cpu.max").write_text(f"{quota_us} {PERIOD_US}")
            else:
                raise QuotaUnavailable("no cgroup CPU controller (v1 cpu or v2 cpu.max) found")
        except OSError as exc:
            raise QuotaUnavailable(f"cannot set a CPU quota: {exc}") from exc

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads, and the children it starts later) in."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_s(self) -> float:
        """Seconds the processes in the group were held back by the quota so far."""
        for line in _lines(self.path / "cpu.stat"):
            name, _, value = line.partition(" ")
            if name == "throttled_time":  # v1, nanoseconds
                return int(value) / 1e9
            if name == "throttled_usec":  # v2
                return int(value) / 1e6
        return 0.0

    def remove(self) -> None:
        """Delete the group; its processes must have exited."""
        with contextlib.suppress(OSError):
            self.path.rmdir()


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def _words(path: Path) -> list[str]:
    return " ".join(_lines(path)).split()
