"""The orphan sweep: abort multipart uploads of ours that no open stream owns.

An uploader that dies between CreateMultipartUpload and recording UploadStarted, or an
abort that S3 refused, leaves an upload that would keep its parts (and their cost)
forever. The bucket may be shared, so only uploads this deployment recorded an intent for
(consumer/intents.py) are ever aborted, whatever S3_KEY_PREFIX is. An intent younger than
the grace period is left alone: its UploadStarted may not be projected yet.
"""

from __future__ import annotations

import asyncio
import logging

from cefmp4.common.config import Settings
from cefmp4.common.errors import LogUnavailable, StorageError
from cefmp4.common.eventlog import Redis
from cefmp4.common.keys import Keys
from cefmp4.common.retry import transient
from cefmp4.common.s3 import Storage
from cefmp4.common.statestore import StateReader
from cefmp4.common.tasks import stopped_within
from cefmp4.consumer.intents import UploadIntents

logger = logging.getLogger(__name__)


async def sweep(storage: Storage, redis: Redis, keys: Keys, prefix: str, grace_s: float) -> int:
    """Abort the orphaned uploads of ours under `prefix`; returns how many."""
    intents = UploadIntents(redis, keys)
    known = await intents.all()
    if not known:
        return 0
    uploads = await storage.open_uploads(prefix)
    reader = StateReader(redis, keys)
    aborted = 0
    for intent in known:
        if not intent.older_than(int(grace_s * 1000)):
            continue
        state = await reader.stream(intent.stream_id)
        if state is not None and not state.terminal:
            continue  # at work: its uploader completes or aborts it
        covered = [u for u in uploads if intent.covers(u)]
        if not intent.upload_id and len(covered) > 1:
            continue  # which of them is ours cannot be told: none is touched
        for upload in covered:
            logger.warning(
                "aborting orphaned upload of %s (started %s)", upload.key, upload.initiated
            )
            await storage.abort(upload.key, upload.upload_id)
            aborted += 1
        await intents.done(intent.stream_id)
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
        """Sweep now and then every interval; run only under the stale-checker lease.

        Credentials that may not list multipart uploads switch the sweep off, with one
        warning; the stale checker goes on without it.
        """
        while not stop.is_set():
            try:
                await sweep(self.storage, self.redis, self.keys, self.prefix, self.grace_s)
            except (StorageError, LogUnavailable) as exc:
                if not transient(exc):
                    logger.warning(
                        "orphan sweep switched off: %s (uploads a crash leaves open stay until "
                        "a key with s3:ListBucketMultipartUploads runs it)",
                        exc,
                    )
                    return
                logger.warning("orphan sweep postponed: %s", exc)
            await stopped_within(stop, self.interval_s)
