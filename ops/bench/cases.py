"""The cases: which runs each makes, and the metrics, with their goals, it makes of them."""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ops.bench.errors import BenchError
from ops.bench.report import Metric
from ops.bench.runs import (
    FLEET_PART_MIB,
    REGROWTH_PART_MIB,
    cefmp4_close,
    cefmp4_fleet,
    cefmp4_live,
    cefmp4_moved_in,
    cefmp4_regrowth,
    s5cmd_upload,
)
from ops.bench.sizes import MIB, Live, format_size
from ops.bench.workspace import Bench

CASES = (
    "throughput",
    "live-lag",
    "streamed-share",
    "scale-out",
    "cpu",
    "memory",
    "log-size",
    "regrowth",
    "fleet",
    "close-complete",
)


def _median_of(runs: list[dict[str, float]], name: str) -> float:
    return statistics.median(r[name] for r in runs)


def case_throughput(bench: Bench, metrics: dict[str, Metric]) -> None:
    sz = bench.sizes
    cef_runs: list[dict[str, float]] = []
    s5_runs: list[dict[str, float]] = []
    with bench.files("tp", sz.throughput_files, sz.throughput_file_bytes) as sources:
        for i in range(sz.repeat):
            # Alternate who goes first, so a busy phase of the machine hits both alike.
            if i % 2:
                s5_runs.append(s5cmd_upload(bench, sources))
                cef_runs.append(cefmp4_moved_in(bench, f"throughput{i}", sources))
            else:
                cef_runs.append(cefmp4_moved_in(bench, f"throughput{i}", sources))
                s5_runs.append(s5cmd_upload(bench, sources))
            _progress(
                f"throughput {i + 1}/{sz.repeat}: cefmp4 {cef_runs[-1]['seconds']:.2f} s, "
                f"s5cmd {s5_runs[-1]['seconds']:.2f} s"
            )
    files = f"{sz.throughput_files} x {format_size(sz.throughput_file_bytes)}"
    if "throughput_with_idle" in metrics:
        _throughput_with_idle(bench, metrics["throughput_with_idle"], s5_runs, files)
    if "throughput" in metrics:
        m = metrics["throughput"]
        m.runs = [c["seconds"] / s["seconds"] for c, s in zip(cef_runs, s5_runs, strict=True)]
        m.details = {
            "files": files,
            "cefmp4_seconds": [c["seconds"] for c in cef_runs],
            "cefmp4_seconds_with_idle": [c["seconds_with_idle"] for c in cef_runs],
            "s5cmd_seconds": [s["seconds"] for s in s5_runs],
            "cefmp4_mib_s": _median_of(cef_runs, "mib_s"),
            "s5cmd_mib_s": _median_of(s5_runs, "mib_s"),
            "idle_s_subtracted": sz.idle_s,
        }
    if "cpu" in metrics:
        m = metrics["cpu"]
        m.runs = [
            c["cpu_s_per_gib"] / s["cpu_s_per_gib"] for c, s in zip(cef_runs, s5_runs, strict=True)
        ]
        m.details = {
            "files": files,
            "cefmp4_cpu_s_per_gib": [c["cpu_s_per_gib"] for c in cef_runs],
            "of_which_producer": [c["producer_cpu_s_per_gib"] for c in cef_runs],
            "s5cmd_cpu_s_per_gib": [s["cpu_s_per_gib"] for s in s5_runs],
        }


def _throughput_with_idle(
    bench: Bench, m: Metric, s5_runs: list[dict[str, float]], files: str
) -> None:
    """The same files with a site's idle setting counted in: a file moved in whole is
    finished by its move, not by the timer."""
    sz = bench.sizes
    runs: list[dict[str, float]] = []
    with bench.files("tp", sz.throughput_files, sz.throughput_file_bytes) as sources:
        for i in range(sz.repeat):
            runs.append(
                cefmp4_moved_in(
                    bench,
                    f"throughput-idle{i}",
                    sources,
                    idle_s=sz.site_idle_s,
                    finalize_on_close=True,
                )
            )
            _progress(
                f"throughput, idle {sz.site_idle_s:g} s counted in, {i + 1}/{sz.repeat}: "
                f"cefmp4 {runs[-1]['seconds_with_idle']:.2f} s"
            )
    m.runs = [c["seconds_with_idle"] / s["seconds"] for c, s in zip(runs, s5_runs, strict=True)]
    m.details = {
        "files": files,
        "cefmp4_seconds_with_idle": [c["seconds_with_idle"] for c in runs],
        "s5cmd_seconds": [s["seconds"] for s in s5_runs],
        "idle_s": sz.site_idle_s,
        "finalize_on_close": True,
    }


def case_live(bench: Bench, metrics: dict[str, Metric]) -> None:
    sz = bench.sizes
    want_fast = "live_lag_fast" in metrics
    pool_size = max(sz.slow_live.size_bytes, sz.fast_live.size_bytes if want_fast else 0)
    slow: list[dict[str, float]] = []
    fast: list[dict[str, float]] = []
    with bench.pool(pool_size) as pool:
        for i in range(sz.repeat):
            slow.append(cefmp4_live(bench, f"live-slow{i}", sz.slow_live, pool))
            _progress(
                f"live {sz.slow_live.label()} {i + 1}/{sz.repeat}: lag {slow[-1]['lag_s']:.2f} s, "
                f"{slow[-1]['uploaded_mib_when_writer_stopped']:.0f} MiB streamed"
            )
            if want_fast:
                fast.append(cefmp4_live(bench, f"live-fast{i}", sz.fast_live, pool))
                _progress(
                    f"live {sz.fast_live.label()} {i + 1}/{sz.repeat}: "
                    f"lag {fast[-1]['lag_s']:.2f} s, "
                    f"{fast[-1]['uploaded_mib_when_writer_stopped']:.0f} MiB streamed"
                )
    for name, live, runs in (
        ("live_lag_slow", sz.slow_live, slow),
        ("live_lag_fast", sz.fast_live, fast),
    ):
        if name in metrics and runs:
            metrics[name].runs = [r["lag_s"] for r in runs]
            metrics[name].details = _live_details(live, runs, sz.idle_s)
    if "streamed_share" in metrics:
        m = metrics["streamed_share"]
        m.runs = [r["uploaded_mib_when_writer_stopped"] for r in slow]
        m.details = _live_details(sz.slow_live, slow, sz.idle_s)
        m.details["file_mib"] = sz.slow_live.size_bytes / MIB


def _live_details(live: Live, runs: list[dict[str, float]], idle_s: float) -> dict[str, Any]:
    return {
        "file": live.label(),
        "lag_with_idle_s": [r["lag_with_idle_s"] for r in runs],
        "uploaded_mib_when_writer_stopped": [r["uploaded_mib_when_writer_stopped"] for r in runs],
        "write_rate_mib_s": [r["write_rate_mib_s"] for r in runs],
        "cpu_s_per_gib": _median_of(runs, "cpu_s_per_gib"),
        "consumer_peak_rss_mb": max(r["consumer_peak_rss_mb"] for r in runs),
        "idle_s_subtracted": idle_s,
    }


def case_scale_out(bench: Bench, metrics: dict[str, Metric]) -> None:
    sz = bench.sizes
    cpus = bench.consumer_cpus
    if "scale_out" in metrics:
        with bench.files("scale", sz.scale_files, sz.scale_file_bytes) as sources:
            _scale_out(bench, metrics["scale_out"], "scale", sources, None)
    if "scale_out_capped" in metrics:
        with bench.files("scalecap", sz.scale_files, sz.scale_capped_file_bytes) as sources:
            _scale_out(bench, metrics["scale_out_capped"], "cap", sources, cpus)
    if "scale_out_one_file" in metrics:
        with bench.files("scalebig", 1, sz.scale_big_file_bytes) as sources:
            _scale_out(bench, metrics["scale_out_one_file"], "big", sources, cpus)


def _scale_out(
    bench: Bench, m: Metric, label: str, sources: list[Path], cpus: float | None
) -> None:
    """Seconds with 1 consumer over seconds with 2, alternating which goes first."""
    one: list[dict[str, float]] = []
    two: list[dict[str, float]] = []
    for i in range(bench.sizes.repeat):
        order = (1, 2) if i % 2 == 0 else (2, 1)
        for consumers in order:
            try:
                result = cefmp4_moved_in(bench, f"{label}{consumers}c{i}", sources, consumers, cpus)
            except BenchError as exc:  # the other scale-out measures still run
                m.error = str(exc)
                _progress(f"{m.name} failed: {exc}")
                return
            (one if consumers == 1 else two).append(result)
        _progress(
            f"{m.name} {i + 1}/{bench.sizes.repeat}: 1 consumer {one[-1]['seconds']:.2f} s, "
            f"2 consumers {two[-1]['seconds']:.2f} s"
        )
    m.runs = [a["seconds"] / b["seconds"] for a, b in zip(one, two, strict=True)]
    m.details = {
        "files": f"{len(sources)} x {format_size(sources[0].stat().st_size)}",
        "cpus_per_consumer": cpus if cpus is not None else "no quota: the machine's, shared",
        "one_consumer_seconds": [r["seconds"] for r in one],
        "two_consumers_seconds": [r["seconds"] for r in two],
        "one_consumer_mib_s": _median_of(one, "mib_s"),
        "two_consumers_mib_s": _median_of(two, "mib_s"),
        # 0.5: both consumers did the same work; 1.0: one did everything.
        "two_consumers_busiest_cpu_share": [r["busiest_consumer_cpu_share"] for r in two],
        "one_consumer_throttled_s": [r["quota_throttled_s"] for r in one],
        "two_consumers_throttled_s": [r["quota_throttled_s"] for r in two],
        "cpus": os.cpu_count(),
    }


def case_memory(bench: Bench, metrics: dict[str, Metric]) -> None:
    sz = bench.sizes
    big: list[dict[str, float]] = []
    many: list[dict[str, float]] = []
    with bench.files("big", 1, sz.big_file_bytes) as sources:
        for i in range(sz.repeat):
            big.append(cefmp4_moved_in(bench, f"memory-big{i}", sources))
            _progress(
                f"memory {format_size(sz.big_file_bytes)} {i + 1}/{sz.repeat}: "
                f"{big[-1]['consumer_peak_rss_mb']:.0f} MB"
            )
    with bench.files("many", sz.many_files, sz.many_file_bytes) as sources:
        for i in range(sz.repeat):
            many.append(cefmp4_moved_in(bench, f"memory-many{i}", sources))
            _progress(
                f"memory {sz.many_files} files {i + 1}/{sz.repeat}: "
                f"{many[-1]['consumer_peak_rss_mb']:.0f} MB"
            )
    for name, runs, files in (
        ("memory_one_big_file", big, f"1 x {format_size(sz.big_file_bytes)} moved in"),
        (
            "memory_many_files",
            many,
            f"{sz.many_files} x {format_size(sz.many_file_bytes)} moved in",
        ),
    ):
        m = metrics[name]
        m.runs = [r["consumer_peak_rss_mb"] for r in runs]
        m.details = {"files": files, "seconds": [r["seconds"] for r in runs]}


def case_log_size(bench: Bench, metrics: dict[str, Metric]) -> None:
    sz = bench.sizes
    runs: list[dict[str, float]] = []
    with bench.pool(sz.log_live.size_bytes) as pool:
        for i in range(sz.repeat):
            runs.append(cefmp4_live(bench, f"logsize{i}", sz.log_live, pool, sz.log_part_mib))
            _progress(
                f"log size {i + 1}/{sz.repeat}: {runs[-1]['redis_mb_per_gib']:.2f} MB/GiB, "
                f"{runs[-1]['events_per_gib']:.0f} events/GiB"
            )
    m = metrics["log_size"]
    m.runs = [r["redis_mb_per_gib"] for r in runs]
    m.details = {
        "file": f"{sz.log_live.label()}, {sz.log_part_mib} MiB parts",
        "events_per_gib": [r["events_per_gib"] for r in runs],
        "redis_bytes_added": [r["redis_bytes_added"] for r in runs],
        "measured": "MEMORY USAGE of every key under the run's prefix, after minus before",
    }


def case_regrowth(bench: Bench, metrics: dict[str, Metric]) -> None:
    sz = bench.sizes
    runs: list[dict[str, float]] = []
    with bench.pool(sz.regrowth_bytes + sz.regrowth_added_bytes) as pool:
        for i in range(sz.repeat):
            runs.append(cefmp4_regrowth(bench, f"regrowth{i}", pool))
            _progress(
                f"regrowth {i + 1}/{sz.repeat}: {runs[-1]['sent_again_mib']:.2f} MiB sent again, "
                f"{runs[-1]['copied_mib']:.0f} MiB copied, updated "
                f"{runs[-1]['seconds']:.2f} s after the idle setting"
            )
    details = {
        "file": f"{format_size(sz.regrowth_bytes)} completed, then "
        f"{format_size(sz.regrowth_added_bytes)} more; {REGROWTH_PART_MIB} MiB parts",
        "sent_again_mib": [r["sent_again_mib"] for r in runs],
        "copied_mib": [r["copied_mib"] for r in runs],
        "seconds_with_idle": [r["seconds_with_idle"] for r in runs],
        "first_upload_seconds": [r["first_upload_seconds"] for r in runs],
        "idle_s_subtracted": sz.idle_s,
    }
    if "regrowth_sent" in metrics:
        metrics["regrowth_sent"].runs = [r["sent_again_mib"] for r in runs]
        metrics["regrowth_sent"].details = details
    if "regrowth_seconds" in metrics:
        metrics["regrowth_seconds"].runs = [r["seconds"] for r in runs]
        metrics["regrowth_seconds"].details = details


def case_fleet(bench: Bench, metrics: dict[str, Metric]) -> None:
    sz = bench.sizes
    files = (
        f"{sz.fleet_files} x {format_size(sz.fleet_file_bytes)} written together over "
        f"{sz.fleet_write_s:g} s; 2 consumers, {FLEET_PART_MIB} MiB parts, "
        f"idle at {sz.fleet_idle_s:g} s"
    )
    with bench.pool(sz.fleet_file_bytes) as pool:
        for m, closes, after in (
            (metrics.get("fleet"), False, "the idle setting"),
            (metrics.get("fleet_closed"), True, "the close"),
        ):
            if m is None:
                continue
            runs: list[dict[str, float]] = []
            for i in range(sz.repeat):
                runs.append(cefmp4_fleet(bench, f"{m.name}{i}", pool, finalize_on_close=closes))
                _progress(
                    f"{m.name} {i + 1}/{sz.repeat}: complete after {after}: median "
                    f"{runs[-1]['p50_s']:.2f} s, p95 {runs[-1]['p95_s']:.2f} s, "
                    f"max {runs[-1]['max_s']:.2f} s"
                )
            m.runs = [r["p95_s"] for r in runs]
            measured = (
                "object complete - the file's last write (its close follows at once)"
                if closes
                else "object complete - the file's last write - the idle setting"
            )
            m.details = {
                "files": files,
                "closes": "on" if closes else "off",
                "median_s": [r["p50_s"] for r in runs],
                "max_s": [r["max_s"] for r in runs],
                "measured": measured,
            }


def case_close(bench: Bench, metrics: dict[str, Metric]) -> None:
    sz = bench.sizes
    lives = [
        (m, live)
        for m, live in (
            (metrics.get("close_complete_slow"), sz.close_slow),
            (metrics.get("close_complete_fast"), sz.close_fast),
        )
        if m is not None
    ]
    with bench.pool(max(live.size_bytes for _, live in lives)) as pool:
        for m, live in lives:
            runs = []
            for i in range(sz.repeat):
                runs.append(cefmp4_close(bench, f"{m.name}{i}", live, pool))
                _progress(
                    f"close {live.label()} {i + 1}/{sz.repeat}: "
                    f"complete {runs[-1]['close_to_complete_s']:.2f} s after close()"
                )
            m.runs = [r["close_to_complete_s"] for r in runs]
            m.details = {
                "file": live.label(),
                "idle_s": sz.close_idle_s,
                "write_rate_mib_s": [r["write_rate_mib_s"] for r in runs],
                "unsent_mib_at_close": [r["unsent_mib_at_close"] for r in runs],
                "measured": "close() returned -> stream completed in the projected state",
            }


def new_metrics(cases: list[str]) -> dict[str, Metric]:
    all_metrics = [
        ("throughput", Metric("throughput", "time / s5cmd's, files moved in", "x", "<=", 1.0)),
        (
            "throughput",
            Metric("throughput_with_idle", "same, idle 5 s counted in, closes on", "x", "<=", 1.0),
        ),
        ("live-lag", Metric("live_lag_slow", "lag after last write, 8 MiB/s", "s", "<=", 1.0)),
        ("live-lag", Metric("live_lag_fast", "lag after last write, 64 MiB/s", "s", "<=", 1.0)),
        ("streamed-share", Metric("streamed_share", "in S3 when writer stops", "MiB", ">=", 44)),
        ("scale-out", Metric("scale_out", "2 consumers vs 1, shared cores", "x", ">=", 1.6)),
        ("scale-out", Metric("scale_out_capped", "2 consumers vs 1, CPU quota", "x", ">=", 1.6)),
        ("scale-out", Metric("scale_out_one_file", "same, one big file", "x", ">=", 1.6)),
        ("cpu", Metric("cpu", "CPU per GiB / s5cmd's", "x", "<=", 1.5)),
        ("memory", Metric("memory_one_big_file", "consumer peak RSS, 1 file", "MB", "<=", 150)),
        ("memory", Metric("memory_many_files", "consumer peak RSS, many files", "MB", "<=", 150)),
        ("log-size", Metric("log_size", "Redis bytes per GiB, 5 MiB parts", "MB/GiB", "<=", 1.0)),
        # 1 MiB added, plus the previous short last part at most: one 5 MiB part.
        ("regrowth", Metric("regrowth_sent", "sent again, 40 MiB + 1 MiB", "MiB", "<=", 6.0)),
        ("regrowth", Metric("regrowth_seconds", "lag after the growth", "s", "<=", 1.0)),
        ("fleet", Metric("fleet", "p95 lag after idle, 100 at once", "s", "<=", 1.5)),
        ("fleet", Metric("fleet_closed", "p95 close -> complete, 100 at once", "s", "<=", 1.5)),
        (
            "close-complete",
            Metric("close_complete_slow", "close -> complete, 8 MiB/s, idle 15 s", "s", "<=", 1.0),
        ),
        (
            "close-complete",
            Metric("close_complete_fast", "close -> complete, 64 MiB/s, idle 15 s", "s", "<=", 1.0),
        ),
    ]
    return {m.name: m for case, m in all_metrics if case in cases}


SCENARIOS: list[tuple[tuple[str, ...], Callable[[Bench, dict[str, Metric]], None]]] = [
    (("throughput", "throughput_with_idle", "cpu"), case_throughput),
    (("live_lag_slow", "live_lag_fast", "streamed_share"), case_live),
    (("scale_out", "scale_out_capped", "scale_out_one_file"), case_scale_out),
    (("memory_one_big_file", "memory_many_files"), case_memory),
    (("log_size",), case_log_size),
    (("regrowth_sent", "regrowth_seconds"), case_regrowth),
    (("fleet", "fleet_closed"), case_fleet),
    (("close_complete_slow", "close_complete_fast"), case_close),
]


def run_cases(bench: Bench, metrics: dict[str, Metric]) -> None:
    for names, scenario in SCENARIOS:
        wanted = {n: metrics[n] for n in names if n in metrics}
        if not wanted:
            continue
        try:
            scenario(bench, wanted)
        except BenchError as exc:
            for m in wanted.values():
                m.error = str(exc)
            _progress(f"{scenario.__name__} failed: {exc}")


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
