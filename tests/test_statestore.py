"""The state store against a real Redis: what the writer stores, the readers give back."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from cefmp4.common.errors import LeaseLost
from cefmp4.common.eventlog import EventLog
from cefmp4.common.keys import PROJECTOR
from cefmp4.common.lease import Lease
from cefmp4.common.statestore import BATCH, StateReader, StateWriter, summary_of
from cefmp4.common.streamstate import PartRecord, StreamState
from tests.test_projection import HISTORY, fold_state


def odd_state(history_length: int) -> StreamState:
    """A state with every kind of field, and text that could trip up an encoding."""
    state = fold_state(HISTORY[:history_length])
    return replace(
        state,
        path="sub/ünï cödé, 1.mp4",
        reason="a, b",
        last_event_id="1700000000000-3",
        parts={
            **state.parts,
            9: PartRecord(1, 2, 3, '"etag,with,commas"'),
            10: PartRecord(4, 5, 6, '"etag,with,commas"', ctime_ns=1_700_000_000_123_456_789),
        },
    )


@pytest.mark.parametrize("history_length", [1, 3, 5, 8, len(HISTORY)])
async def test_a_state_written_reads_back_the_same(log: EventLog, history_length: int) -> None:
    state = odd_state(history_length)
    reader = StateReader(log.redis, log.keys)

    async with StateWriter(log.redis, log.keys).transaction() as changes:
        changes.put_stream(state, state.parts)
        changes.put_paths({state.path: state.stream_id})

    assert await reader.stream(state.stream_id) == state
    assert await reader.latest(state.path) == state
    assert await reader.summaries() == [summary_of(state)]
    assert [s async for states in reader.slices() for s in states] == [state]


async def test_a_stream_never_written_is_none(log: EventLog) -> None:
    reader = StateReader(log.redis, log.keys)

    assert await reader.stream("nope") is None
    assert await reader.latest("cam/nope.mp4") is None
    assert await reader.summaries() == []


async def test_a_writer_without_the_lease_writes_nothing(log: EventLog) -> None:
    state = odd_state(3)
    holder = Lease(log.redis, log.keys.lease(PROJECTOR), "holder")
    late = Lease(log.redis, log.keys.lease(PROJECTOR), "late")
    assert await holder.acquire()

    with pytest.raises(LeaseLost):
        async with StateWriter(log.redis, log.keys, late).transaction() as changes:
            changes.put_stream(state, state.parts)
            changes.set_position(b"5-0")

    reader = StateReader(log.redis, log.keys)
    assert await reader.stream(state.stream_id) is None
    assert await reader.stored_position() is None


async def test_latest_of_many_paths_gives_each_latest_stream_without_its_parts(
    log: EventLog,
) -> None:
    base = odd_state(len(HISTORY))
    states = [replace(base, stream_id=f"s{n}", path=f"cam/{n}.mp4") for n in range(BATCH + 7)]
    async with StateWriter(log.redis, log.keys).transaction() as changes:
        for state in states:
            changes.put_stream(state, state.parts)
        changes.put_paths({state.path: state.stream_id for state in states})

    found = await StateReader(log.redis, log.keys).latest_of(
        ["cam/unknown.mp4", *(state.path for state in states)]
    )

    assert found == {state.path: replace(state, parts={}) for state in states}


async def test_latest_of_leaves_out_a_stream_pruned_between_its_reads(log: EventLog) -> None:
    base = odd_state(3)
    states = [replace(base, stream_id=f"s{n}", path=f"cam/{n}.mp4") for n in range(3)]
    async with StateWriter(log.redis, log.keys).transaction() as changes:
        for state in states:
            changes.put_stream(state, state.parts)
        changes.put_paths({state.path: state.stream_id for state in states})
    # What a prune leaves for a moment: the path still names the stream, its hash is gone.
    await log.redis.delete(log.keys.stream("s0"))

    found = await StateReader(log.redis, log.keys).latest_of([s.path for s in states])

    assert found == {s.path: replace(s, parts={}) for s in states[1:]}


async def test_latest_summaries_follow_the_paths_given(log: EventLog) -> None:
    state = odd_state(3)
    async with StateWriter(log.redis, log.keys).transaction() as changes:
        changes.put_stream(state, state.parts)
        changes.put_paths({state.path: state.stream_id})

    found = await StateReader(log.redis, log.keys).latest_summaries(["nope.mp4", state.path])

    assert found == [None, summary_of(state)]
