"""Several uploaders on the parts of one recording: the claims, and two real consumers."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from cefmp4.common.errors import OfferWithdrawn
from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import PartUploaded
from cefmp4.common.s3 import Storage
from cefmp4.consumer.sharing import DONE, Offer, PartClaims
from ops.local_services import free_port
from tests.conftest import Processes, eventually
from tests.test_metrics import scrape, scrape_when_up, value
from tests.test_pipeline import PART, assert_nothing_open, logged_events, wait_completed


def an_offer(stream_id: str = "s1") -> Offer:
    return Offer(
        stream_id=stream_id,
        path="a.mp4",
        s3_key="a.mp4",
        upload_id="u",
        inode=1,
        device=1,
        part_size=PART,
        offered_at_ms=1,
    )


async def test_a_claimed_part_is_nobody_elses_and_done_once_sent(log: EventLog) -> None:
    holder = PartClaims(log.redis, log.keys, ttl_ms=30_000)
    helper = PartClaims(log.redis, log.keys, ttl_ms=30_000)
    await holder.offer(an_offer())
    assert [o.stream_id for o in await helper.live_offers()] == ["s1"]

    async with holder.held("s1", 3, helper=False) as mine:
        assert mine
        async with helper.held("s1", 3, helper=True) as theirs:
            assert not theirs  # in flight
    async with helper.held("s1", 3, helper=True) as theirs:
        assert not theirs  # done
    async with helper.held("s1", 4, helper=True) as theirs:
        assert theirs
    assert await log.redis.hget(log.keys.part_claims("s1"), "3") == DONE.encode()


async def test_a_part_whose_send_failed_can_be_claimed_again(log: EventLog) -> None:
    claims = PartClaims(log.redis, log.keys, ttl_ms=30_000)
    with pytest.raises(OSError):
        async with claims.held("s1", 1, helper=False) as mine:
            assert mine
            raise OSError("connection reset")
    async with claims.held("s1", 1, helper=False) as mine:
        assert mine


async def test_helpers_are_refused_once_the_offer_is_withdrawn(log: EventLog) -> None:
    claims = PartClaims(log.redis, log.keys, ttl_ms=30_000)
    with pytest.raises(OfferWithdrawn):
        async with claims.held("s1", 1, helper=True):
            pass  # never offered
    await claims.offer(an_offer())
    assert await claims.withdraw("s1") == set()
    with pytest.raises(OfferWithdrawn):
        async with claims.held("s1", 1, helper=True):
            pass
    assert await claims.live_offers() == []


async def test_withdraw_waits_for_the_parts_in_flight(log: EventLog) -> None:
    holder = PartClaims(log.redis, log.keys, ttl_ms=30_000)
    helper = PartClaims(log.redis, log.keys, ttl_ms=30_000)
    await holder.offer(an_offer())
    sending = asyncio.Event()
    finish = asyncio.Event()

    async def helper_sends_part_2() -> None:
        async with helper.held("s1", 2, helper=True) as mine:
            assert mine
            sending.set()
            await finish.wait()

    helping = asyncio.create_task(helper_sends_part_2())
    await sending.wait()
    withdrawing = asyncio.create_task(holder.withdraw("s1"))

    async def offer_gone() -> bool:
        return await log.redis.zscore(log.keys.offers, "s1") is None

    await eventually(offer_gone, 10, "the offer withdrawn")
    assert not withdrawing.done()  # part 2 is still in flight
    finish.set()
    await helping
    assert await withdrawing == {2}


async def test_a_claim_left_by_a_dead_uploader_lapses(log: EventLog) -> None:
    claims = PartClaims(log.redis, log.keys, ttl_ms=300)
    await log.redis.hset(log.keys.part_claims("s1"), "5", "dead-token 0")
    async with claims.held("s1", 5, helper=False) as mine:
        assert mine  # its deadline (0) has passed
    # Held without renewal, a claim lapses after its ttl and is taken over.
    await claims._claim(
        keys=[log.keys.offers, log.keys.part_claims("s1")],
        args=["s1", 6, "dying", 300, "holder", 60_000],
    )

    async def taken_over() -> bool:
        async with claims.held("s1", 6, helper=False) as mine:
            return mine is not None

    await eventually(taken_over, 10, "the lapsed claim taken over")


async def test_an_offer_nobody_renews_lapses(log: EventLog) -> None:
    claims = PartClaims(log.redis, log.keys, ttl_ms=200)
    await claims.offer(an_offer("s2"))
    assert [o.stream_id for o in await claims.live_offers()] == ["s2"]

    async def lapsed() -> bool:
        return await claims.live_offers() == []

    await eventually(lapsed, 10, "the offer lapsed")


async def test_two_consumers_send_different_parts_of_one_file(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    processes.start("producer")
    for port in ports:
        # One slot each: the holder of the file always has more parts than slots.
        processes.start(
            "consumer", METRICS_PORT=str(port), METRICS_HOST="127.0.0.1", UPLOAD_CONCURRENCY="1"
        )
    before = [await scrape_when_up(port) for port in ports]
    staged = tmp_path / "big.mp4"
    staged.write_bytes(os.urandom(24 * PART + 12_345))  # 24 whole parts and a tail
    staged.rename(watch_dir / "big.mp4")

    state = await wait_completed(log, storage, watch_dir, "big.mp4", timeout_s=120)

    after = [await asyncio.to_thread(scrape, port) for port in ports]
    sent = [
        value(a, "cefmp4_uploaded_parts_total") - value(b, "cefmp4_uploaded_parts_total")
        for a, b in zip(after, before, strict=True)
    ]
    assert sum(sent) == 25, f"every part sent exactly once, not {sent}"
    assert min(sent) > 0, f"both consumers sent parts: {sent}"
    recorded = [
        event.part_number
        for event in await logged_events(log)
        if isinstance(event, PartUploaded) and event.stream_id == state.stream_id
    ]
    assert sorted(recorded) == list(range(1, 26))
    await assert_nothing_open(storage)


@pytest.mark.parametrize("killed", [0, 1])
async def test_a_consumer_killed_while_parts_are_shared_leaves_a_right_object(
    processes: Processes,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    tmp_path: Path,
    killed: int,
) -> None:
    """Whichever dies, holder or helper: its claims lapse and the survivor finishes."""
    processes.start("producer")
    consumers = [
        processes.start("consumer", UPLOAD_CONCURRENCY="1", CLAIM_IDLE_SECONDS="3")
        for _ in range(2)
    ]
    staged = tmp_path / "big.mp4"
    staged.write_bytes(os.urandom(24 * PART + 999))
    staged.rename(watch_dir / "big.mp4")

    async def parts_flowing() -> bool:
        return sum(isinstance(e, PartUploaded) for e in await logged_events(log)) >= 4

    await eventually(parts_flowing, 60, "parts being sent")
    consumers[killed].send_signal(signal.SIGKILL)
    consumers[killed].wait()

    state = await wait_completed(log, storage, watch_dir, "big.mp4", timeout_s=120)
    assert sorted(state.parts) == list(range(1, 26))
    await assert_nothing_open(storage)
