"""`cefmp4 status`: what the projection says, plus the log's consumer groups. Read-only."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from common.keys import Keys
from common.log import Redis
from common.state import StreamState, state_from_hashes

BATCH = 500


async def read_streams(redis: Redis, keys: Keys) -> list[StreamState]:
    raw_ids: list[bytes] = await redis.zrange(keys.streams, 0, -1)  # type: ignore[assignment]
    ids = [raw.decode() for raw in raw_ids]
    states: list[StreamState] = []
    for start in range(0, len(ids), BATCH):
        chunk = ids[start : start + BATCH]
        async with redis.pipeline(transaction=False) as pipe:
            for stream_id in chunk:
                pipe.hgetall(keys.stream(stream_id))
                pipe.hgetall(keys.parts(stream_id))
            replies = await pipe.execute()
        for fields, parts in zip(replies[::2], replies[1::2], strict=True):
            state = state_from_hashes(fields, parts)
            if state is not None:
                states.append(state)
    return states


async def read_groups(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    try:
        groups: list[dict[Any, Any]] = await redis.xinfo_groups(keys.events)
    except ResponseError:
        return []  # no log yet
    return [
        {
            "name": _text(group["name"]),
            "consumers": int(group["consumers"]),
            "pending": int(group["pending"]),
            "lag": int(group["lag"]) if group.get("lag") is not None else None,
            "last_delivered_id": _text(group["last-delivered-id"]),
        }
        for group in groups
    ]


async def gather_status(redis: Redis, keys: Keys) -> dict[str, Any]:
    streams = await read_streams(redis, keys)
    position = await redis.get(keys.projector_position)
    return {
        "streams": [stream_summary(s) for s in streams],
        "groups": await read_groups(redis, keys),
        "events": int(await redis.xlen(keys.events)),
        "dead_letters": int(await redis.xlen(keys.dead)),
        "projector_position": _text(position) if position else None,
    }


def stream_summary(state: StreamState) -> dict[str, Any]:
    return {
        "stream_id": state.stream_id,
        "path": state.path,
        "s3_key": state.s3_key,
        "status": state.status,
        "size_bytes": state.size_bytes,
        "uploaded_bytes": state.uploaded_bytes,
        "parts": len(state.parts),
        "created_at_ms": state.created_at_ms,
        "updated_at_ms": state.updated_at_ms,
        "completed_at_ms": state.completed_at_ms or None,
        "reason": state.reason or None,
    }


def render_table(status: dict[str, Any]) -> str:
    rows = [("PATH", "STATUS", "UPLOADED", "SIZE", "PARTS")]
    for s in status["streams"]:
        rows.append(
            (
                s["path"],
                s["status"] + (f" ({s['reason']})" if s["reason"] else ""),
                _mib(s["uploaded_bytes"]),
                _mib(s["size_bytes"]),
                str(s["parts"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append("")
    for group in status["groups"]:
        lines.append(
            f"group {group['name']}: {group['consumers']} consumers, "
            f"{group['pending']} pending, lag {group['lag']}"
        )
    lines.append(f"events: {status['events']}  dead letters: {status['dead_letters']}")
    return "\n".join(lines)


def _mib(value: int) -> str:
    return f"{value / 1048576:.1f} MiB"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
