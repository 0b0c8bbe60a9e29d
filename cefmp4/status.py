"""`cefmp4 status`: the streams, the log, its consumer groups and the leases, read-only.

`StatusReport` is the document `cefmp4 status --json` prints, a contract other tools read:
change it only by adding fields.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from cefmp4.common import consumer_report
from cefmp4.common.consumer_report import ConsumerReport
from cefmp4.common.eventlog import EventLog, GroupInfo
from cefmp4.common.events import NEVER, now_ms
from cefmp4.common.files import stat_inside
from cefmp4.common.keys import NOTIFIER, PROJECTOR, STALE_CHECKER
from cefmp4.common.lease import LeaseHolder, lease_holders
from cefmp4.common.printable import printable
from cefmp4.common.statestore import (
    OPEN_STATUSES,
    STATUSES,
    SnapshotInfo,
    StateReader,
    StreamSummary,
)
from cefmp4.common.tasks import stopped_within
from cefmp4.consumer.notifier import notify_backlog, notify_report
from cefmp4.consumer.retention import TrimReport, last_trim

LEASE_ROLES = (PROJECTOR, STALE_CHECKER, NOTIFIER)
CLEAR_SCREEN = "\x1b[H\x1b[2J"
BAR_WIDTH = 10


class StreamStatus(msgspec.Struct, frozen=True):
    stream_id: str
    path: str
    s3_key: str
    status: str
    size_bytes: int
    uploaded_bytes: int
    parts: int
    created_at_ms: int
    updated_at_ms: int
    completed_at_ms: int | None
    reason: str | None
    retry_at_ms: int | None  # of a failed recording: when it is tried again; -1: never by itself
    progress: float  # uploaded / size
    rate_bytes_per_s: int | None  # from the stream's start to its end, or to now while open
    age_s: float  # since it started
    idle_s: float  # since its last recorded step
    # an open stream's file size now, where status can see WATCH_DIR (None: it cannot)
    on_disk_bytes: int | None = None
    in_flight_bytes: int = 0  # of its parts being sent now, read by the HTTP client so far
    local_file: str | None = None  # of a completed stream: deleted, moved or gone (AFTER_UPLOAD)


class NotifyStatus(msgspec.Struct, frozen=True):
    """Posting completions to NOTIFY_URL: present once the notifier's group exists."""

    pending: int  # completions not yet answered with a 2xx, read or not
    delivered: int  # posts answered with a 2xx so far
    failures: int  # posts that failed so far (each try counts)
    last_delivered_at_ms: int | None
    last_error: str | None
    last_error_at_ms: int | None


class StatusReport(msgspec.Struct, frozen=True):
    now_ms: int
    streams: list[StreamStatus]  # every open stream, then the latest finished ones
    totals: dict[str, int]  # kept streams in each status, from the state's indexes
    groups: list[GroupInfo]
    leases: dict[str, LeaseHolder]
    events: int
    first_event_id: str | None
    last_event_id: str | None
    dead_letters: int
    projector_position: str | None
    snapshot: SnapshotInfo | None
    trim: TrimReport | None  # the last trim of the log: how far, and what held it back
    pruned: int = 0  # finished streams pruned from the state so far
    completions: int = 0  # entries in the public completions stream
    notify: NotifyStatus | None = None
    # what each running consumer reports: its rate limit, its rate, the parts it sends
    consumers: list[ConsumerReport] = msgspec.field(default_factory=list)


def stream_status(summary: StreamSummary, now: int) -> StreamStatus:
    ended = summary.status not in OPEN_STATUSES
    size, uploaded = summary.size_bytes, summary.uploaded_bytes
    # A completed stream may have sent nothing: its object was already there (recognized).
    progress = 1.0 if summary.status == "completed" else min(uploaded / size, 1.0) if size else 0.0
    elapsed_ms = (summary.updated_at_ms if ended else now) - summary.created_at_ms
    return StreamStatus(
        stream_id=summary.stream_id,
        path=summary.path,
        s3_key=summary.s3_key,
        status=summary.status,
        size_bytes=size,
        uploaded_bytes=uploaded,
        parts=summary.part_count,
        created_at_ms=summary.created_at_ms,
        updated_at_ms=summary.updated_at_ms,
        completed_at_ms=summary.completed_at_ms or None,
        reason=summary.reason or None,
        retry_at_ms=summary.retry_at_ms if summary.status == "failed" else None,
        progress=round(progress, 4),
        rate_bytes_per_s=round(uploaded * 1000 / elapsed_ms) if elapsed_ms > 0 else None,
        age_s=round((now - summary.created_at_ms) / 1000, 3),
        idle_s=round((now - summary.updated_at_ms) / 1000, 3),
        local_file=summary.local_file or None,
    )


def _on_disk(watch_dir: Path | None, paths: list[str]) -> dict[str, int]:
    """The size now of each of `paths` found under `watch_dir`."""
    if watch_dir is None:
        return {}
    root = watch_dir.expanduser().resolve()
    if not root.is_dir():
        return {}
    sizes = {}
    for path in paths:
        st = stat_inside(root, path)
        if st is not None:
            sizes[path] = st.st_size
    return sizes


def _in_flight(consumers: list[ConsumerReport]) -> dict[str, int]:
    """Bytes of each object's parts that consumers are sending now, read so far."""
    sending: dict[str, int] = {}
    for consumer in consumers:
        for part in consumer.parts_in_flight:
            sending[part.s3_key] = sending.get(part.s3_key, 0) + part.sent_bytes
    return sending


async def gather(
    log: EventLog, now: int | None = None, finished: int = 50, watch_dir: Path | None = None
) -> StatusReport:
    """The report, with every open stream and the `finished` ones that ended last.

    With `watch_dir` (where this box sees the recordings), open streams say their size on
    disk now; the consumers' reports say the bytes of the parts they are sending.
    """
    now = now_ms() if now is None else now
    reader = StateReader(log.redis, log.keys)
    summaries = await reader.open_summaries()
    open_paths = [s.path for s in summaries]
    if finished > 0:
        summaries += await reader.finished_summaries(finished)
    info = await log.info()
    position = await reader.stored_position()
    consumers = await consumer_report.current(log.redis, log.keys, now)
    on_disk = await asyncio.to_thread(_on_disk, watch_dir, open_paths)
    sending = _in_flight(consumers)
    streams = []
    for summary in summaries:
        shown = stream_status(summary, now)
        if summary.status in OPEN_STATUSES:
            shown = msgspec.structs.replace(
                shown,
                on_disk_bytes=on_disk.get(summary.path),
                in_flight_bytes=sending.get(summary.s3_key, 0),
            )
        streams.append(shown)
    return StatusReport(
        now_ms=now,
        streams=streams,
        totals=await reader.count_by_status(),
        groups=await log.groups(),
        leases=await lease_holders(log.redis, log.keys, LEASE_ROLES),
        events=info.events,
        first_event_id=info.first_event_id,
        last_event_id=info.last_event_id,
        dead_letters=info.dead_letters,
        projector_position=position.decode() if position else None,
        snapshot=await reader.snapshot_info(),
        trim=await last_trim(log.redis, log.keys),
        pruned=await reader.pruned_count(),
        consumers=consumers,
        completions=await log.redis.xlen(log.keys.completed),
        notify=await _notify_status(log),
    )


async def _notify_status(log: EventLog) -> NotifyStatus | None:
    pending = await notify_backlog(log.redis, log.keys)
    if pending is None:
        return None
    report = await notify_report(log.redis, log.keys)
    return NotifyStatus(
        pending=pending,
        delivered=report.delivered if report else 0,
        failures=report.failures if report else 0,
        last_delivered_at_ms=report.last_delivered_at_ms if report else None,
        last_error=report.last_error if report else None,
        last_error_at_ms=report.last_error_at_ms if report else None,
    )


# --- rendering ------------------------------------------------------------------


def render_table(report: StatusReport) -> str:
    """Streams (open ones first, then the most recently changed), groups, leases, log.

    Paths and reasons come from file names and error messages, so their control characters
    are shown escaped.
    """
    shown = sorted(report.streams, key=lambda s: (s.status not in OPEN_STATUSES, -s.updated_at_ms))
    rows = [("PATH", "STATUS", "PROGRESS", "UPLOADED", "SIZE", "PARTS", "RATE", "AGE")]
    for s in shown:
        # An open stream: its size on disk when known, and the part bytes on their way.
        size = max(s.size_bytes, s.on_disk_bytes or 0)
        moving = s.uploaded_bytes + s.in_flight_bytes
        progress = min(moving / size, 1.0) if size else s.progress
        sending = f" +{_mib(s.in_flight_bytes)} sending" if s.in_flight_bytes else ""
        rows.append(
            (
                printable(s.path),
                s.status + _why(s, report.now_ms),
                _bar(progress),
                _mib(s.uploaded_bytes) + sending,
                _mib(size),
                str(s.parts),
                _rate(s.rate_bytes_per_s),
                _duration(s.age_s),
            )
        )
    lines = columns(rows)
    kept = sum(report.totals.values())
    if len(shown) < kept:
        lines.append(f"({len(shown)} of {kept} kept streams shown: the open ones, and --limit)")
    lines.append(
        "streams kept: "
        + ", ".join(f"{report.totals[name]} {name}" for name in STATUSES)
        + f"; {report.pruned} finished ones pruned"
    )
    lines.append("")
    group_rows = [("GROUP", "CONSUMERS", "PENDING", "LAG", "LAST DELIVERED", "OLDEST PENDING")]
    for g in report.groups:
        group_rows.append(
            (
                g.name,
                str(g.consumers),
                str(g.pending),
                "?" if g.lag is None else str(g.lag),
                g.last_delivered_id,
                g.oldest_pending_id or "-",
            )
        )
    lines.extend(columns(group_rows))
    lines.append("")
    if report.consumers:
        uploader_rows = [("UPLOADER", "RATE LIMIT", "SENDING", "PARTS IN FLIGHT")]
        for c in report.consumers:
            limit = c.rate_limit_bytes_per_s
            uploader_rows.append(
                (
                    printable(c.consumer),
                    "none" if limit is None else _mbit(limit),
                    _mbit(c.sent_bytes_per_s),
                    str(len(c.parts_in_flight)),
                )
            )
        lines.extend(columns(uploader_rows))
        lines.append("")
    lease_rows = [("LEASE", "HOLDER", "EXPIRES IN")]
    for role, lease in report.leases.items():
        expires = lease.expires_in_ms
        lease_rows.append(
            (role, lease.holder or "-", "-" if expires is None else _duration(expires / 1000))
        )
    lines.extend(columns(lease_rows))
    lines.append("")
    snapshot = report.snapshot
    snapshot_text = (
        f"snapshot at {snapshot.position} "
        f"({_duration((report.now_ms - snapshot.created_at_ms) / 1000)} ago)"
        if snapshot
        else "no snapshot"
    )
    lines.append(
        f"log: {report.events} events, projector at {report.projector_position or '-'}, "
        f"{snapshot_text}"
    )
    if report.trim is not None:
        lines.append(
            f"log trimmed up to {report.trim.floor}, held back by {report.trim.held_by} "
            f"({_duration((report.now_ms - report.trim.at_ms) / 1000)} ago)"
        )
    lines.append(f"dead letters: {report.dead_letters}")
    lines.append(f"completions published: {report.completions} kept")
    if report.notify is not None:
        lines.append(_notify_line(report.notify, report.now_ms))
    return "\n".join(lines)


def _notify_line(notify: NotifyStatus, now: int) -> str:
    line = (
        f"notify: {notify.pending} pending, {notify.delivered} posted, "
        f"{notify.failures} failed posts"
    )
    if notify.last_error is not None and notify.last_error_at_ms is not None:
        ago = _duration((now - notify.last_error_at_ms) / 1000)
        line += f"; last failure {ago} ago: {printable(notify.last_error)}"
    return line


def _why(s: StreamStatus, now: int) -> str:
    """The reason a stream ended, and when a failed one is tried again."""
    notes = [printable(s.reason)] if s.reason else []
    if s.local_file:
        notes.append(f"file {s.local_file}")
    if s.retry_at_ms == NEVER:
        notes.append("retried when its file changes")
    elif s.retry_at_ms is not None and s.retry_at_ms > now:
        notes.append(f"retry in {_duration((s.retry_at_ms - now) / 1000)}")
    elif s.retry_at_ms is not None:
        notes.append("retry due")
    return f" ({'; '.join(notes)})" if notes else ""


def columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """`rows` as lines of columns, each as wide as its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _bar(progress: float) -> str:
    filled = int(progress * BAR_WIDTH)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {int(progress * 100):3d}%"


def _mib(value: int) -> str:
    return f"{value / 1048576:.1f} MiB"


def _rate(bytes_per_s: int | None) -> str:
    return "-" if bytes_per_s is None else f"{bytes_per_s / 1048576:.1f} MiB/s"


def _mbit(bytes_per_s: int) -> str:
    return f"{bytes_per_s * 8 / 1_000_000:.1f} Mbit/s"


def _duration(seconds: float) -> str:
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


# --- the command ------------------------------------------------------------------


async def show(
    log: EventLog,
    stop: asyncio.Event,
    *,
    as_json: bool,
    watch: bool,
    interval_s: float,
    limit: int,
    watch_dir: Path | None = None,
) -> int:
    """Print the status once, or with `watch` every `interval_s` until `stop`."""
    while True:
        report = await gather(log, finished=limit, watch_dir=watch_dir)
        if as_json:
            # Watching gives one JSON object per line; once gives it indented.
            raw = msgspec.json.encode(report)
            text = raw.decode() if watch else msgspec.json.format(raw, indent=2).decode()
        else:
            text = render_table(report)
            if watch:
                text = CLEAR_SCREEN + text
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        if not watch or await stopped_within(stop, max(interval_s, 0.1)):
            return 0
