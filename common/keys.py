"""Every Redis key and consumer-group name cefmp4 uses, in one place."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

UPLOADERS = "uploaders"
PROJECTOR = "projector"
STALE_CHECKER = "stale-checker"
GROUPS = (UPLOADERS, PROJECTOR, STALE_CHECKER)


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

    # --- projected state (written by the projector only) ---

    def stream(self, stream_id: str) -> str:
        return f"{self.prefix}stream:{stream_id}"

    def parts(self, stream_id: str) -> str:
        return f"{self.prefix}stream:{stream_id}:parts"

    @property
    def streams(self) -> str:
        """Sorted set of every stream id, scored by creation time."""
        return f"{self.prefix}streams"

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
    def offers(self) -> str:
        """Sorted set: ids of streams whose parts other uploaders may send, by deadline."""
        return f"{self.prefix}offers"

    def part_claims(self, stream_id: str) -> str:
        """Hash: part number -> who is sending it until when, or "done"; and the offer."""
        return f"{self.prefix}claims:{stream_id}"
