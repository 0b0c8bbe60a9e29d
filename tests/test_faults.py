"""Crashes, outages, files changing under us and poison input, on real processes and services."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from cefmp4.common.eventlog import EventLog
from cefmp4.common.events import FIELD, FileWritten, PartUploaded, decode, encode
from cefmp4.common.keys import UPLOADERS
from cefmp4.common.s3 import Storage
from cefmp4.common.statestore import StateReader
from cefmp4.consumer.intents import UploadIntents
from tests.conftest import Processes, Services, eventually
from tests.test_pipeline import (
    assert_nothing_open,
    parts_sent,
    record,
    recording,
    stream_of,
    wait_completed,
)

MIB = 1024 * 1024
FAST_TAKEOVER = "3"  # CLAIM_IDLE_SECONDS


async def part_sends(log: EventLog) -> Counter[tuple[str, int]]:
    """How many times each (stream, part number) was recorded as uploaded."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await log.redis.xrange(log.keys.events)  # type: ignore[assignment]
    sends: Counter[tuple[str, int]] = Counter()
    for _id, fields in entries:
        event = decode(fields)
        if isinstance(event, PartUploaded):
            sends[(event.stream_id, event.part_number)] += 1
    return sends


async def status_of(log: EventLog, rel: str, status: str) -> None:
    async def reached() -> bool:
        state = await stream_of(log, rel)
        return state is not None and state.status == status

    await eventually(reached, 30, f"{rel} {status}")


async def test_consumer_killed_mid_upload_is_taken_over_without_resending_parts(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    processes.start("producer")
    first = processes.start("consumer", CLAIM_IDLE_SECONDS=FAST_TAKEOVER)
    async with recording(watch_dir / "cam.mp4"):
        await parts_sent(log, "cam.mp4", 2)
        first.send_signal(signal.SIGKILL)
        first.wait()
        processes.start("consumer", CLAIM_IDLE_SECONDS=FAST_TAKEOVER)
        await parts_sent(log, "cam.mp4", 4)

    await wait_completed(log, storage, watch_dir, "cam.mp4", timeout_s=90)
    sends = await part_sends(log)
    assert sends and max(sends.values()) == 1, sends
    await assert_nothing_open(storage)


async def test_producer_restarted_reports_what_changed_while_it_was_down(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    producer = processes.start("producer")
    processes.start("consumer")
    stop, stop_other = asyncio.Event(), asyncio.Event()
    writer = asyncio.create_task(record(watch_dir / "grows.mp4", stop))
    other = asyncio.create_task(record(watch_dir / "vanishes.mp4", stop_other))
    try:
        await parts_sent(log, "grows.mp4", 1)
        await parts_sent(log, "vanishes.mp4", 1)
        producer.send_signal(signal.SIGKILL)
        producer.wait()
        stop_other.set()
        await other
        # While no producer runs: one file keeps growing, one vanishes, one appears.
        (watch_dir / "vanishes.mp4").unlink()
        (watch_dir / "appears.mp4").write_bytes(os.urandom(MIB))
        await asyncio.sleep(1)  # the recorder keeps writing while the producer is down
        processes.start("producer")
    finally:
        stop.set()
        stop_other.set()
        await asyncio.gather(writer, other)

    await wait_completed(log, storage, watch_dir, "grows.mp4")
    await wait_completed(log, storage, watch_dir, "appears.mp4")
    await status_of(log, "vanishes.mp4", "failed")
    sends = await part_sends(log)
    assert max(sends.values()) == 1, sends
    await assert_nothing_open(storage)


async def test_redis_restart_mid_upload_loses_nothing(
    services: Services, processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    assert services.redis is not None, "needs the tests' own redis-server to restart it"
    producer = processes.start("producer")
    consumer = processes.start("consumer")
    async with recording(watch_dir / "cam.mp4"):
        await parts_sent(log, "cam.mp4", 2)
        services.redis.stop()
        await asyncio.sleep(2)  # an outage of about two seconds, writes going on
        services.redis.start()
        await parts_sent(log, "cam.mp4", 4)

    await wait_completed(log, storage, watch_dir, "cam.mp4", timeout_s=90)
    assert producer.poll() is None and consumer.poll() is None
    await assert_nothing_open(storage)


async def test_s3_outage_of_ten_seconds_mid_upload_is_waited_out(
    services: Services, processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    assert services.s3 is not None, "needs the tests' own weed mini to stop it"
    processes.start("producer")
    consumer = processes.start("consumer")
    async with recording(watch_dir / "cam.mp4"):
        await parts_sent(log, "cam.mp4", 1)
        services.s3.stop()
        await asyncio.sleep(10)  # the outage the issue asks for, writes going on
        services.s3.start()
        await parts_sent(log, "cam.mp4", 4)

    await wait_completed(log, storage, watch_dir, "cam.mp4", timeout_s=90)
    assert consumer.poll() is None
    await assert_nothing_open(storage)


async def test_truncated_file_aborts_old_stream_and_uploads_new_content(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    path = watch_dir / "cam.mp4"
    path.write_bytes(os.urandom(12 * MIB))
    await parts_sent(log, "cam.mp4", 2)
    first = await stream_of(log, "cam.mp4")
    assert first is not None

    with path.open("r+b") as f:
        f.truncate(MIB)
        f.seek(0)
        f.write(os.urandom(3 * MIB))

    state = await wait_completed(log, storage, watch_dir, "cam.mp4")
    assert state.stream_id != first.stream_id
    old = await StateReader(log.redis, log.keys).stream(first.stream_id)
    assert old is not None and old.status in {"aborted", "completed"}
    await assert_nothing_open(storage)


async def test_file_replaced_under_the_same_name_becomes_a_new_stream(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    async with recording(watch_dir / "cam.mp4"):
        await parts_sent(log, "cam.mp4", 1)
    first = await stream_of(log, "cam.mp4")
    assert first is not None
    (watch_dir / "new.tmp").write_bytes(os.urandom(2 * MIB))
    os.replace(watch_dir / "new.tmp", watch_dir / "cam.mp4")

    state = await wait_completed(log, storage, watch_dir, "cam.mp4")

    assert state.stream_id != first.stream_id
    await status_of(log, "cam.mp4", "completed")
    await assert_nothing_open(storage)


async def test_file_that_grows_after_completion_brings_the_object_up_to_date(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    path = watch_dir / "cam.mp4"
    path.write_bytes(os.urandom(6 * MIB))
    first = await wait_completed(log, storage, watch_dir, "cam.mp4")

    with path.open("ab") as f:
        f.write(os.urandom(2 * MIB))

    state = await wait_completed(log, storage, watch_dir, "cam.mp4")
    assert state.stream_id != first.stream_id
    assert state.size_bytes == 8 * MIB
    await assert_nothing_open(storage)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
async def test_unreadable_file_fails_its_stream_with_the_reason_and_others_go_on(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    processes.start("producer")
    # Root without capabilities cannot read a file of mode 000, as any user could not.
    processes.start("consumer", prefix=("setpriv", "--inh-caps=-all", "--bounding-set=-all"))
    locked = watch_dir / "locked.mp4"
    locked.write_bytes(os.urandom(MIB))
    locked.chmod(0)
    (watch_dir / "open.mp4").write_bytes(os.urandom(MIB))

    await status_of(log, "locked.mp4", "failed")
    await wait_completed(log, storage, watch_dir, "open.mp4")
    state = await stream_of(log, "locked.mp4")
    assert state is not None and "Permission denied" in state.reason
    await assert_nothing_open(storage)


async def test_poison_entries_are_dead_lettered_and_the_pipeline_goes_on(
    pipeline: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    good = {"size": 1, "mtime_ns": 1, "inode": 1, "device": 1}
    poison: list[dict[bytes, bytes]] = [
        {FIELD: b"not json at all"},
        {b"something": b"else"},
        {FIELD: b'{"type": "NoSuchEvent", "path": "a.mp4"}'},
        {FIELD: b'{"type": "FileWritten", "path": "a.mp4", "size": "big"}'},
        {FIELD: encode(FileWritten(path="../../etc/passwd.mp4", **good))},
        {FIELD: encode(FileWritten(path="/etc/passwd.mp4", **good))},
    ]
    for fields in poison:
        await log.redis.xadd(log.keys.events, fields)  # type: ignore[arg-type]
    (watch_dir / "after.mp4").write_bytes(os.urandom(MIB))

    await wait_completed(log, storage, watch_dir, "after.mp4")

    async def all_dead() -> bool:
        return await log.redis.xlen(log.keys.dead) == len(poison)

    await eventually(all_dead, 30, "every poison entry dead-lettered")
    dead: list[tuple[bytes, dict[bytes, bytes]]] = await log.redis.xrange(log.keys.dead)  # type: ignore[assignment]
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert sum("outside WATCH_DIR" in r for r in reasons) == 2
    assert sum("cannot decode" in r for r in reasons) == 4
    assert dead[0][1][b"field:event"] == b"not json at all"
    assert (await log.info()).dead_letters == len(poison)

    async def nothing_pending() -> bool:
        groups = {g.name: g for g in await log.groups()}
        return groups[UPLOADERS].pending == 0

    await eventually(nothing_pending, 30, "every entry acknowledged")
    await assert_nothing_open(storage)


async def test_entry_delivered_too_often_is_dead_lettered(
    processes: Processes, log: EventLog
) -> None:
    await log.ensure_groups()
    entry_id = await log.append(FileWritten(path="x.mp4", size=1, mtime_ns=1, inode=1, device=1))
    # A consumer that keeps dying on this entry: read, then claimed again and again.
    await log.redis.xreadgroup(UPLOADERS, "doomed", {log.keys.events: ">"}, count=1)
    for _ in range(3):
        await log.redis.xclaim(log.keys.events, UPLOADERS, "doomed", 0, [entry_id])

    processes.start("consumer", CLAIM_IDLE_SECONDS="1", DEAD_LETTER_AFTER_DELIVERIES="3")

    async def dead_lettered() -> bool:
        return await log.redis.xlen(log.keys.dead) == 1

    await eventually(dead_lettered, 30, "entry dead-lettered")
    dead: list[tuple[bytes, dict[bytes, bytes]]] = await log.redis.xrange(log.keys.dead)  # type: ignore[assignment]
    [(_, fields)] = dead
    assert b"not handled after 3 tries" in fields[b"reason"]
    assert fields[b"entry_id"] == entry_id


async def test_orphaned_uploads_are_aborted_and_live_ones_kept(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    await storage.ensure_bucket()
    # An uploader that died right after CreateMultipartUpload, its intent recorded.
    await UploadIntents(log.redis, log.keys).intend("orphan", "lost/orphan.mp4")
    orphan = await storage.create_upload("lost/orphan.mp4", "orphan")
    processes.start("producer")
    processes.start(
        "consumer", ORPHAN_UPLOAD_GRACE_SECONDS="0", ORPHAN_CHECK_INTERVAL_SECONDS="0.5"
    )
    async with recording(watch_dir / "live.mp4"):
        await parts_sent(log, "live.mp4", 1)

        async def orphan_gone() -> bool:
            return orphan not in {u.upload_id for u in await storage.open_uploads()}

        await eventually(orphan_gone, 30, "orphan aborted")
        live = await stream_of(log, "live.mp4")
        assert live is not None
        assert live.upload_id in {u.upload_id for u in await storage.open_uploads()}
    await wait_completed(log, storage, watch_dir, "live.mp4")
    await assert_nothing_open(storage)


async def test_sigterm_stops_every_process_promptly_with_exit_code_0(
    processes: Processes, log: EventLog, watch_dir: Path
) -> None:
    started = [processes.start("producer"), processes.start("consumer")]
    async with recording(watch_dir / "cam.mp4"):
        await parts_sent(log, "cam.mp4", 1)
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            assert process.wait(timeout=10) == 0, processes.output()


def test_processes_started_without_redis_wait_for_it(env: dict[str, str], tmp_path: Path) -> None:
    """No process exits because Redis is not there yet; SIGTERM still stops it cleanly."""
    unreachable = {**env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    said = tmp_path / "stderr"
    with said.open("wb") as stderr_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "consumer"],
            env={**os.environ, **unreachable},
            cwd=tmp_path,
            stderr=stderr_file,
        )
    try:
        # Running, and waiting for Redis (so its signal handlers are in place).
        deadline = time.monotonic() + 30
        while "redis unavailable" not in said.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, said.read_text()
            time.sleep(0.05)
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=1)
    finally:
        process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert said.read_text().count("redis unavailable") == 1, said.read_text()
