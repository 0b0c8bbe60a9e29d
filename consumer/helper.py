"""Helping other uploaders: send parts of streams they offer, with this consumer's spare slots.

The offering side, claims and offers are consumer/sharing.py. A helper looks for offers
every HELP_POLL_S while it has a free upload slot, and sends whole parts nobody has
claimed, last parts first (the holder goes from the first). Each part it sends is recorded
as an ordinary PartUploaded. It stops as soon as the holder withdraws the offer.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Container
from pathlib import Path

from cefmp4.common.errors import (
    FileChanged,
    LeaseLost,
    LogUnavailable,
    OfferWithdrawn,
    Stopping,
)
from cefmp4.common.eventlog import EventLog
from cefmp4.common.files import open_inside
from cefmp4.common.parts import Part, plan_parts
from cefmp4.common.recent import Recent
from cefmp4.common.tasks import Jobs, stopped_within
from cefmp4.consumer.partio import PartSender, part_uploaded, send_all
from cefmp4.consumer.sharing import Offer, PartClaims

logger = logging.getLogger(__name__)

HELP_POLL_S = 0.2
HELPED_MAX = 10_000


class Helper:
    def __init__(
        self,
        log: EventLog,
        root: Path,
        claims: PartClaims,
        sender: PartSender,
    ) -> None:
        self.log = log
        self.root = root
        self.claims = claims
        self.sender = sender
        # Offers this process is helping with, or has helped with (stream id -> offer time).
        self._helping: set[str] = set()
        self._helped: Recent[str, int] = Recent(HELPED_MAX)

    async def run(self, jobs: Jobs, stop: asyncio.Event, busy_paths: Container[str]) -> None:
        """Look for offers until `stop`, and help with each in a job of `jobs`.

        `busy_paths` are the paths this process holds itself: it never helps itself.
        """
        while not await stopped_within(stop, HELP_POLL_S):
            if self.sender.all_busy:
                continue  # no spare slot to help with
            try:
                offers = await self.claims.live_offers()
            except LogUnavailable:
                continue
            for offer in offers:
                if (
                    offer.stream_id in self._helping
                    or self._helped.get(offer.stream_id) == offer.offered_at_ms
                    or offer.path in busy_paths
                ):
                    continue
                self._helping.add(offer.stream_id)
                jobs.start_now(self._help(offer))

    async def _help(self, offer: Offer) -> None:
        """Send whole parts of an offered stream that nobody has claimed, last parts first."""
        try:
            fd = open_inside(self.root, offer.path, (offer.inode, offer.device))
        except (OSError, FileChanged):
            fd = None
        try:
            if fd is None:
                return
            st = os.fstat(fd)
            parts = plan_parts(st.st_size, offer.part_size, final=False)
            await send_all(self._help_with(offer, fd, st, part) for part in reversed(parts))
        except (OfferWithdrawn, Stopping):
            pass
        except Exception as exc:
            # The holder sends whatever its helpers did not.
            logger.info("stopped helping with %s: %s", offer.path, exc)
        finally:
            if fd is not None:
                os.close(fd)
            self._helping.discard(offer.stream_id)
            self._helped.put(offer.stream_id, offer.offered_at_ms)

    async def _help_with(self, offer: Offer, fd: int, st: os.stat_result, part: Part) -> None:
        async with self.sender.slot(part):
            try:
                async with self.claims.held(offer.stream_id, part.number, helper=True) as claim:
                    if claim is None:
                        return
                    read = await self.sender.read_and_send(
                        offer.s3_key, offer.upload_id, fd, part, None, claim.fence
                    )
                    assert read.etag is not None
                    event = part_uploaded(
                        offer.stream_id, offer.path, part, read, read.etag, st.st_size
                    )
                    await self.log.append_for_path(event, offer.path)
            except LeaseLost:
                logger.info("claim on part %d of %s lapsed", part.number, offer.path)
                return
        logger.debug("helped with part %d of %s", part.number, offer.path)
