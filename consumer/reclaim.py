"""AFTER_UPLOAD=delete|move: freeing WATCH_DIR of recordings whose objects are verified.

One consumer at a time (under the stale checker's lease) looks, every few seconds, at the
streams completed at least AFTER_UPLOAD_DELAY_SECONDS ago, oldest first: those that ended
since its last look (and in the SLACK_MS before, for a completion folded late or stamped by
a clock behind), and, at start and every RESCAN_EVERY_MS, all of them. It deletes or moves
a stream's file only when all of these hold:

- the stream completed (a failed or aborted one is never looked at) and is still its path's
  latest stream (no newer recording under that name);
- the file is the one completed: same inode and device, and the size, mtime and ctime
  recorded in StreamCompleted. Any write, truncation, chmod or rename moves the ctime, and
  the ctime cannot be set back, so a file unchanged since it completed has been unchanged for
  the whole delay;
- HeadObject says the object is this stream's (its metadata), of its size, with S3's
  composite CRC32 of the parts recorded (a server that keeps no checksum verifies nothing,
  so its files are kept).

Anything else keeps the file. What was done is appended to the log as LocalFileRemoved.
Each act can be done again or recognised, so a crash anywhere loses nothing: the file is
removed only after the object was verified; a file found gone when its time comes is
recorded as `gone`; a move links the file at its new name first and then unlinks the old
one (or, across filesystems, copies, fsyncs and checks the copy's size and CRC32 first), and
a file found with a link at its new name is a move to finish. A moved file keeps its path
under AFTER_UPLOAD_MOVE_DIR, with the stream id added to its name if that name is taken.
The producer sees the file go: a FileDeleted for a completed stream changes nothing.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import zlib
from pathlib import Path, PurePosixPath
from typing import Literal

from cefmp4.common import metrics
from cefmp4.common.checksums import s3_composite_crc32, whole_crc32
from cefmp4.common.completions import object_parts
from cefmp4.common.config import Settings
from cefmp4.common.errors import FileChanged, StorageError
from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import LocalFileFate, LocalFileRemoved, now_ms
from cefmp4.common.files import folder_inside, open_inside
from cefmp4.common.s3 import Storage
from cefmp4.common.statestore import StateReader
from cefmp4.common.streamstate import StreamState
from cefmp4.common.tasks import stopped_within

logger = logging.getLogger(__name__)

PAGE = 100
LOOK_EVERY_S = 5.0
SLACK_MS = 10 * 60_000
RESCAN_EVERY_MS = 3600_000
COPY_CHUNK = 8 * 1024 * 1024
PARTIAL_SUFFIX = ".cefmp4-partial"

Look = Literal["same", "linked", "changed", "missing"]


class Reclaimer:
    """Deletes or moves the files of verified completed streams; run it under a lease."""

    def __init__(self, settings: Settings, log: EventLog, storage: Storage, root: Path) -> None:
        self.how = settings.after_upload
        self.delay_ms = int(settings.after_upload_delay_seconds * 1000)
        move_dir = settings.after_upload_move_dir
        self.move_dir = move_dir.expanduser().resolve() if move_dir is not None else None
        self.root = root
        self.log = log
        self.storage = storage
        self.reader = StateReader(log.redis, log.keys)
        self.look_every_s = min(LOOK_EVERY_S, max(settings.after_upload_delay_seconds / 2, 0.2))
        # Every stream that ended before this, less SLACK_MS, was decided on; and those since.
        self._from_ms = 0
        self._decided: dict[str, int] = {}  # stream id -> when it ended
        self._rescan_at_ms = 0
        self._failing = ""  # the stream whose file could not be removed at the last look

    async def run(self, stop: asyncio.Event) -> None:
        while True:
            await self.tick()
            if await stopped_within(stop, self.look_every_s):
                return

    async def tick(self) -> None:
        """Decide on the streams due, oldest first; an outage ends the look early."""
        now = now_ms()
        if now >= self._rescan_at_ms:
            self._from_ms, self._rescan_at_ms = 0, now + RESCAN_EVERY_MS
        since, until = max(0, self._from_ms - SLACK_MS), now - self.delay_ms
        start = 0
        while page := await self.reader.ended_within("completed", since, until, start, PAGE):
            start += len(page)
            if not await self._decide_page(page):
                return  # tried again at the next look, before any stream behind it
            if len(page) < PAGE:
                break
        floor = self._from_ms - SLACK_MS
        self._decided = {i: ended for i, ended in self._decided.items() if ended >= floor}

    async def _decide_page(self, page: list[tuple[str, int]]) -> bool:
        undecided = [stream_id for stream_id, _ in page if stream_id not in self._decided]
        # Only a path's latest stream with its file still there can have a file to take.
        candidates = [
            s.stream_id
            for s in await self.reader.latest_of_ids(undecided)
            if s.status == "completed" and not s.local_file
        ]
        states = await self.reader.streams_of_ids(candidates)
        for stream_id, ended_ms in page:
            if stream_id in self._decided:
                continue
            state = states.get(stream_id)
            if state is not None and not await self._decide(state):
                return False
            self._decided[stream_id] = ended_ms
            self._from_ms = max(self._from_ms, ended_ms)
        return True

    async def _decide(self, state: StreamState) -> bool:
        """Remove the stream's file if it may go; False if that failed and is to be retried."""
        if state.status != "completed" or state.local_file or state.ctime_ns == 0:
            return True  # not ours to remove, done already, or completed before ctimes were kept
        if await self.reader.stream_id_of(state.path) != state.stream_id:
            return True  # a newer recording under this name: the file is not this stream's
        look = await asyncio.to_thread(self._look, state)
        if look == "missing":
            moved_to = await asyncio.to_thread(self._moved_already, state)
            await self._record(state, "moved" if moved_to else "gone", moved_to or "")
            return True
        if look == "changed" or not await self._verified(state):
            return True
        try:
            moved_to = await asyncio.to_thread(self._act, state, look)
        except FileChanged as exc:
            logger.info("%s kept in WATCH_DIR: %s", state.path, exc)
            return True
        except OSError as exc:
            # A read-only mount, a full MOVE_DIR: said once, tried again at every look.
            log = logger.debug if self._failing == state.stream_id else logger.warning
            self._failing = state.stream_id
            log(
                "%s kept in WATCH_DIR for now: AFTER_UPLOAD=%s failed: %s",
                state.path,
                self.how,
                exc,
                extra={"stream_id": state.stream_id, "path": state.path},
            )
            return False
        await self._record(state, "moved" if moved_to is not None else "deleted", moved_to or "")
        return True

    async def _verified(self, state: StreamState) -> bool:
        """Whether HeadObject shows the object complete, of this stream, size and CRC32."""
        expected = s3_composite_crc32(object_parts(state).values())
        try:
            facts = await self.storage.object_facts(state.s3_key)
        except StorageError as exc:
            if exc.retryable:
                raise  # an outage: the lease holder waits it out and looks again
            facts = None
        verified = (
            facts is not None
            and facts.stream_id == state.stream_id
            and facts.size == state.size_bytes
            and facts.crc32 == expected
        )
        if not verified:
            logger.warning(
                "%s kept in WATCH_DIR: its object %s is not verified (%s; expected %d bytes, "
                "CRC32 %s)",
                state.path,
                state.s3_key,
                facts,
                state.size_bytes,
                expected,
                extra={"stream_id": state.stream_id, "path": state.path},
            )
        return verified

    async def _record(self, state: StreamState, how: LocalFileFate, moved_to: str) -> None:
        event = LocalFileRemoved(
            stream_id=state.stream_id, path=state.path, how=how, moved_to=moved_to
        )
        await self.log.append(event)
        metrics.LOCAL_FILES_REMOVED.labels(how=how).inc()
        logger.info(
            "%s %s%s after upload",
            state.path,
            how,
            f" to {moved_to}" if moved_to else "",
            extra={"stream_id": state.stream_id, "path": state.path},
        )

    # --- on disk (in a thread) ------------------------------------------------------

    def _look(self, state: StreamState) -> Look:
        try:
            with folder_inside(self.root, state.path) as (folder, name):
                st = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return "missing"
        except OSError:
            return "changed"  # unreachable through no symlink: not the file completed
        if not state.is_file(st):
            return "changed"
        if st.st_ctime_ns == state.ctime_ns:
            return "same"
        # A link moves the ctime: a move that linked the file and died before the unlink.
        if self.how == "move" and st.st_nlink > 1 and self._moved_already(state):
            return "linked"
        return "changed"

    def _targets(self, state: StreamState) -> list[Path]:
        """Where a moved file goes: its path under MOVE_DIR, or that with the stream id."""
        assert self.move_dir is not None
        rel = PurePosixPath(state.path)
        renamed = rel.with_name(f"{rel.stem}.{state.stream_id}{rel.suffix}")
        return [self.move_dir.joinpath(*rel.parts), self.move_dir.joinpath(*renamed.parts)]

    def _moved_already(self, state: StreamState) -> str | None:
        """The path (under MOVE_DIR) the file was linked at by a move, if one was."""
        if self.how != "move":
            return None
        for target in self._targets(state):
            try:
                st = os.stat(target, follow_symlinks=False)
            except OSError:
                continue
            if (st.st_ino, st.st_dev) == (state.inode, state.device):
                return self._shown(target)
        return None

    def _shown(self, target: Path) -> str:
        assert self.move_dir is not None
        return target.relative_to(self.move_dir).as_posix()

    def _act(self, state: StreamState, look: Look) -> str | None:
        """Delete or move the file; the moved file's path under MOVE_DIR, None if deleted."""
        moved_to: str | None = None
        with folder_inside(self.root, state.path) as (folder, name):
            if self.how == "move":
                moved_to = self._moved_already(state) if look == "linked" else None
                if moved_to is None:
                    moved_to = self._place(state, folder, name)
            # The last look before the file goes: still the file completed.
            st = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if not state.is_file(st) or (
                look == "same" and moved_to is None and st.st_ctime_ns != state.ctime_ns
            ):
                raise FileChanged("the file changed before it could be removed")
            os.unlink(name, dir_fd=folder)
            _fsync_folder(Path(f"/proc/self/fd/{folder}"))  # `folder` may be an O_PATH one
        return moved_to

    def _place(self, state: StreamState, folder: int, name: str) -> str:
        """Put the file under MOVE_DIR as well (a hard link, else a checked copy)."""
        for target in self._targets(state):
            if os.path.lexists(target):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(name, target, src_dir_fd=folder, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                    raise
                self._copy(state, target)
            _fsync_folder(target.parent)
            return self._shown(target)
        raise FileExistsError(errno.EEXIST, "every name under AFTER_UPLOAD_MOVE_DIR is taken")

    def _copy(self, state: StreamState, target: Path) -> None:
        """Copy the file to `target` on another filesystem, fsynced, and check the copy."""
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        source = open_inside(self.root, state.path, (state.inode, state.device))
        try:
            out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                crc, size = 0, 0
                while chunk := os.read(source, COPY_CHUNK):
                    os.write(out, chunk)
                    crc, size = zlib.crc32(chunk, crc), size + len(chunk)
                os.fsync(out)
            finally:
                os.close(out)
        finally:
            os.close(source)
        if (size, crc) != (state.size_bytes, whole_crc32(object_parts(state).values())):
            partial.unlink()
            raise FileChanged(f"the copy at {partial} is not the object's bytes")
        os.link(partial, target)  # never over a file that is there
        partial.unlink()


def _fsync_folder(path: Path) -> None:
    """Make a link or unlink in the folder durable; where that cannot be done, it is not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders
    finally:
        os.close(fd)
