"""One uploader per path, and no request lost while another holds it (real Redis)."""

from __future__ import annotations

import pytest

from cefmp4.common.errors import LeaseLost
from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import FileWritten
from cefmp4.consumer.pass_decision import Mode
from cefmp4.consumer.pathlock import PathLock

PATH = "cam/rec.mp4"


async def test_a_pass_asked_for_while_the_path_is_held_goes_to_the_holder(log: EventLog) -> None:
    holder = PathLock(log.redis, log.keys, PATH, 10_000)
    other = PathLock(log.redis, log.keys, PATH, 10_000)

    assert await holder.acquire_or_mark(Mode.SYNC) == Mode.SYNC
    assert await other.acquire_or_mark(Mode.FINAL) == 0
    assert await other.acquire_or_mark(Mode.SYNC) == 0  # a weaker ask keeps the stronger mark

    assert await holder.release_or_continue() == Mode.FINAL
    assert await holder.release_or_continue() == 0
    assert await other.acquire_or_mark(Mode.SYNC) == Mode.SYNC


async def test_a_mark_left_for_nobody_is_picked_up_by_the_next_holder(log: EventLog) -> None:
    gone = PathLock(log.redis, log.keys, PATH, 10_000)
    waiting = PathLock(log.redis, log.keys, PATH, 10_000)
    assert await gone.acquire_or_mark(Mode.SYNC) == Mode.SYNC
    assert await waiting.acquire_or_mark(Mode.FINAL) == 0

    await gone.release()  # as when its pass failed: the mark stays

    assert await waiting.acquire_or_mark(Mode.SYNC) == Mode.FINAL


async def test_a_holder_whose_lock_lapsed_can_neither_write_nor_record(log: EventLog) -> None:
    late = PathLock(log.redis, log.keys, PATH, 50)
    assert await late.acquire_or_mark(Mode.SYNC) == Mode.SYNC
    await log.redis.delete(late.key)  # it lapsed while the holder was frozen
    now_holding = PathLock(log.redis, log.keys, PATH, 10_000)
    assert await now_holding.acquire_or_mark(Mode.SYNC) == Mode.SYNC
    step = FileWritten(path=PATH, size=1, mtime_ns=1, inode=1, device=1)

    with pytest.raises(LeaseLost):
        await late.fence()
    with pytest.raises(LeaseLost):
        await log.append_for_path(step, PATH, (late.key, late.token))
    await now_holding.fence()
    await log.append_for_path(step, PATH, (now_holding.key, now_holding.token))

    assert await log.redis.xlen(log.keys.events) == 1


async def test_every_step_asked_again_after_its_reply_was_lost_gives_the_same(
    log: EventLog,
) -> None:
    holder = PathLock(log.redis, log.keys, PATH, 10_000)
    other = PathLock(log.redis, log.keys, PATH, 10_000)
    assert await holder.acquire_or_mark(Mode.SYNC) == Mode.SYNC
    assert await holder.acquire_or_mark(Mode.SYNC) == Mode.SYNC  # its reply was lost
    assert await other.acquire_or_mark(Mode.FINAL) == 0

    first = await holder.release_or_continue()
    holder._seen = 0  # as if the answer to that call never arrived
    again = await holder.release_or_continue()

    assert first == again == Mode.FINAL
    assert await holder.release_or_continue() == 0
    assert await other.acquire_or_mark(Mode.SYNC) == Mode.SYNC


async def test_a_pass_taken_by_a_holder_that_died_goes_to_the_next_one(log: EventLog) -> None:
    dead = PathLock(log.redis, log.keys, PATH, 10_000)
    other = PathLock(log.redis, log.keys, PATH, 10_000)
    assert await dead.acquire_or_mark(Mode.SYNC) == Mode.SYNC
    assert await other.acquire_or_mark(Mode.FINAL) == 0
    assert await dead.release_or_continue() == Mode.FINAL  # taken, and then it died
    await log.redis.delete(dead.key)  # its lock lapsed

    assert await other.acquire_or_mark(Mode.SYNC) == Mode.FINAL
