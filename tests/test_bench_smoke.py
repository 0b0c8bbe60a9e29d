"""`make bench` cannot rot: the benchmark runs on tiny sizes and reports every case.

No timing is asserted: only that every case produced numbers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ops.cpu_quota import CpuQuota, QuotaUnavailable
from tests.conftest import ROOT

CAPPED = {"scale_out_capped", "scale_out_one_file"}

CASES = {
    "throughput",
    "throughput_with_idle",
    "live_lag_slow",
    "live_lag_fast",
    "streamed_share",
    "scale_out",
    "scale_out_capped",
    "scale_out_one_file",
    "cpu",
    "memory_one_big_file",
    "memory_many_files",
    "log_size",
    "regrowth_sent",
    "regrowth_seconds",
    "fleet",
    "fleet_closed",
    "close_complete_slow",
    "close_complete_fast",
}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _quota_error() -> str | None:
    try:
        CpuQuota(0.5, "probe").remove()
    except QuotaUnavailable as exc:
        return str(exc)
    return None


@pytest.mark.timeout(300)
def test_quick_benchmark_reports_every_case_with_numbers(tmp_path: Path) -> None:
    report_path = tmp_path / "bench.json"

    done = subprocess.run(
        # Half a CPU for the capped consumers, not a tenth: under a tenth, starting each
        # consumer took most of the run (~2 of its 3.5 minutes).
        [
            sys.executable,
            "-m",
            "ops.bench",
            "--quick",
            "--consumer-cpus",
            "0.5",
            "--json",
            str(report_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )

    quota_error = _quota_error()
    assert done.returncode == (0 if quota_error is None else 1), done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert set(report["cases"]) == CASES
    for name, case in report["cases"].items():
        if name in CAPPED and quota_error is not None:
            # A machine without a writable cgroup CPU controller says so, and nothing else.
            assert quota_error.split(":")[0] in case["error"], case["error"]
            continue
        assert case["error"] is None, f"{name}: {case['error']}"
        assert _number(case["value"]), f"{name}: {case['value']!r}"
        assert case["runs"] and all(_number(run) for run in case["runs"]), name
        assert isinstance(case["met"], bool), name
    assert _number(report["machine"]["machine_busy_share"])
    for name in CASES:
        assert name in done.stdout  # the table names every case
