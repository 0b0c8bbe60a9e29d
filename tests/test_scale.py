"""The state stays bounded as history grows: ops/statescale.py's cases at CI's size.

Each case starts its own Redis and S3 and seeds recordings through a real consumer's
projector (see ops/statescale.py); the full-size figures are in ops/BENCHMARKS.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.statescale import case_kept, case_parts, case_pruned

MB = 1_000_000
MIB = 1024 * 1024
RECORDINGS = 20_000

# Seeding, folding and pruning 60,000 events take about a minute on two cores.
pytestmark = pytest.mark.timeout(600)


async def test_pruned_recordings_leave_redis_memory_flat(tmp_path: Path) -> None:
    figures = await case_pruned(tmp_path, RECORDINGS)

    tenth, every = figures[f"at_{RECORDINGS // 10}"], figures[f"at_{RECORDINGS}"]
    assert every["used_memory"] <= 50 * MB
    # Beside the log and the completions stream (each trimmed to a length of its own), ten
    # times the recordings leave no more behind.
    besides = [m["used_memory"] - m["log_bytes"] - m["completions_bytes"] for m in (tenth, every)]
    assert besides[1] <= besides[0] + 1 * MB, figures
    assert figures["replay"]["same_state"], figures


async def test_a_kept_recording_costs_a_kilobyte_and_64_bytes_a_part(tmp_path: Path) -> None:
    figures = await case_parts(tmp_path, recordings=1_000, parts=100)

    assert figures["bytes_a_recording"] <= 1024 + 64 * 100, figures
    assert figures["replay"]["streams"] == 1_000


async def test_memory_of_the_consumer_and_status_does_not_grow_with_kept_streams(
    tmp_path: Path,
) -> None:
    figures = await case_kept(tmp_path, RECORDINGS)

    small, large = figures["at_1000"], figures[f"at_{RECORDINGS}"]
    assert large["consumer_peak_rss_mib"] <= 150, figures
    assert large["consumer_peak_rss_mib"] <= small["consumer_peak_rss_mib"] + 10, figures
    assert figures["status"]["peak_rss_mib"] <= 100, figures
