"""Telling a WATCH_DIR that went away (unmounted, emptied) from recordings deleted one by one.

WATCH_DIR looks away when its device is not the one it had (an unmount leaves the empty
mount point, on the device below), or when every known recording vanished at once; at least
EMPTIED_AT_LEAST of them, so that deleting one or two is never taken for it. While it is
away, vanished recordings are not reported deleted, so their open streams are not failed. It
is back as soon as any known recording is there again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path

logger = logging.getLogger(__name__)

EMPTIED_AT_LEAST = 3


def device_of(path: Path) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


class Absence:
    def __init__(self, root: Path, stat: Callable[[str], os.stat_result | None]) -> None:
        """`stat` gives a recording's stat from its relative path (None: not there)."""
        self.root = root
        self.stat = stat
        self.device = device_of(root)
        self.away = False

    def vanished(self, known: Collection[str]) -> bool:
        """Call when a known recording is not there: True if WATCH_DIR went away (logged
        once), False if the recording was deleted. `known` is in the order first seen."""
        if self.away:
            return True
        device = device_of(self.root)
        if device is None:
            why = "it cannot be read"
        elif device != self.device:
            why = "its device changed"
        elif len(known) >= EMPTIED_AT_LEAST and not self._any_there(known):
            why = f"all {len(known)} known recordings vanished at once"
        else:
            return False
        self.away = True
        logger.warning(
            "WATCH_DIR %s looks unmounted or emptied (%s): its recordings are not reported "
            "deleted, nor their streams failed, until they are back",
            self.root,
            why,
        )
        return True

    def _any_there(self, known: Collection[str]) -> bool:
        # Newest first: a clean-up deletes the oldest, so this stops at the first look.
        return any(self.stat(rel) is not None for rel in reversed(list(known)))

    def back(self, known: Collection[str]) -> bool:
        """While away: True (and logged) once any known recording is there again."""
        if not self.away:
            return False
        there = sum(1 for rel in known if self.stat(rel) is not None)
        if not there:
            return False
        self.away = False
        self.device = device_of(self.root)  # a file system mounted again may get another
        logger.info(
            "WATCH_DIR %s is back (%d of %d known recordings there); reporting resumes",
            self.root,
            there,
            len(known),
        )
        return True
