"""The results: each metric against its goal, the table, and the machine they were taken on."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.bench.s5cmd import S5cmd

# cefmp4 settings the benchmark leaves to the environment (recorded in the JSON).
TUNABLE_SETTINGS = ("STREAM_CHUNK_SIZE_MB", "UPLOAD_CONCURRENCY", "METADATA_SIDECAR")


@dataclass
class Metric:
    name: str
    what: str
    unit: str
    goal_op: str  # "<=" or ">="
    goal: float
    runs: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def value(self) -> float | None:
        return statistics.median(self.runs) if self.runs and self.error is None else None

    @property
    def met(self) -> bool | None:
        value = self.value
        if value is None:
            return None
        return value <= self.goal if self.goal_op == "<=" else value >= self.goal

    def as_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "value": self.value,
            "unit": self.unit,
            "goal": f"{self.goal_op} {self.goal:g}",
            "met": self.met,
            "runs": self.runs,
            "details": self.details,
            "error": self.error,
        }


def render_table(metrics: list[Metric]) -> str:
    rows = [("case", "median", "goal", "met", "runs")]
    for m in metrics:
        value = m.value
        rows.append(
            (
                m.name,
                f"{value:.2f} {m.unit}" if value is not None else "error",
                f"{m.goal_op} {m.goal:g} {m.unit}",
                {True: "yes", False: "NO", None: "-"}[m.met],
                " ".join(f"{r:.2f}" for r in m.runs),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def machine_info(s5cmd: S5cmd) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "s5cmd": s5cmd.version(),
        "ffprobe": shutil.which("ffprobe") is not None,
        "settings_from_environment": {
            name: os.environ[name] for name in TUNABLE_SETTINGS if name in os.environ
        },
    }
