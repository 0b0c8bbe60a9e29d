"""`cefmp4 status` on a busy state: thousands of streams, groups with lag and pending."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cefmp4.common.deadletters import DeadLetters
from cefmp4.common.eventlog import Entry, EventLog
from cefmp4.common.events import (
    AnyEvent,
    PartUploaded,
    StreamAborted,
    StreamCompleted,
    StreamFailed,
    StreamFinalizing,
    UploadStarted,
    now_ms,
)
from cefmp4.common.keys import PROJECTOR, STALE_CHECKER, UPLOADERS
from cefmp4.common.statestore import BATCH, StateReader, StateWriter
from cefmp4.consumer.fold import Fold
from cefmp4.consumer.retention import take_snapshot
from cefmp4.status import CLEAR_SCREEN
from tests.conftest import eventually
from tests.test_cli import cefmp4
from tests.test_projector import append_all, history, project_until

STREAMS = 3000
PART = 5 * 1024 * 1024
TAIL = 1234
FATES = ("completed", "failed", "aborted", "finalizing", "active")


def fate(n: int) -> str:
    return FATES[n % 5]


def full_parts(n: int) -> int:
    return n % 4


def stream_events(n: int, base_ms: int) -> list[AnyEvent]:
    sid, path = f"s{n:05d}", f"cam{n % 10}/rec{n}.mp4"
    created = base_ms + n * 1000
    size = full_parts(n) * PART + TAIL
    events: list[AnyEvent] = [
        UploadStarted(
            stream_id=sid,
            path=path,
            s3_key=f"media/{path}",
            upload_id=f"u{n}",
            inode=n,
            device=1,
            size=size,
            at_ms=created,
        )
    ]
    parts = full_parts(n) + (1 if fate(n) == "completed" else 0)
    for p in range(1, parts + 1):
        tail = p > full_parts(n)
        events.append(
            PartUploaded(
                stream_id=sid,
                path=path,
                part_number=p,
                offset=(p - 1) * PART,
                length=TAIL if tail else PART,
                crc32=p,
                etag=f"e{p}",
                file_size=size,
                at_ms=created + 100 * p,
            )
        )
    end = created + 900
    match fate(n):
        case "completed":
            events.append(StreamFinalizing(stream_id=sid, path=path, size=size, at_ms=end - 1))
            events.append(
                StreamCompleted(
                    stream_id=sid, path=path, size=size, etag="x", mtime_ns=1, at_ms=end
                )
            )
        case "failed":
            events.append(StreamFailed(stream_id=sid, path=path, reason="file deleted", at_ms=end))
        case "aborted":
            events.append(
                StreamAborted(stream_id=sid, path=path, reason="file truncated", at_ms=end)
            )
        case "finalizing":
            events.append(StreamFinalizing(stream_id=sid, path=path, size=size, at_ms=end))
    return events


def expected_stream(n: int, base_ms: int, now: int) -> dict[str, Any]:
    """What status must say of stream `n`, worked out from how it was seeded."""
    status = fate(n)
    created = base_ms + n * 1000
    size = full_parts(n) * PART + TAIL
    uploaded = full_parts(n) * PART + (TAIL if status == "completed" else 0)
    parts = full_parts(n) + (1 if status == "completed" else 0)
    updated = created + 900 if status != "active" else created + 100 * parts
    ended = status in {"completed", "failed", "aborted"}
    elapsed = (updated if ended else now) - created
    return {
        "stream_id": f"s{n:05d}",
        "path": f"cam{n % 10}/rec{n}.mp4",
        "s3_key": f"media/cam{n % 10}/rec{n}.mp4",
        "status": status,
        "size_bytes": size,
        "uploaded_bytes": uploaded,
        "parts": parts,
        "created_at_ms": created,
        "updated_at_ms": updated,
        "completed_at_ms": created + 900 if status == "completed" else None,
        "reason": {"failed": "file deleted", "aborted": "file truncated"}.get(status),
        "retry_at_ms": 0 if status == "failed" else None,
        "progress": round(min(uploaded / size, 1.0), 4),
        "rate_bytes_per_s": round(uploaded * 1000 / elapsed),
        "age_s": round((now - created) / 1000, 3),
        "idle_s": round((now - updated) / 1000, 3),
        "on_disk_bytes": None,  # none of these files is on disk
        "in_flight_bytes": 0,
        "local_file": None,
    }


class Busy:
    def __init__(self, base_ms: int, ids: list[bytes], snapshot_at_ms: int) -> None:
        self.base_ms = base_ms
        self.ids = ids
        self.snapshot_at_ms = snapshot_at_ms


@pytest.fixture
async def busy(log: EventLog) -> Busy:
    """3000 streams folded by the projector's Fold; a log with groups in every state."""
    base_ms = now_ms() - 2 * 3600 * 1000 - STREAMS * 1000
    fold = Fold()
    for n in range(STREAMS):
        for i, event in enumerate(stream_events(n, base_ms)):
            fold.add(f"{event.at_ms}-{i}".encode(), event)
    done = fold.take_changes()
    async with StateWriter(log.redis, log.keys).transaction() as changes:
        for state, parts in done.streams:
            changes.put_stream(state, parts)
        changes.put_paths(done.paths)

    await log.ensure_groups()
    await append_all(log, history(3))
    entries: Any = await log.redis.xrange(log.keys.events)
    ids: list[bytes] = [entry_id for entry_id, _ in entries]
    # Uploaders: 5 delivered to up-1, 2 of them acknowledged. Stale checker: all done.
    await log.redis.xreadgroup(UPLOADERS, "up-1", {log.keys.events: ">"}, count=5)
    await log.redis.xack(log.keys.events, UPLOADERS, ids[0], ids[1])
    await log.redis.xreadgroup(STALE_CHECKER, "stale-1", {log.keys.events: ">"})
    await log.redis.xack(log.keys.events, STALE_CHECKER, *ids)
    for n in range(2):
        entry = Entry(ids[n], {b"event": b"not json %d" % n})
        await DeadLetters(log.redis, log.keys).set_aside(UPLOADERS, entry, f"cannot decode: {n}")
    await log.redis.set(log.keys.lease(PROJECTOR), "host-a-1", px=60_000)
    await log.redis.set(log.keys.projector_position, ids[-1])
    assert await take_snapshot(log.redis, log.keys, ids[-1]) == STREAMS
    snapshot = await StateReader(log.redis, log.keys).snapshot_info()
    assert snapshot is not None
    return Busy(base_ms, ids, snapshot.created_at_ms)


async def test_status_json_reports_every_stream_group_lease_and_the_log(
    busy: Busy, log: EventLog, env: dict[str, str], tmp_path: Path
) -> None:
    commands: list[str] = []
    marker = f"status-done-{os.getpid()}"
    monitoring = asyncio.Event()

    async def record_commands() -> None:
        async with log.redis.monitor() as monitor:
            monitoring.set()
            while True:
                command = (await monitor.next_command())["command"]
                if marker in command:
                    return
                if log.keys.prefix in command:
                    commands.append(command)

    recorder = asyncio.create_task(record_commands())
    await asyncio.wait_for(monitoring.wait(), 10)
    result = await asyncio.to_thread(cefmp4, env, "status", "--json", "--limit", "7", cwd=tmp_path)
    await log.redis.echo(marker)
    await asyncio.wait_for(recorder, 30)

    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    now = status["now_ms"]
    # Every open stream (active, then finalizing, each by creation), then the 7 that ended
    # last, newest first.
    active = [n for n in range(STREAMS) if fate(n) == "active"]
    finalizing = [n for n in range(STREAMS) if fate(n) == "finalizing"]
    finished = [
        n for n in reversed(range(STREAMS)) if fate(n) in {"completed", "failed", "aborted"}
    ]
    shown = active + finalizing + finished[:7]
    assert [s["stream_id"] for s in status["streams"]] == [f"s{n:05d}" for n in shown]
    for index, n in enumerate(shown):
        assert status["streams"][index] == expected_stream(n, busy.base_ms, now), n
    assert status["totals"] == dict.fromkeys(FATES, STREAMS // 5)
    assert status["pruned"] == 0
    ids = [i.decode() for i in busy.ids]
    groups = {g["name"]: g for g in status["groups"]}
    assert set(groups) == {UPLOADERS, PROJECTOR, STALE_CHECKER}
    [member] = groups[UPLOADERS].pop("members")
    assert member["name"] == "up-1" and member["pending"] == 3 and member["idle_ms"] >= 0
    assert groups[UPLOADERS] == {
        "name": UPLOADERS,
        "consumers": 1,
        "pending": 3,
        "lag": len(ids) - 5,
        "last_delivered_id": ids[4],
        "oldest_pending_id": ids[2],
    }
    assert groups[PROJECTOR] == {
        "name": PROJECTOR,
        "consumers": 0,
        "pending": 0,
        "lag": len(ids),
        "last_delivered_id": "0-0",
        "oldest_pending_id": None,
        "members": [],
    }
    assert groups[STALE_CHECKER]["pending"] == 0
    assert groups[STALE_CHECKER]["lag"] == 0
    assert groups[STALE_CHECKER]["last_delivered_id"] == ids[-1]
    projector_lease = status["leases"][PROJECTOR]
    assert projector_lease["holder"] == "host-a-1"
    assert 0 < projector_lease["expires_in_ms"] <= 60_000
    assert status["leases"][STALE_CHECKER] == {"holder": None, "expires_in_ms": None}
    assert status["events"] == len(ids)
    assert status["first_event_id"] == ids[0]
    assert status["last_event_id"] == ids[-1]
    assert status["dead_letters"] == 2
    assert status["projector_position"] == ids[-1]
    assert status["snapshot"] == {
        "position": ids[-1],
        "created_at_ms": busy.snapshot_at_ms,
        "streams": STREAMS,
    }

    # Gentle with Redis: no KEYS, no whole-range reads of the stream index.
    names = [command.split()[0].upper() for command in commands]
    assert "KEYS" not in names
    ranges = [command.split() for command in commands if command.upper().startswith("ZRANGE ")]
    assert len(ranges) >= STREAMS // BATCH
    assert all(0 <= int(r[2]) <= int(r[3]) < int(r[2]) + BATCH for r in ranges), ranges


async def test_status_table_has_headings_and_open_streams_first(
    busy: Busy, env: dict[str, str], tmp_path: Path
) -> None:
    result = await asyncio.to_thread(cefmp4, env, "status", "--limit", "3", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    headings = ["PATH", "STATUS", "PROGRESS", "UPLOADED", "SIZE", "PARTS", "RATE", "AGE"]
    assert lines[0].split() == headings
    # The most recently changed open stream: 2999 (active, 3 parts of 5 MiB sent).
    assert lines[1].split()[:9] == [
        "cam9/rec2999.mp4",
        "active",
        "[#########.]",
        "99%",
        "15.0",
        "MiB",
        "15.0",
        "MiB",
        "3",
    ]
    assert lines[1].split()[10:] == ["MiB/s", "2h00m"]
    assert lines[2].split()[:2] == ["cam8/rec2998.mp4", "finalizing"]
    # Then every open stream, and the 3 that ended last.
    shown = 1200 + 3
    assert [line.split()[:2] for line in lines[shown - 2 : shown + 1]] == [
        ["cam7/rec2997.mp4", "aborted"],
        ["cam6/rec2996.mp4", "failed"],
        ["cam5/rec2995.mp4", "completed"],
    ]
    assert lines[shown + 1] == "(1203 of 3000 kept streams shown: the open ones, and --limit)"
    assert lines[shown + 2] == (
        "streams kept: 600 active, 600 finalizing, 600 completed, 600 failed, 600 aborted; "
        "0 finished ones pruned"
    )
    text = result.stdout
    group_header = next(line for line in lines if line.startswith("GROUP"))
    group_headings = ["GROUP", "CONSUMERS", "PENDING", "LAG", "LAST", "DELIVERED", "OLDEST"]
    assert group_header.split() == [*group_headings, "PENDING"]
    uploaders = next(line for line in lines if line.startswith("uploaders "))
    assert uploaders.split()[:4] == ["uploaders", "1", "3", str(len(busy.ids) - 5)]
    leases = lines[lines.index(next(line for line in lines if line.startswith("LEASE"))) :]
    assert leases[0].split() == ["LEASE", "HOLDER", "EXPIRES", "IN"]
    assert leases[1].split()[:2] == ["projector", "host-a-1"]
    assert leases[2].split() == ["stale-checker", "-", "-"]
    assert "dead letters: 2" in text


async def test_status_table_escapes_control_characters_in_paths_and_reasons(
    log: EventLog, env: dict[str, str], tmp_path: Path
) -> None:
    path = "cam\n1/\x1b[2Jrec\x9b.mp4"
    escaped = "cam\\n1/\\x1b[2Jrec\\x9b.mp4"
    await log.ensure_groups()
    last_id = await append_all(
        log,
        [
            UploadStarted(
                stream_id="s1", path=path, s3_key=path, upload_id="u1", inode=1, device=1, size=9
            ),
            StreamFailed(stream_id="s1", path=path, reason=f"cannot read {path}:\nrefused"),
        ],
    )
    await project_until(log, last_id)

    result = await asyncio.to_thread(cefmp4, env, "status", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", result.stdout) is None
    lines = result.stdout.splitlines()
    assert lines[0].startswith("PATH ")
    reason = f"cannot read {escaped}:\\nrefused; retry due"
    assert lines[1].startswith(f"{escaped}  failed ({reason})  [")
    assert lines[2].startswith("streams kept: ")


def start_watching(env: dict[str, str], out_path: Path) -> subprocess.Popen[bytes]:
    with out_path.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cefmp4", "status", "--watch", "--interval", "0.2"],
            env={**os.environ, **env},
            cwd=out_path.parent,
            stdout=out,
            stderr=subprocess.DEVNULL,
        )


async def test_status_watch_refreshes_in_place_until_ctrl_c(
    busy: Busy, env: dict[str, str], tmp_path: Path
) -> None:
    out_path = tmp_path / "watch.out"
    watcher = start_watching(env, out_path)
    try:

        async def refreshed_twice() -> bool:
            return out_path.read_text().count(CLEAR_SCREEN) >= 2

        await eventually(refreshed_twice, 30, "two refreshes")
        watcher.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(watcher.wait, 30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()

    assert code == 0
    screens = out_path.read_text().split(CLEAR_SCREEN)[1:]
    assert all(screen.startswith("PATH ") for screen in screens)
    assert all("dead letters: 2" in screen for screen in screens[:-1])
