"""`cefmp4 status`: what the projection says, plus the log, its groups and the leases.

Read-only, and gentle with a busy Redis: stream ids come in slices of the sorted set
and the hashes in pipelined batches, so no single command walks thousands of keys
(never KEYS, never a whole-range ZRANGE).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections import Counter
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from redis.exceptions import ResponseError

from common.events import now_ms
from common.keys import PROJECTOR, STALE_CHECKER, Keys
from common.log import EventLog, Redis
from common.state import StreamState, state_from_hashes

BATCH = 500
LEASE_ROLES = (PROJECTOR, STALE_CHECKER)
STATUSES = ("active", "finalizing", "completed", "failed", "aborted")
CLEAR_SCREEN = "\x1b[H\x1b[2J"
BAR_WIDTH = 10

# The fields of a stream hash the status shows, in this order.
_FIELDS = (
    "stream_id",
    "path",
    "s3_key",
    "status",
    "size_bytes",
    "uploaded_bytes",
    "part_count",
    "created_at_ms",
    "updated_at_ms",
    "completed_at_ms",
    "reason",
)


async def _stream_id_slices(redis: Redis, keys: Keys) -> AsyncGenerator[list[str], None]:
    """Stream ids in creation order, BATCH at a time."""
    start = 0
    while True:
        chunk: list[bytes] = await redis.zrange(keys.streams, start, start + BATCH - 1)  # type: ignore[assignment]
        if not chunk:
            return
        start += len(chunk)
        yield [raw.decode() for raw in chunk]


async def read_streams(redis: Redis, keys: Keys) -> list[StreamState]:
    """Every stream's full state, parts included."""
    states: list[StreamState] = []
    async for ids in _stream_id_slices(redis, keys):
        async with redis.pipeline(transaction=False) as pipe:
            for stream_id in ids:
                pipe.hgetall(keys.stream(stream_id))
                pipe.hgetall(keys.parts(stream_id))
            replies = await pipe.execute()
        for fields, parts in zip(replies[::2], replies[1::2], strict=True):
            state = state_from_hashes(fields, parts)
            if state is not None:
                states.append(state)
    return states


async def read_summaries(redis: Redis, keys: Keys, now: int) -> list[dict[str, Any]]:
    """One summary per stream, from the stream hashes alone (the parts are not read)."""
    summaries: list[dict[str, Any]] = []
    async for ids in _stream_id_slices(redis, keys):
        async with redis.pipeline(transaction=False) as pipe:
            for stream_id in ids:
                pipe.hmget(keys.stream(stream_id), _FIELDS)
            replies: list[list[bytes | None]] = await pipe.execute()
        for values in replies:
            if values[0] is not None:
                summaries.append(_summary(dict(zip(_FIELDS, values, strict=True)), now))
    return summaries


def _summary(raw: Mapping[str, bytes | None], now: int) -> dict[str, Any]:
    def text(name: str) -> str:
        value = raw[name]
        return value.decode() if value is not None else ""

    def number(name: str) -> int:
        value = raw[name]
        return int(value) if value is not None else 0

    status = text("status")
    size, uploaded = number("size_bytes"), number("uploaded_bytes")
    created, updated = number("created_at_ms"), number("updated_at_ms")
    ended = status in {"completed", "failed", "aborted"}
    done_if_empty = 1.0 if status == "completed" else 0.0
    progress = min(uploaded / size, 1.0) if size else done_if_empty
    elapsed_ms = (updated if ended else now) - created
    return {
        "stream_id": text("stream_id"),
        "path": text("path"),
        "s3_key": text("s3_key"),
        "status": status,
        "size_bytes": size,
        "uploaded_bytes": uploaded,
        "parts": number("part_count"),
        "created_at_ms": created,
        "updated_at_ms": updated,
        "completed_at_ms": number("completed_at_ms") or None,
        "reason": text("reason") or None,
        "progress": round(progress, 4),
        "rate_bytes_per_s": round(uploaded * 1000 / elapsed_ms) if elapsed_ms > 0 else None,
        "age_s": round((now - created) / 1000, 3),
        "idle_s": round((now - updated) / 1000, 3),
    }


def stream_summary(state: StreamState, now: int | None = None) -> dict[str, Any]:
    """The status summary of one state (as `read_summaries` gives it from Redis)."""
    fields = state.scalar_fields()
    raw = {name: str(fields[name]).encode() for name in _FIELDS}
    return _summary(raw, now_ms() if now is None else now)


async def xinfo_groups(redis: Redis, keys: Keys) -> list[dict[Any, Any]]:
    """XINFO GROUPS of the log, as redis-py gives it; empty while there is no log."""
    try:
        groups: list[dict[Any, Any]] = await redis.xinfo_groups(keys.events)
    except ResponseError:
        return []
    return groups


async def read_groups(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    groups = await xinfo_groups(redis, keys)
    names = [_text(group["name"]) for group in groups]
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.xinfo_consumers(keys.events, name)
            pipe.xpending(keys.events, name)
        replies = await pipe.execute()
    found: list[dict[str, Any]] = []
    for group, consumers, pending in zip(groups, replies[::2], replies[1::2], strict=True):
        found.append(
            {
                "name": _text(group["name"]),
                "consumers": int(group["consumers"]),
                "pending": int(group["pending"]),
                "lag": int(group["lag"]) if group.get("lag") is not None else None,
                "last_delivered_id": _text(group["last-delivered-id"]),
                "oldest_pending_id": _text(pending["min"]) if pending.get("min") else None,
                "members": [
                    {
                        "name": _text(c["name"]),
                        "pending": int(c["pending"]),
                        "idle_ms": int(c["idle"]),
                    }
                    for c in consumers
                ],
            }
        )
    return found


async def read_leases(redis: Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    async with redis.pipeline(transaction=False) as pipe:
        for role in LEASE_ROLES:
            pipe.get(keys.lease(role))
            pipe.pttl(keys.lease(role))
        replies = await pipe.execute()
    return {
        role: {
            "holder": _text(holder) if holder is not None else None,
            "expires_in_ms": int(ttl) if holder is not None and ttl >= 0 else None,
        }
        for role, holder, ttl in zip(LEASE_ROLES, replies[::2], replies[1::2], strict=True)
    }


async def read_log(redis: Redis, keys: Keys) -> dict[str, Any]:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(keys.events)
        pipe.xrange(keys.events, count=1)
        pipe.xrevrange(keys.events, count=1)
        pipe.xlen(keys.dead)
        pipe.get(keys.projector_position)
        pipe.hmget(keys.snapshot, ["position", "created_at_ms", "streams"])
        events, first, last, dead, position, snapshot = await pipe.execute()
    snap_position, snap_created, snap_streams = snapshot
    return {
        "events": int(events),
        "first_event_id": _text(first[0][0]) if first else None,
        "last_event_id": _text(last[0][0]) if last else None,
        "dead_letters": int(dead),
        "projector_position": _text(position) if position else None,
        "snapshot": (
            {
                "position": _text(snap_position),
                "created_at_ms": int(snap_created),
                "streams": int(snap_streams or 0),
            }
            if snap_position is not None and snap_created is not None
            else None
        ),
    }


async def gather_status(redis: Redis, keys: Keys, now: int | None = None) -> dict[str, Any]:
    now = now_ms() if now is None else now
    streams = await read_summaries(redis, keys, now)
    totals = Counter(s["status"] for s in streams)
    return {
        "now_ms": now,
        "streams": streams,
        "totals": {status: totals.get(status, 0) for status in STATUSES},
        "groups": await read_groups(redis, keys),
        "leases": await read_leases(redis, keys),
        **await read_log(redis, keys),
    }


# --- rendering ------------------------------------------------------------------


def render_table(status: dict[str, Any], limit: int = 0) -> str:
    """Streams (open ones first, then the most recently changed), groups, leases, log.

    `limit` > 0 shows at most that many streams.
    """
    streams = sorted(
        status["streams"],
        key=lambda s: (s["status"] not in {"active", "finalizing"}, -s["updated_at_ms"]),
    )
    shown = streams[:limit] if limit > 0 else streams
    rows = [("PATH", "STATUS", "PROGRESS", "UPLOADED", "SIZE", "PARTS", "RATE", "AGE")]
    for s in shown:
        rows.append(
            (
                s["path"],
                s["status"] + (f" ({s['reason']})" if s["reason"] else ""),
                _bar(s["progress"]),
                _mib(s["uploaded_bytes"]),
                _mib(s["size_bytes"]),
                str(s["parts"]),
                _rate(s["rate_bytes_per_s"]),
                _duration(s["age_s"]),
            )
        )
    lines = _columns(rows)
    if len(shown) < len(streams):
        lines.append(f"({len(shown)} of {len(streams)} streams shown; --limit 0 shows all)")
    totals = status["totals"]
    lines.append("streams: " + ", ".join(f"{totals[name]} {name}" for name in STATUSES))
    lines.append("")
    group_rows = [("GROUP", "CONSUMERS", "PENDING", "LAG", "LAST DELIVERED", "OLDEST PENDING")]
    for g in status["groups"]:
        group_rows.append(
            (
                g["name"],
                str(g["consumers"]),
                str(g["pending"]),
                "?" if g["lag"] is None else str(g["lag"]),
                g["last_delivered_id"],
                g["oldest_pending_id"] or "-",
            )
        )
    lines.extend(_columns(group_rows))
    lines.append("")
    lease_rows = [("LEASE", "HOLDER", "EXPIRES IN")]
    for role, lease in status["leases"].items():
        expires = lease["expires_in_ms"]
        lease_rows.append(
            (
                role,
                lease["holder"] or "-",
                "-" if expires is None else _duration(expires / 1000),
            )
        )
    lines.extend(_columns(lease_rows))
    lines.append("")
    snapshot = status["snapshot"]
    snapshot_text = (
        f"snapshot at {snapshot['position']} "
        f"({_duration((status['now_ms'] - snapshot['created_at_ms']) / 1000)} ago)"
        if snapshot
        else "no snapshot"
    )
    lines.append(
        f"log: {status['events']} events, projector at {status['projector_position'] or '-'}, "
        f"{snapshot_text}"
    )
    lines.append(f"dead letters: {status['dead_letters']}")
    return "\n".join(lines)


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
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


def _duration(seconds: float) -> str:
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- the command ------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    parser.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="refresh period (2)"
    )
    parser.add_argument(
        "--limit", type=int, default=50, metavar="N", help="streams in the table (50; 0: all)"
    )


async def command(log: EventLog, args: argparse.Namespace, stop: asyncio.Event) -> int:
    """Print the status once, or with --watch every --interval seconds until `stop`."""
    while True:
        status = await gather_status(log.redis, log.keys)
        if args.json:
            # Watching gives one JSON object per line; once gives it indented.
            text = json.dumps(status, indent=None if args.watch else 2)
        else:
            text = render_table(status, limit=args.limit)
            if args.watch:
                text = CLEAR_SCREEN + text
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        if not args.watch:
            return 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(args.interval, 0.1))
        if stop.is_set():
            return 0
