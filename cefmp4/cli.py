"""The `cefmp4` command line: the one place that reads settings and configures logging."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from cefmp4 import settings_sources, status
from cefmp4.common import health
from cefmp4.common.completions import Publishing
from cefmp4.common.config import Settings
from cefmp4.common.deadletters import DeadLetter, DeadLetters
from cefmp4.common.errors import CefError, ConfigError, LogError, Stopping
from cefmp4.common.eventlog import EventLog, Redis, connect
from cefmp4.common.events import RetryRequested
from cefmp4.common.files import watch_root
from cefmp4.common.keys import Keys
from cefmp4.common.logging_setup import secrets_of, setup_logging
from cefmp4.common.retry import Outage, until_done
from cefmp4.common.statestore import StateReader
from cefmp4.consumer.replay import replay_fenced

logger = logging.getLogger("cefmp4")

# cefmp4.processes is imported only where a service runs: its imports (the S3 client among
# them) take half a second that `status`, `dead` and the others need not spend.

Command = Callable[[Settings, EventLog, argparse.Namespace, asyncio.Event], Awaitable[int]]


def consumer_name(settings: Settings) -> str:
    return settings.consumer_name or f"{socket.gethostname()}-{os.getpid()}"


async def _producer(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    from cefmp4 import processes

    await processes.serve_producer(settings, log, stop)
    return 0


async def _consumer(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    from cefmp4 import processes

    await processes.serve_consumer(settings, log, consumer_name(settings), stop)
    return 0


async def _run(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    from cefmp4 import processes

    await processes.serve_both(settings, log, consumer_name(settings), stop)
    return 0


async def _status(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    return await status.show(
        log,
        stop,
        as_json=args.json,
        watch=args.watch,
        interval_s=args.interval,
        limit=args.limit,
        watch_dir=settings.watch_dir,
    )


async def _replay(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    await log.ensure_groups()
    publishing = Publishing(settings.s3_bucket_name, settings.completions_max_entries)
    count = await replay_fenced(log, f"replay-{consumer_name(settings)}", publishing)
    streams = await StateReader(log.redis, log.keys).stream_count()
    print(f"replayed {count} events into {streams} streams")
    return 0


async def _retry(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    if bool(args.paths) == args.failed:
        raise CefError("give recordings' paths or --failed, not both")
    reader = StateReader(log.redis, log.keys)
    if args.failed:
        paths = await reader.failed_paths()
    else:
        paths = [_relative_to_watch_dir(settings, path) for path in args.paths]
    unknown = 0
    for path in paths:
        state = await reader.latest(path)
        if state is None:
            print(f"{path}: no such recording", file=sys.stderr)
            unknown += 1
        elif state.status != "failed":
            print(f"{path}: {state.status}, not failed; left as it is")
        else:
            await log.append(RetryRequested(stream_id=state.stream_id, path=path, by_hand=True))
            print(f"{path}: re-queued (it failed: {state.reason})")
    print(f"re-queued {len(paths) - unknown} recordings", file=sys.stderr)
    return 1 if unknown else 0


def _relative_to_watch_dir(settings: Settings, given: str) -> str:
    """A recording's path as events name it: relative to WATCH_DIR, with `/`."""
    path = Path(given)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.relative_to(settings.watch_dir.expanduser().resolve()).as_posix()
    except ValueError:
        raise CefError(f"{given} is not under WATCH_DIR ({settings.watch_dir})") from None


async def _dead(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    dead = DeadLetters(log.redis, log.keys)
    ids: list[str] | None = args.requeue if args.requeue is not None else args.drop
    if ids is None:
        if args.all:
            raise CefError("--all goes with --requeue or --drop")
        letters = [d async for d in dead.all()]
        if args.json:
            print(json.dumps({"dead_letters": [d.as_json() for d in letters]}, indent=2))
        else:
            print(_dead_table(letters))
        return 0
    if bool(ids) == bool(args.all):
        raise CefError("give dead-letter ids or --all, not both")
    letters = await dead.selected(ids, args.all)
    for letter in letters:
        if args.requeue is not None:
            new_id = await dead.requeue(letter)
            print(f"re-queued {letter.id} as {new_id.decode()}")
        else:
            await dead.drop(letter)
            print(f"dropped {letter.id}")
    verb = "re-queued" if args.requeue is not None else "dropped"
    print(f"{verb} {len(letters)} dead letters", file=sys.stderr)
    return 0


def _dead_table(letters: list[DeadLetter]) -> str:
    rows = [("ID", "GROUP", "ENTRY", "REASON", "EVENT")]
    rows.extend((d.id, d.group, d.entry_id, d.reason, d.summary()) for d in letters)
    lines = status.columns(rows)
    lines.append(f"{len(letters)} dead letters")
    return "\n".join(lines)


async def _health(
    settings: Settings, log: EventLog, args: argparse.Namespace, stop: asyncio.Event
) -> int:
    healthy, why = await health.check(
        log.redis, settings.heartbeat_path, settings.redis_display_url
    )
    print(why, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


COMMANDS: dict[str, tuple[Command, str]] = {
    "producer": (_producer, "watch WATCH_DIR and append file events"),
    "consumer": (_consumer, "upload recordings; also project state and check stale streams"),
    "run": (_run, "producer and consumer in one process, for a single box"),
    "status": (_status, "show streams, consumer groups and dead letters"),
    "replay": (_replay, "rebuild all state from the log"),
    "retry": (_retry, "upload failed recordings again: PATH... or --failed"),
    "dead": (_dead, "list dead letters; re-queue or drop them"),
    "health": (_health, "exit 0 if Redis answers and this box's cefmp4 process is alive"),
}
SERVICES = frozenset({"producer", "consumer", "run"})


DESCRIPTION = """\
Stream the recordings that appear in WATCH_DIR into S3-compatible storage while they are
still being written, one multipart upload per file, with the state kept in Redis."""

EPILOG = """\
Settings come from environment variables and a .env file in the current folder (see the
README's Configuration). Run from the project folder while `make run` runs, the commands
use the Redis and S3 it started. `cefmp4 COMMAND --help` tells more about a command."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cefmp4",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_fn, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == "status":
            command.add_argument("--json", action="store_true", help="print one JSON object")
            command.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
            command.add_argument(
                "--interval", type=float, default=2.0, metavar="SECONDS", help="refresh period (2)"
            )
            command.add_argument(
                "--limit",
                type=int,
                default=50,
                metavar="N",
                help="finished streams shown after the open ones (50; 0: none)",
            )
        elif name == "retry":
            command.add_argument(
                "paths", nargs="*", metavar="PATH", help="recordings, relative to WATCH_DIR"
            )
            command.add_argument(
                "--failed", action="store_true", help="every recording whose latest stream failed"
            )
        elif name == "dead":
            action = command.add_mutually_exclusive_group()
            action.add_argument(
                "--requeue", nargs="*", metavar="ID", help="append these entries to the log again"
            )
            action.add_argument("--drop", nargs="*", metavar="ID", help="delete these dead letters")
            command.add_argument(
                "--all", action="store_true", help="with --requeue/--drop: every one"
            )
            command.add_argument("--json", action="store_true", help="list as one JSON object")
    return parser


async def _reach_redis(redis: Redis, which: str, command: str, stop: asyncio.Event) -> bool:
    """Services wait for Redis however long it takes; one-shot commands fail at once."""
    if command in SERVICES:
        try:
            await until_done(redis.ping, Outage("redis", logger), stop)
        except Stopping:
            return False
        return True
    try:
        await redis.ping()
    except LogError as exc:
        raise LogError(f"cannot reach Redis {which}: {exc.__cause__ or exc}") from None
    return True


async def _main(settings: Settings, redis_source: str, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    service = args.command in SERVICES

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            # At once means at once: what is in flight is left as a crash leaves it, for
            # the others (or the next start) to take over.
            if service:
                logger.info("%s again: stopping at once", sig.name)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(130)
        if service:
            logger.info(
                "%s: stopping; parts in flight are finished (a second signal stops at once)",
                sig.name,
            )
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    which = f"{settings.redis_display_url} ({redis_source})"
    if service:
        watch_root(settings)  # a wrong WATCH_DIR is said alone, before the start is logged
    redis = connect(settings)
    try:
        # health answers now, whether Redis does or not, and names it in its one line.
        if args.command == "health":
            pass
        elif not await _reach_redis(redis, which, args.command, stop):
            return 0
        elif not service:
            print(f"cefmp4: redis {which}", file=sys.stderr)
        command, _help = COMMANDS[args.command]
        log = EventLog(redis, Keys(settings.keys_prefix))
        code = 0
        try:
            code = await command(settings, log, args, stop)
        except* Stopping:
            logger.info("stopped while waiting out an outage")
        if service:
            logger.info("stopped")
        return code
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings, redis_source = settings_sources.load()
        setup_logging(settings.python_log_level, settings.log_format, secrets_of(settings))
        return asyncio.run(_main(settings, redis_source, args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    except Exception as exc:
        return _said(exc)


def _said(exc: BaseException) -> int:
    """Say why the command stopped in one line (a setting, a refusal); an exit code.

    What cefmp4 did not expect is logged with its traceback, through the masking of
    secrets, never printed raw.
    """
    errors = _leaves(exc)
    wrong = next((e for e in errors if isinstance(e, ConfigError)), None)
    known = wrong or next((e for e in errors if isinstance(e, CefError)), None)
    if known is not None:
        print(f"cefmp4: {known}", file=sys.stderr)
        return 2 if wrong is not None else 1
    logger.error("cefmp4 stopped on an unexpected error: %r", exc, exc_info=exc)
    return 1


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


if __name__ == "__main__":
    sys.exit(main())
