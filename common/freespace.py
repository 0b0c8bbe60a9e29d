"""Free space on WATCH_DIR's filesystem: two gauges, and a warning below LOCAL_MIN_FREE_PERCENT.

A recorder whose disk fills up stops recording, so every producer and consumer looks every
CHECK_EVERY_S and says once when the free share falls below the setting, and once when it
is back above it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import NamedTuple

from cefmp4.common import metrics

logger = logging.getLogger(__name__)

CHECK_EVERY_S = 30.0


class FreeSpace(NamedTuple):
    free_bytes: int
    total_bytes: int

    @property
    def percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 100.0


def free_space(path: Path) -> FreeSpace:
    st = os.statvfs(path)
    return FreeSpace(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


async def watch_free_space(path: Path, min_free_percent: float) -> None:
    """Keep the gauges up to date and warn while short of space, until cancelled."""
    short = False
    while True:
        try:
            space = await asyncio.to_thread(free_space, path)
        except OSError as exc:
            logger.debug("cannot read the free space of %s: %s", path, exc)
        else:
            metrics.WATCH_DIR_FREE_BYTES.set(space.free_bytes)
            metrics.WATCH_DIR_FREE_RATIO.set(space.percent / 100)
            if space.percent < min_free_percent and not short:
                logger.warning(
                    "WATCH_DIR %s is short of space: %.1f%% free (%d MiB), below "
                    "LOCAL_MIN_FREE_PERCENT=%g",
                    path,
                    space.percent,
                    space.free_bytes // (1024 * 1024),
                    min_free_percent,
                )
                short = True
            elif space.percent >= min_free_percent and short:
                logger.info("WATCH_DIR %s has %.1f%% free again", path, space.percent)
                short = False
        await asyncio.sleep(CHECK_EVERY_S)
