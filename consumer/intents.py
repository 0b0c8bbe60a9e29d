"""The multipart uploads this deployment started, recorded before they are started.

The bucket may be shared (a backup tool, another cefmp4 site, any prefix or none), so the
orphan sweep may abort only uploads it can prove are its own. Before an uploader calls
CreateMultipartUpload it records an intent (the stream id, the key, the time); once S3
answers, the upload id. The intent is dropped once the upload is completed or aborted, so
the hash holds only the uploads of open work and those a crash or a refusal left behind.
"""

from __future__ import annotations

from datetime import UTC
from typing import NamedTuple

from cefmp4.common.eventlog import Redis, text_of
from cefmp4.common.events import now_ms
from cefmp4.common.keys import Keys
from cefmp4.common.replicas import Replicated
from cefmp4.common.s3 import OpenUpload

# An upload started under an intent whose upload id was never recorded (a crash right
# after CreateMultipartUpload) is recognised by its key and by starting within this long
# after the intent, allowing for S3's clock being a little behind ours.
CREATE_WINDOW_MS = 120_000
CLOCK_SKEW_MS = 5_000


class Intent(NamedTuple):
    stream_id: str
    key: str
    at_ms: int
    upload_id: str  # "" until S3 answered

    def covers(self, upload: OpenUpload) -> bool:
        """Whether `upload` is the one this intent started (or may have, if unrecorded)."""
        if self.upload_id:
            return upload.upload_id == self.upload_id
        started_ms = int(upload.initiated.astimezone(UTC).timestamp() * 1000)
        return (
            upload.key == self.key
            and self.at_ms - CLOCK_SKEW_MS <= started_ms <= self.at_ms + CREATE_WINDOW_MS
        )

    def older_than(self, ms: int) -> bool:
        return now_ms() - self.at_ms > ms


class UploadIntents:
    def __init__(self, redis: Redis, keys: Keys, replicated: Replicated | None = None) -> None:
        self.redis = redis
        self.key = keys.upload_intents
        self.replicated = replicated or Replicated()

    async def intend(self, stream_id: str, key: str) -> None:
        """Before CreateMultipartUpload; on a replica too, where REDIS_WAIT_REPLICAS says:
        an intent lost in a failover would leave its upload open for ever, unrecognised."""
        value = f"{now_ms()} - {key}"
        await self.replicated.write(self.redis, lambda pipe: pipe.hset(self.key, stream_id, value))

    async def started(self, stream_id: str, key: str, upload_id: str) -> None:
        """After CreateMultipartUpload answered."""
        raw = await self.redis.hget(self.key, stream_id)
        at_ms = int(text_of(raw).split(" ", 1)[0]) if raw else now_ms()
        await self.redis.hset(self.key, stream_id, f"{at_ms} {upload_id} {key}")

    async def done(self, stream_id: str) -> None:
        """The upload was completed or aborted: nothing is left to sweep."""
        await self.redis.hdel(self.key, stream_id)

    async def all(self) -> list[Intent]:
        found: list[Intent] = []
        async for stream_id, raw in self.redis.hscan_iter(self.key, count=1000):
            at_ms, upload_id, key = text_of(raw).split(" ", 2)
            found.append(
                Intent(text_of(stream_id), key, int(at_ms), "" if upload_id == "-" else upload_id)
            )
        return found

