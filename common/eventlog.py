"""The event log on a Redis stream, and the Redis client every part of cefmp4 talks through.

The client turns a Redis outage (connection refused or lost, a timeout, a server still
loading its data) into `LogUnavailable`, raised from redis-py's error, whichever module
made the call; answers such as a refused script or a failed WATCH stay redis-py's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, NamedTuple, TypeVar, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, ConnectionPool, SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cefmp4.common.config import Settings
from cefmp4.common.errors import LeaseLost, LogUnavailable
from cefmp4.common.events import FIELD, AnyEvent, encode
from cefmp4.common.keys import GROUPS, Keys

Redis = aioredis.Redis
T = TypeVar("T")
logger = logging.getLogger(__name__)

# What a Redis outage looks like to redis-py (AuthenticationError and BusyLoadingError,
# Redis reloading its data after a restart, are ConnectionErrors too).
_OUTAGE = (RedisConnectionError, RedisTimeoutError)
# A cluster also fails over and moves slots: no node serves the slot for a while.
_CLUSTER_OUTAGE = (*_OUTAGE, ClusterDownError, TryAgainError, RedisClusterException)

# XADD and the path's handoff marker in one step, so whoever takes the path over next
# knows which event the projection must have reached before its state can be trusted;
# with a fence (KEYS[3] must hold ARGV[4]), only while the caller holds the path's lock.
_APPEND_FOR_PATH = """
if KEYS[3] and redis.call('GET', KEYS[3]) ~= ARGV[4] then
  return false
end
local id = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], id, 'PX', ARGV[3])
return id
"""

HANDOFF_TTL_MS = 7 * 24 * 3600 * 1000


def _unavailable(command: object, exc: BaseException) -> LogUnavailable:
    return LogUnavailable(f"Redis {text_of(command)}: {type(exc).__name__}: {exc}")


def _unblocked(exc: ResponseError) -> bool:
    """A blocked read whose stream went away (its slot moved to another node, or it was
    deleted): an outage to retry, unlike any other refusal."""
    return str(exc).startswith("UNBLOCKED")


class _Pipeline(Pipeline):
    async def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return await super().immediate_execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except _OUTAGE as exc:
            raise _unavailable(args[0], exc) from exc

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error)
        except _OUTAGE as exc:
            raise _unavailable("MULTI/EXEC" if self.is_transaction else "pipeline", exc) from exc


class _Client(aioredis.Redis):
    async def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except _OUTAGE as exc:
            raise _unavailable(args[0], exc) from exc
        except ResponseError as exc:
            if not _unblocked(exc):
                raise
            raise _unavailable(args[0], exc) from exc

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return _Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


class _SentinelClient(_Client):
    """The primary a set of sentinels names; a failover is an outage it recovers from."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


_CONNECTION_OPTIONS: dict[str, Any] = {
    "decode_responses": False,
    "socket_connect_timeout": 5,
    "socket_keepalive": True,
    "health_check_interval": 15,
    "max_connections": 64,
}


class _HomeNode:
    """The connections of the node serving one hash slot, as a pipeline's connection pool.

    redis-py's cluster pipeline queues each command of a transaction through a thread and
    an event loop of its own, and cannot read after WATCH; every key of a deployment is in
    one slot, so its pipelines go to that slot's node as a plain Redis pipeline does.
    """

    def __init__(self, cluster: RedisCluster, slot: int) -> None:
        self.cluster = cluster
        self.slot = slot
        self._lent: dict[Connection, ClusterNode] = {}

    async def get_connection(self, *args: Any, **kwargs: Any) -> Connection:
        await self.cluster.initialize()
        node = self.cluster.nodes_manager.get_node_from_slot(self.slot)
        connection = node.acquire_connection()
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await connection.disconnect()
            node.release(connection)
            raise
        self._lent[connection] = node
        return connection

    async def release(self, connection: Connection) -> None:
        node = self._lent.pop(connection, None)
        if node is not None:
            node.release(connection)

    def moved(self) -> None:
        """The slot moved or its node is gone: ask the cluster where it is before next use."""
        self.cluster._initialize = True


class _HomePipeline(Pipeline):
    home: _HomeNode

    async def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return await super().immediate_execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except (*_CLUSTER_OUTAGE, AskError) as exc:
            raise self._moved(args[0], exc) from exc

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error)
        except (*_CLUSTER_OUTAGE, AskError) as exc:  # AskError: MOVED too
            raise self._moved("MULTI/EXEC" if self.is_transaction else "pipeline", exc) from exc

    def _moved(self, command: object, exc: Exception) -> LogUnavailable:
        self.home.moved()
        return _unavailable(command, exc)


class _ClusterClient(RedisCluster):
    """A Redis Cluster; every key of a deployment is in one slot (the prefix's hash tag),
    so its scripts and MULTI/EXEC run on the one node that holds it."""

    home: _HomeNode

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except _CLUSTER_OUTAGE as exc:
            raise _unavailable(args[0], exc) from exc
        except ResponseError as exc:
            if not _unblocked(exc):
                raise
            raise _unavailable(args[0], exc) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        pipe = _HomePipeline(
            cast(ConnectionPool, self.home), self.response_callbacks, bool(transaction), None
        )
        pipe.home = self.home
        return pipe


def _connect_cluster(settings: Settings) -> Redis:
    client = cast(
        _ClusterClient, _ClusterClient.from_url(settings.redis_connection_url, **_CLUSTER_OPTIONS)
    )
    client.home = _HomeNode(client, key_slot(settings.keys_prefix.encode()))
    return cast(Redis, client)


_CLUSTER_OPTIONS = {k: v for k, v in _CONNECTION_OPTIONS.items() if k != "max_connections"}


def connect(settings: Settings) -> Redis:
    if settings.redis_sentinels:
        return _connect_sentinel(settings)
    if settings.redis_cluster:
        return _connect_cluster(settings)
    return connect_url(settings.redis_connection_url)


def connect_url(url: str) -> Redis:
    """A client of the Redis at `url`, for tools that have no Settings (the benchmark)."""
    return _Client.from_url(url, **_CONNECTION_OPTIONS)


def _connect_sentinel(settings: Settings) -> Redis:
    # REDIS_URL's user, password, database and TLS are the data nodes'; its host is unused.
    node: dict[str, Any] = dict(parse_url(settings.redis_connection_url))
    for name in ("host", "port", "path"):
        node.pop(name, None)
    if node.pop("connection_class", None) is SSLConnection:
        node["ssl"] = True
    sentinel_options: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 5}
    if settings.redis_sentinel_password is not None:
        sentinel_options["password"] = settings.redis_sentinel_password.get_secret_value()
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(settings.redis_sentinels), sentinel_kwargs=sentinel_options, **node
    )
    assert settings.redis_sentinel_master is not None  # validated with REDIS_SENTINELS
    client = sentinel.master_for(
        settings.redis_sentinel_master,
        redis_class=_SentinelClient,
        connection_pool_class=SentinelConnectionPool,
        **_CONNECTION_OPTIONS,
    )
    client.sentinels = sentinel
    return cast(Redis, client)


class Entry(NamedTuple):
    id: bytes
    fields: dict[bytes, bytes]


def entry_id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = text_of(entry_id).partition("-")
    return int(ms), int(seq or 0)


class GroupMember(msgspec.Struct, frozen=True):
    name: str
    pending: int
    idle_ms: int


class GroupInfo(msgspec.Struct, frozen=True):
    """One consumer group of the log, as XINFO GROUPS / CONSUMERS and XPENDING tell."""

    name: str
    consumers: int
    pending: int
    lag: int | None  # unknown after entries were deleted from the middle of the log
    last_delivered_id: str
    oldest_pending_id: str | None
    members: list[GroupMember]


class LogInfo(msgspec.Struct, frozen=True):
    events: int
    first_event_id: str | None
    last_event_id: str | None
    dead_letters: int


class EventLog:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._append_for_path = redis.register_script(_APPEND_FOR_PATH)

    async def append(self, event: AnyEvent) -> bytes:
        entry_id = await self.redis.xadd(self.keys.events, {FIELD: encode(event)})
        return cast(bytes, entry_id)

    async def append_for_path(
        self, event: AnyEvent, path: str, fence: tuple[str, str] | None = None
    ) -> bytes:
        """Append a step about `path` and mark it as the path's last one.

        `fence` is (key, value): append only while that key holds that value (the path's
        lock and its holder's token); else LeaseLost, and nothing is appended.
        """
        keys = [self.keys.events, self.keys.path_handoff(path)]
        args: list[Any] = [FIELD, encode(event), HANDOFF_TTL_MS]
        if fence is not None:
            keys.append(fence[0])
            args.append(fence[1])
        entry_id: bytes | None = await self._append_for_path(keys=keys, args=args)
        if entry_id is None:
            raise LeaseLost(f"not appended: {fence[0] if fence else path} is held by another")
        return entry_id

    async def lost(self, entry_id: bytes) -> bool:
        """Whether `entry_id`, appended earlier, is gone though never trimmed or deleted: the
        primary that took it died before a replica had it (Redis 7 tells; older: never)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(self.keys.events, min=entry_id, max=entry_id, count=1)
            pipe.xinfo_stream(self.keys.events)
            found, info = await pipe.execute(raise_on_error=False)
        if isinstance(found, list) and found:
            return False
        if isinstance(info, ResponseError):
            return True  # no log at all any more
        if isinstance(info, Exception):
            raise info
        deleted = info.get("max-deleted-entry-id")
        return deleted is not None and entry_id_tuple(deleted) < entry_id_tuple(entry_id)

    async def _in_group(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a consumer-group command; if the groups are gone, create them again first.

        Only a failover to a replica that never synced (or a log deleted by hand) loses
        them; the groups then read the log from its start again, which is idempotent.
        """
        try:
            return await call()
        except ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
        logger.warning("the log's consumer groups are gone (a failover?); creating them again")
        await self.ensure_groups()
        return await call()

    async def ensure_groups(self) -> None:
        for group in GROUPS:
            try:
                await self.redis.xgroup_create(self.keys.events, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(self, group: str, consumer: str, count: int, block_ms: int) -> list[Entry]:
        response: Any = await self._in_group(
            lambda: self.redis.xreadgroup(
                group, consumer, {self.keys.events: ">"}, count=count, block=block_ms
            )
        )
        entries: list[Entry] = []
        for _stream, items in response or []:
            entries.extend(Entry(entry_id, fields) for entry_id, fields in items)
        return entries

    async def claim_stale(
        self, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Entry]:
        """Take over entries another consumer read but never acknowledged."""
        response: Any = await self._in_group(
            lambda: self.redis.xautoclaim(
                self.keys.events, group, consumer, min_idle_ms, start_id="0-0", count=count
            )
        )
        claimed = response[1] if response else []
        return [Entry(entry_id, fields) for entry_id, fields in claimed if fields is not None]

    async def deliveries(self, group: str, entry_ids: list[bytes]) -> dict[bytes, int]:
        """How many times each pending entry has been delivered."""
        if not entry_ids:
            return {}
        lowest = min(entry_ids, key=entry_id_tuple)
        highest = max(entry_ids, key=entry_id_tuple)
        wanted = set(entry_ids)
        found: dict[bytes, int] = {}
        pending: Any = await self._in_group(
            lambda: self.redis.xpending_range(
                self.keys.events, group, min=lowest, max=highest, count=10_000
            )
        )
        for item in pending:
            if item["message_id"] in wanted:
                found[item["message_id"]] = int(item["times_delivered"])
        return found

    async def ack(self, group: str, *entry_ids: bytes) -> None:
        if entry_ids:
            await self.redis.xack(self.keys.events, group, *entry_ids)

    async def rewind(self, group: str, position: bytes) -> None:
        """Deliver `group` the entries after `position` again, and settle those up to it.

        Entries up to `position` still pending (a fenced-off reader had read them) would
        never be acknowledged otherwise, and retention keeps every entry from the oldest
        pending one on.
        """
        await self._in_group(lambda: self.redis.xgroup_setid(self.keys.events, group, position))
        while True:
            pending: Any = await self.redis.xpending_range(
                self.keys.events, group, min="-", max=position, count=1000
            )
            if not pending:
                return
            await self.redis.xack(
                self.keys.events, group, *(item["message_id"] for item in pending)
            )

    async def entries_after(self, after: bytes, batch: int) -> AsyncGenerator[list[Entry], None]:
        """Every entry after `after`, in batches; the next batch is fetched while one is used."""
        key = self.keys.events

        def fetch(start: str) -> asyncio.Future[Any]:
            return asyncio.ensure_future(self.redis.xrange(key, min=start, max="+", count=batch))

        pending = fetch("(" + after.decode())
        try:
            while True:
                entries = await pending
                if not entries:
                    return
                pending = fetch("(" + entries[-1][0].decode())
                yield [Entry(entry_id, fields) for entry_id, fields in entries]
        finally:
            pending.cancel()
            await asyncio.wait({pending})

    async def was_trimmed(self) -> bool:
        """Whether entries were ever removed from the log (Redis 7 tells; older: assume not)."""
        try:
            info: dict[str, Any] = await self.redis.xinfo_stream(self.keys.events)
        except ResponseError:
            return False  # no log at all
        added = info.get("entries-added")
        return added is not None and int(added) > int(info["length"])

    async def redeliver_pending(self, group: str) -> None:
        """Deliver `group` again every entry from its oldest pending one on.

        Entries read by a consumer that is gone would stay pending for ever (and hold log
        trimming back); read again, they are the new reader's, and its acknowledgements
        settle them.
        """
        summary: Any = await self._in_group(lambda: self.redis.xpending(self.keys.events, group))
        if summary["pending"]:
            ms, seq = entry_id_tuple(summary["min"])
            before = f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{2**64 - 1}"
            await self.redis.xgroup_setid(self.keys.events, group, before)

    async def groups(self) -> list[GroupInfo]:
        """Every consumer group of the log with its consumers; empty while there is no log."""
        try:
            groups: list[dict[Any, Any]] = await self.redis.xinfo_groups(self.keys.events)
        except ResponseError:
            return []
        names = [text_of(group["name"]) for group in groups]
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.xinfo_consumers(self.keys.events, name)
                pipe.xpending(self.keys.events, name)
            replies = await pipe.execute()
        return [
            GroupInfo(
                name=text_of(group["name"]),
                consumers=int(group["consumers"]),
                pending=int(group["pending"]),
                lag=int(group["lag"]) if group.get("lag") is not None else None,
                last_delivered_id=text_of(group["last-delivered-id"]),
                oldest_pending_id=text_of(pending["min"]) if pending.get("min") else None,
                members=[
                    GroupMember(text_of(c["name"]), int(c["pending"]), int(c["idle"]))
                    for c in consumers
                ],
            )
            for group, consumers, pending in zip(groups, replies[::2], replies[1::2], strict=True)
        ]

    async def info(self) -> LogInfo:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.keys.events)
            pipe.xrange(self.keys.events, count=1)
            pipe.xrevrange(self.keys.events, count=1)
            pipe.xlen(self.keys.dead)
            events, first, last, dead = await pipe.execute()
        return LogInfo(
            events=int(events),
            first_event_id=text_of(first[0][0]) if first else None,
            last_event_id=text_of(last[0][0]) if last else None,
            dead_letters=int(dead),
        )


def text_of(value: object) -> str:
    """A Redis reply's value (bytes, or str where the client decoded it) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
