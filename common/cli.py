"""The `cefmp4` command line: the one place that configures logging and reads settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from common import deadletters, status
from common.config import Settings, load_settings
from common.errors import CefError, ConfigError, LogError, Stopping
from common.keys import Keys
from common.log import EventLog, Redis, connect
from common.logs import secrets_of
from common.logs import setup_logging as _setup_logging
from common.monitor import supervise
from common.retry import Outage, until_done

logger = logging.getLogger("cefmp4")

Command = Callable[[Settings, EventLog, argparse.Namespace, asyncio.Event], Awaitable[int]]


def consumer_name(settings: Settings) -> str:
    return settings.consumer_name or f"{socket.gethostname()}-{os.getpid()}"


async def _producer(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    from producer.watcher import Producer

    await Producer(settings, log).run(stop)
    return 0


async def _consumer(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    from consumer.service import serve_consumer

    await serve_consumer(settings, log, consumer_name(settings), stop)
    return 0


async def _run(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    from consumer.service import serve_consumer
    from producer.watcher import Producer

    producer = Producer(settings, log)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(producer.run(stop))
        tasks.create_task(serve_consumer(settings, log, consumer_name(settings), stop))
    return 0


async def _status(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    from common.status import command

    return await command(log, args, stop)


async def _dead(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    from common.deadletters import command

    return await command(log, args)


async def _replay(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    from consumer.projector import replay_fenced

    await log.ensure_groups()
    count = await replay_fenced(log, f"replay-{consumer_name(settings)}")
    streams = await log.redis.zcard(log.keys.streams)
    print(f"replayed {count} events into {streams} streams")
    return 0


async def _health(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    from common.health import check

    healthy, why = await check(log.redis, settings.health_file)
    print(why, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


COMMANDS: dict[str, tuple[Command, str]] = {
    "producer": (_producer, "watch WATCH_DIR and append file events"),
    "consumer": (_consumer, "upload recordings; also project state and check stale streams"),
    "run": (_run, "producer and consumer in one process, for a single box"),
    "status": (_status, "show streams, consumer groups and dead letters"),
    "replay": (_replay, "rebuild all state from the log"),
    "dead": (_dead, "list dead letters; re-queue or drop them"),
    "health": (_health, "exit 0 if Redis answers and this box's cefmp4 process is alive"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cefmp4", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_fn, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        if name == "status":
            status.add_arguments(command)
        elif name == "dead":
            deadletters.add_arguments(command)
    return parser


def setup_logging(settings: Settings) -> None:
    _setup_logging(settings.python_log_level, settings.log_format, secrets_of(settings))


SERVICES = frozenset({"producer", "consumer", "run"})


async def _reach_redis(redis: Redis, command: str, stop: asyncio.Event) -> bool:
    """Services wait for Redis however long it takes; one-shot commands fail at once."""
    if command in SERVICES:
        try:
            await until_done(redis.ping, Outage("redis", logger), stop)
        except Stopping:
            return False
        return True
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        raise LogError(f"cannot reach Redis: {exc}") from None
    return True


async def _main(settings: Settings, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set() and main_task is not None:
            main_task.cancel()  # a second signal: stop now
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    redis = connect(settings)
    try:
        # health answers now, whether Redis does or not.
        if args.command != "health" and not await _reach_redis(redis, args.command, stop):
            return 0
        command, _help = COMMANDS[args.command]
        log = EventLog(redis, Keys(settings.redis_key_prefix))
        code = 0
        try:
            async with supervise(settings, log, args.command):
                code = await command(settings, log, args, stop)
        except* Stopping:
            logger.info("stopped while waiting out an outage")
        return code
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        setup_logging(settings)
        return asyncio.run(_main(settings, args))
    except ConfigError as exc:
        print(f"cefmp4: {exc}", file=sys.stderr)
        return 2
    except CefError as exc:
        print(f"cefmp4: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130


if __name__ == "__main__":
    sys.exit(main())
