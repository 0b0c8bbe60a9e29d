"""Content tags: each completed object says what file it was made from, so a file seen again
whose object already matches is recorded as complete and not uploaded twice.

S3 user metadata is fixed when the multipart upload starts, before the file's final size,
mtime and checksum are known, and cannot be changed without copying the whole object. So
the identity is an object tag, `cefmp4-content` = `v1:<size>:<mtime_ns>:<crc32>:<stream id>`,
put right after the completed object was verified (tags the object already had are kept).
A file is recognized when the tag's size and mtime are the file's now and the tag agrees
with what HeadObject says of the object: its size, its composite CRC32 and the stream id
in its metadata. A file changed in any way that moves its size or mtime is uploaded again.

Tagging refused for good (a key without s3:PutObjectTagging / s3:GetObjectTagging, or a
server without tagging) gives one warning per process and switches tags off: every file
seen again is then uploaded again, as before.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

from cefmp4.common.config import CONTENT_TAG
from cefmp4.common.errors import StorageError
from cefmp4.common.s3 import ObjectFacts, Storage

logger = logging.getLogger(__name__)

# A passing error is tried again this many times, this far apart, then the object is left
# untagged rather than hold the pass (its recording is complete and verified already).
LABEL_TRIES = 3
LABEL_RETRY_S = 0.5
_VERSION = "v1"
# What a key that may not tag is told, and what a server without tagging answers.
_REFUSED_FOR_GOOD = frozenset(
    {"AccessDenied", "403", "NotImplemented", "501", "MethodNotAllowed", "405"}
)


class ContentIdentity(NamedTuple):
    """What identifies the content an object was made from."""

    size: int
    mtime_ns: int
    crc32: str  # the composite checksum as S3 reports it ("" if it keeps none)
    stream_id: str

    def tag_value(self) -> str:
        return f"{_VERSION}:{self.size}:{self.mtime_ns}:{self.crc32}:{self.stream_id}"

    @classmethod
    def from_tag(cls, value: str | None) -> ContentIdentity | None:
        """The identity a tag value states; None if it is not one (missing, other version)."""
        fields = (value or "").split(":")
        if len(fields) != 5 or fields[0] != _VERSION:
            return None
        _version, size, mtime_ns, crc32, stream_id = fields
        if not (size.isdigit() and mtime_ns.isdigit() and stream_id):
            return None
        return cls(int(size), int(mtime_ns), crc32, stream_id)


def matches(identity: ContentIdentity | None, facts: ObjectFacts, size: int, mtime_ns: int) -> bool:
    """Whether the object (`facts`, tagged `identity`) was made from a file of this size and
    mtime: the tag must be the object's own, not one left from an earlier object."""
    return (
        identity is not None
        and (identity.size, identity.mtime_ns) == (size, mtime_ns)
        and (facts.size, facts.stream_id, facts.crc32) == (size, identity.stream_id, identity.crc32)
    )


class ContentTags:
    """Puts and reads content tags through `storage`; off once S3 refused tagging for good."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.refused = False

    async def label(self, key: str, identity: ContentIdentity) -> None:
        """Tag the completed object `key` with `identity`, keeping its other tags.

        Never raises: the object is complete and verified whatever happens here; an untagged
        object is only uploaded again if its file is seen again.
        """
        if self.refused:
            return
        for attempt in range(1, LABEL_TRIES + 1):
            try:
                tags = await self.storage.object_tags(key)
                tags[CONTENT_TAG] = identity.tag_value()
                await self.storage.put_object_tags(key, tags)
                return
            except StorageError as exc:
                if self._refused_for_good(exc):
                    return
                if not exc.retryable or attempt == LABEL_TRIES:
                    logger.warning("cannot tag %s with its content (%s); left untagged", key, exc)
                    return
            await asyncio.sleep(LABEL_RETRY_S * attempt)

    async def recognize(self, key: str, size: int, mtime_ns: int) -> ObjectFacts | None:
        """The object `key` if it was made from a file of this size and mtime, else None.

        One HeadObject, and GetObjectTagging when the object is one of ours of that size.
        StorageError when S3 is unreachable (the pass waits it out).
        """
        if self.refused:
            return None
        try:
            facts = await self.storage.object_facts(key)
        except StorageError as exc:
            if exc.retryable:
                raise
            logger.info("cannot tell whether %s is already in S3 (%s)", key, exc)
            return None
        if facts is None or facts.size != size or not facts.stream_id:
            return None
        try:
            tags = await self.storage.object_tags(key)
        except StorageError as exc:
            if self._refused_for_good(exc):
                return None
            if exc.retryable:
                raise
            logger.info("cannot tell whether %s is already in S3 (%s)", key, exc)
            return None
        identity = ContentIdentity.from_tag(tags.get(CONTENT_TAG))
        return facts if matches(identity, facts, size, mtime_ns) else None

    def _refused_for_good(self, exc: StorageError) -> bool:
        if exc.code not in _REFUSED_FOR_GOOD:
            return False
        if not self.refused:
            self.refused = True
            logger.warning(
                "S3 refuses object tagging (%s): grant s3:PutObjectTagging and "
                "s3:GetObjectTagging, or files seen again (a producer restart after their "
                "streams were pruned) are uploaded again; content tags are off until restart",
                exc,
            )
        return True
