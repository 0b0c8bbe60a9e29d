"""Every Redis key and consumer-group name cefmp4 uses, in one place."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

UPLOADERS = "uploaders"
PROJECTOR = "projector"
STALE_CHECKER = "stale-checker"
GROUPS = (UPLOADERS, PROJECTOR, STALE_CHECKER)
# The group of the completions stream that posts them to NOTIFY_URL, and the lease of the
# one process that does it (it reads as the one consumer NOTIFIER, so whoever takes over
# finds the entries still pending).
NOTIFIER = "notifier"


def _path_token(path: str) -> str:
    # Paths may hold any character; a digest keeps keys short and plain.
    return hashlib.sha1(path.encode()).hexdigest()


@dataclass(frozen=True)
class Keys:
    prefix: str = "cefmp4:"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def dead(self) -> str:
        return f"{self.prefix}dead"

    @property
    def completed(self) -> str:
        """The public stream of completed recordings (common/completions.py: the format)."""
        return f"{self.prefix}completed"

    @property
    def notify_report(self) -> str:
        """Hash: how posting completions to NOTIFY_URL goes (consumer/notifier.py)."""
        return f"{self.prefix}notify"

    # --- projected state (written by the projector only) ---

    def stream(self, stream_id: str) -> str:
        return f"{self.prefix}stream:{stream_id}"

    def parts(self, stream_id: str) -> str:
        return f"{self.prefix}stream:{stream_id}:parts"

    @property
    def streams(self) -> str:
        """Sorted set of every stream id, scored by creation time."""
        return f"{self.prefix}streams"

    def status_index(self, status: str) -> str:
        """Sorted set of the ids of streams in `status`: open ones (active, finalizing) scored
        by creation time, finished ones (completed, failed, aborted) by when they ended."""
        return f"{self.prefix}status:{status}"

    @property
    def retries(self) -> str:
        """Sorted set of the ids of failed streams to try again, scored by when."""
        return f"{self.prefix}retries"

    @property
    def pruned(self) -> str:
        """Counter: how many finished streams have been pruned from the state so far."""
        return f"{self.prefix}pruned"

    @property
    def paths(self) -> str:
        """Hash: relative path -> id of its latest stream."""
        return f"{self.prefix}paths"

    @property
    def projector_position(self) -> str:
        return f"{self.prefix}projector:position"

    @property
    def snapshot(self) -> str:
        """Hash: the whole projected state at a log position, so older entries can go."""
        return f"{self.prefix}snapshot"

    def snapshot_chunk(self, generation: str, name: str) -> str:
        """One piece of the snapshot written as `generation`."""
        return f"{self.prefix}snapshot:{generation}:{name}"

    @property
    def retention_report(self) -> str:
        """Hash: how far the log was last trimmed, and what held it back."""
        return f"{self.prefix}retention"

    @property
    def replay_scratch(self) -> str:
        """Prefix under which a replay builds the new state before swapping it in."""
        return f"{self.prefix}replay:"

    # --- coordination between processes ---

    def lease(self, role: str) -> str:
        return f"{self.prefix}lease:{role}"

    def path_lock(self, path: str) -> str:
        return f"{self.prefix}lock:{_path_token(path)}"

    def path_dirty(self, path: str) -> str:
        return f"{self.prefix}dirty:{_path_token(path)}"

    def path_handoff(self, path: str) -> str:
        """Id of the last event an uploader appended for this path."""
        return f"{self.prefix}handoff:{_path_token(path)}"

    @property
    def upload_intents(self) -> str:
        """Hash: stream id -> the multipart upload it is about to start or started."""
        return f"{self.prefix}uploads"

    @property
    def offers(self) -> str:
        """Sorted set: ids of streams whose parts other uploaders may send, by deadline."""
        return f"{self.prefix}offers"

    def part_claims(self, stream_id: str) -> str:
        """Hash: part number -> who is sending it until when, or "done"; and the offer."""
        return f"{self.prefix}claims:{stream_id}"

    @property
    def consumer_reports(self) -> str:
        """Hash: consumer name -> what it is doing now (common/consumer_report.py)."""
        return f"{self.prefix}consumers"
