"""The orphan sweep: abort multipart uploads that no open stream owns.

An uploader that dies between CreateMultipartUpload and recording UploadStarted, or an
abort that S3 refused, leaves an upload that would keep its parts (and their cost)
forever. Uploads younger than the grace period are left alone: their UploadStarted may
not be projected yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from common.config import Settings
from common.keys import Keys
from common.log import Redis
from common.retry import transient
from common.s3 import Storage
from common.status import read_streams

logger = logging.getLogger(__name__)


async def owned_upload_ids(redis: Redis, keys: Keys) -> set[str]:
    return {s.upload_id for s in await read_streams(redis, keys) if not s.terminal}


async def sweep(storage: Storage, redis: Redis, keys: Keys, prefix: str, grace_s: float) -> int:
    """Abort the orphaned uploads under `prefix`; returns how many."""
    cutoff = datetime.now(UTC) - timedelta(seconds=grace_s)
    candidates = [u for u in await storage.open_uploads(prefix) if u.initiated <= cutoff]
    if not candidates:
        return 0
    owned = await owned_upload_ids(redis, keys)
    aborted = 0
    for upload in candidates:
        if upload.upload_id in owned:
            continue
        logger.warning("aborting orphaned upload of %s (started %s)", upload.key, upload.initiated)
        await storage.abort(upload.key, upload.upload_id)
        aborted += 1
    return aborted


class OrphanSweeper:
    def __init__(self, settings: Settings, storage: Storage, redis: Redis, keys: Keys) -> None:
        self.storage = storage
        self.redis = redis
        self.keys = keys
        self.prefix = settings.s3_key_prefix
        self.grace_s = settings.orphan_upload_grace_seconds
        self.interval_s = settings.orphan_check_interval_seconds

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep now and then every interval; run only under the stale-checker lease."""
        while not stop.is_set():
            try:
                await self.storage.ensure_bucket()
                await sweep(self.storage, self.redis, self.keys, self.prefix, self.grace_s)
            except Exception as exc:
                if not transient(exc):
                    raise
                logger.warning("orphan sweep postponed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
