"""The close watcher on real folders: which paths real closes and renames give (inotify)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from cefmp4.producer.closes import Closes

WAIT_S = 5.0


@contextlib.asynccontextmanager
async def watching(root: Path) -> AsyncIterator[asyncio.Queue[Path]]:
    """The paths the watcher of `root` gives, in a queue, while the block runs."""
    heard: asyncio.Queue[Path] = asyncio.Queue()

    async def listen(watcher: Closes) -> None:
        async for path in watcher.closed():
            heard.put_nowait(path)

    with Closes(root) as watcher:
        task = asyncio.create_task(listen(watcher))
        try:
            yield heard
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def next_heard(heard: asyncio.Queue[Path]) -> Path:
    return await asyncio.wait_for(heard.get(), WAIT_S)


def write_and_close(path: Path, data: bytes = b"x") -> None:
    with path.open("wb") as f:
        f.write(data)


async def test_a_close_in_a_folder_renamed_after_the_start_names_the_new_path(
    tmp_path: Path,
) -> None:
    (tmp_path / "cam1" / "day1").mkdir(parents=True)
    async with watching(tmp_path) as heard:
        (tmp_path / "cam1").rename(tmp_path / "cam1b")
        # A marker closed after the rename: once it is heard, the rename was handled.
        write_and_close(tmp_path / "marker.mp4")
        assert await next_heard(heard) == tmp_path / "marker.mp4"

        write_and_close(tmp_path / "cam1b" / "day1" / "rec.mp4")

        assert await next_heard(heard) == tmp_path / "cam1b" / "day1" / "rec.mp4"


async def test_folders_created_later_at_any_depth_are_heard(tmp_path: Path) -> None:
    async with watching(tmp_path) as heard:
        deep = tmp_path / "a" / "b" / "c"
        deep.mkdir(parents=True)  # faster than the watcher: b and c come from the listing
        write_and_close(tmp_path / "marker.mp4")
        assert await next_heard(heard) == tmp_path / "marker.mp4"

        write_and_close(deep / "rec.mp4")

        assert await next_heard(heard) == deep / "rec.mp4"


async def test_a_move_in_is_heard_and_a_read_only_close_is_not(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "watch"
    root.mkdir()
    write_and_close(root / "read.mp4")
    write_and_close(outside / "moved.mp4")
    async with watching(root) as heard:
        (root / "read.mp4").read_bytes()  # closed without writing: nothing
        os.rename(outside / "moved.mp4", root / "moved.mp4")

        assert await next_heard(heard) == root / "moved.mp4"
        assert heard.empty()


async def test_nothing_is_heard_through_a_symlinked_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "watch"
    root.mkdir()
    (root / "early").symlink_to(outside, target_is_directory=True)
    async with watching(root) as heard:
        (root / "late").symlink_to(outside, target_is_directory=True)
        write_and_close(outside / "behind.mp4")
        write_and_close(root / "marker.mp4")

        assert await next_heard(heard) == root / "marker.mp4"
        assert heard.empty()
