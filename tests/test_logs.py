"""Logs: readable text or JSON lines with context, and never a secret, even at DEBUG."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cefmp4.common.eventlog import EventLog
from cefmp4.common.logging_setup import NOISY, setup_logging
from cefmp4.common.s3 import Storage
from tests.conftest import Processes, Services, eventually
from tests.test_pipeline import wait_completed

S3_SECRET = "s3-Secret-Value-0123456789"
REDIS_PASSWORD = "redis-Pass-9876"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Where setup_logging sends records in this test; the root logger is restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in NOISY})
    out = io.StringIO()
    yield out
    handlers, level, noisy = saved
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, noisy_level in noisy.items():
        logging.getLogger(name).setLevel(noisy_level)
    logging.captureWarnings(False)


def test_json_format_gives_one_object_a_line_with_context(stream: io.StringIO) -> None:
    setup_logging("INFO", "json", stream=stream)
    logger = logging.getLogger("cefmp4.test")

    logger.info(
        "sent part %d of %s",
        3,
        "cam1/rec.mp4",
        extra={"stream_id": "01ab", "path": "cam1/rec.mp4", "part": 3},
    )
    logger.debug("not at INFO")
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        logger.exception("pass failed")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO"
    assert first["logger"] == "cefmp4.test"
    assert first["message"] == "sent part 3 of cam1/rec.mp4"
    assert (first["stream_id"], first["path"], first["part"]) == ("01ab", "cam1/rec.mp4", 3)
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["level"] == "ERROR"
    assert "stream_id" not in second
    assert "ValueError: line one\nline two" in second["exception"]


def test_text_format_is_one_readable_line_with_context_at_the_end(stream: io.StringIO) -> None:
    setup_logging("WARNING", "text", stream=stream)
    logger = logging.getLogger("cefmp4.test")

    logger.warning("upload of %s retried", "a.mp4", extra={"path": "a.mp4", "part": 2})
    logger.info("not at WARNING")

    [line] = stream.getvalue().splitlines()
    assert line.endswith("WARNING cefmp4.test: upload of a.mp4 retried [path=a.mp4 part=2]")


def test_text_format_escapes_control_characters_so_one_record_is_one_line(
    stream: io.StringIO,
) -> None:
    setup_logging("INFO", "text", stream=stream)
    logger = logging.getLogger("cefmp4.test")
    # A file name can forge a log line, colour the terminal or move its cursor.
    name = "cam\n2030-01-01 00:00:00,000 ERROR forged: \x1b[31mred\x85\x9b2J\r.mp4"
    escaped = "cam\\n2030-01-01 00:00:00,000 ERROR forged: \\x1b[31mred\\x85\\x9b2J\\r.mp4"

    logger.info("skipping %s", name, extra={"path": name})
    try:
        raise OSError("cannot read \x1b[31mred.mp4")
    except OSError:
        logger.exception("read failed", extra={"path": name})

    text = stream.getvalue()
    assert re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", text) is None
    lines = text.splitlines()
    assert lines[0].endswith(f"INFO    cefmp4.test: skipping {escaped} [path={escaped}]")
    assert lines[1].endswith(f"ERROR   cefmp4.test: read failed [path={escaped}]")
    assert lines[2] == "Traceback (most recent call last):"
    # A traceback keeps its own lines; what is in them is escaped all the same.
    assert lines[-1] == "OSError: cannot read \\x1b[31mred.mp4"


def test_secrets_are_masked_in_message_arguments_tracebacks_and_urls(
    stream: io.StringIO,
) -> None:
    setup_logging("DEBUG", "json", secrets=[S3_SECRET, REDIS_PASSWORD], stream=stream)
    logger = logging.getLogger("cefmp4.test")

    logger.debug("the key is %s", S3_SECRET)
    logger.info("connecting to redis://default:%s@redis:6379/0", REDIS_PASSWORD)
    logger.info("other store at https://admin:hunter22@minio.example/ with password=opensesame")
    logger.warning("a path", extra={"path": f"dir/{S3_SECRET}.mp4"})
    try:
        raise RuntimeError(f"refused: {S3_SECRET}")
    except RuntimeError:
        logger.exception("call failed")

    text = stream.getvalue()
    for secret in (S3_SECRET, REDIS_PASSWORD, "hunter22", "opensesame"):
        assert secret not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["message"] for r in records[:3]] == [
        "the key is ***",
        "connecting to redis://default:***@redis:6379/0",
        "other store at https://admin:***@minio.example/ with password=***",
    ]
    assert records[3]["path"] == "dir/***.mp4"
    assert "RuntimeError: refused: ***" in records[4]["exception"]


def _password_url(redis_url: str) -> str:
    scheme, _, rest = redis_url.partition("://")
    return f"{scheme}://default:{REDIS_PASSWORD}@{rest}"


async def test_processes_at_debug_in_json_never_log_a_secret(
    processes: Processes,
    services: Services,
    env: dict[str, str],
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
) -> None:
    # Redis lets any password through for its passwordless default user, so the URL can
    # carry one; the S3 secret is the one the S3 server really checks.
    redis_url = _password_url(services.redis_url)
    for role in ("producer", "consumer"):
        processes.start(role, REDIS_URL=redis_url, PYTHON_LOG_LEVEL="DEBUG", LOG_FORMAT="json")
    (watch_dir / "cam").mkdir()
    (watch_dir / "cam" / "a.mp4").write_bytes(os.urandom(6 * 1024 * 1024))
    await wait_completed(log, storage, watch_dir, "cam/a.mp4")
    await log.redis.xadd(log.keys.events, {b"garbage": b"not an event"})

    async def dead_lettered() -> bool:
        return int(await log.redis.xlen(log.keys.dead)) >= 1

    await eventually(dead_lettered, 30, "the garbage entry dead-lettered")
    processes.stop_all()

    lines = [
        line
        for path in sorted(processes.log_dir.glob("*.log"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"DEBUG", "INFO", "WARNING"} <= {r["level"] for r in records}
    assert any("dead-lettering" in r["message"] for r in records)
    for secret in (env["S3_SECRET_ACCESS_KEY"], REDIS_PASSWORD):
        assert not [line for line in lines if secret in line]
