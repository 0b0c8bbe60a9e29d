"""The bytes each case moves and how fast: `FULL`, or `QUICK` for the smoke test."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024
GIB = 1024 * MIB
MB = 1_000_000


@dataclass(frozen=True)
class Live:
    size_bytes: int
    rate_bytes_s: float

    def label(self) -> str:
        return f"{format_size(self.size_bytes)} at {self.rate_bytes_s / MIB:g} MiB/s"


@dataclass(frozen=True)
class Sizes:
    """What each case moves: the issue's sizes, or tiny ones for the smoke test."""

    repeat: int
    idle_s: float
    throughput_files: int
    throughput_file_bytes: int
    slow_live: Live
    fast_live: Live
    scale_files: int
    scale_file_bytes: int
    scale_capped_file_bytes: int
    scale_big_file_bytes: int
    big_file_bytes: int
    many_files: int
    many_file_bytes: int
    log_live: Live
    close_slow: Live
    close_fast: Live
    close_idle_s: float
    log_part_mib: int = 5
    # A completed recording (whole 5 MiB parts) that then grows by `regrowth_added_bytes`.
    regrowth_bytes: int = 40 * MIB
    regrowth_added_bytes: int = MIB
    # Cameras recording at once: each file written in rounds over `fleet_write_s`.
    fleet_files: int = 100
    fleet_file_bytes: int = 8 * MIB
    fleet_write_s: float = 20.0
    fleet_idle_s: float = 3.0
    # A site's idle setting, for the cases that count it in.
    site_idle_s: float = 5.0


FULL = Sizes(
    repeat=3,
    idle_s=1.0,
    throughput_files=4,
    throughput_file_bytes=96 * MIB,
    slow_live=Live(64 * MIB, 8 * MIB),
    fast_live=Live(GIB, 64 * MIB),
    scale_files=8,
    scale_file_bytes=64 * MIB,
    scale_capped_file_bytes=64 * MIB,
    scale_big_file_bytes=256 * MIB,
    big_file_bytes=GIB,
    many_files=100,
    many_file_bytes=4 * MIB,
    log_live=Live(128 * MIB, 16 * MIB),
    close_slow=Live(64 * MIB, 8 * MIB),
    close_fast=Live(GIB, 64 * MIB),
    close_idle_s=15.0,
)
QUICK = Sizes(
    repeat=1,
    idle_s=0.5,
    throughput_files=4,
    throughput_file_bytes=6 * MIB,
    slow_live=Live(6 * MIB, 8 * MIB),
    fast_live=Live(12 * MIB, 64 * MIB),
    scale_files=8,
    scale_file_bytes=2 * MIB,
    scale_capped_file_bytes=2 * MIB,
    scale_big_file_bytes=24 * MIB,
    big_file_bytes=12 * MIB,
    many_files=10,
    many_file_bytes=MIB,
    log_live=Live(11 * MIB, 16 * MIB),
    regrowth_bytes=10 * MIB,
    fleet_files=10,
    fleet_file_bytes=MIB,
    fleet_write_s=2.0,
    fleet_idle_s=0.5,
    site_idle_s=2.0,
    close_slow=Live(6 * MIB, 8 * MIB),
    close_fast=Live(12 * MIB, 64 * MIB),
    close_idle_s=15.0,
)


def format_size(n: int) -> str:
    return f"{n // GIB} GiB" if n >= GIB and n % GIB == 0 else f"{n / MIB:g} MiB"
