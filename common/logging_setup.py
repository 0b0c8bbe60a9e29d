"""Logging for the CLI: readable lines for a terminal or JSON lines, secrets masked.

Only the CLI calls `setup_logging`; every module just logs to its own logger. Context
passed with `extra={"stream_id": ..., "path": ..., "part": ...}` becomes fields of the
JSON object, or `key=value` after a text line.

Every record is redacted before it is formatted, message, arguments, traceback and
context alike: the secrets named at setup (the S3 secret key, the Redis password) and
anything that looks like one (`user:password@` in a URL, `password=...`, `token: ...`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

from cefmp4.common.config import Settings
from cefmp4.common.printable import printable

CONTEXT_FIELDS = ("stream_id", "path", "part", "group", "entry_id")
MASK = "***"
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
MIN_SECRET_LENGTH = 4  # masking shorter literals would garble every line
NOISY = ("botocore", "aiobotocore", "aioboto3", "watchfiles", "urllib3", "asyncio", "redis")

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^\s:/@]*:)[^\s@/]+@")
_KEY_VALUE = re.compile(
    r"(?P<head>\b[\w-]*(?:password|passwd|secret|token)[\w-]*[\"']?\s*[=:]\s*[\"']?)"
    r"[^\s&\"',;)]+",
    re.IGNORECASE,
)


def secrets_of(settings: Settings) -> list[str]:
    """The configured secret values: the S3 secret key, the Redis URL's password, and
    NOTIFY_SECRET with NOTIFY_URL's password and query (where a token often is)."""
    found: list[str] = []
    if settings.s3_secret_access_key is not None:
        found.append(settings.s3_secret_access_key.get_secret_value())
    if settings.redis_url is not None:
        try:
            password = urlsplit(settings.redis_url.get_secret_value()).password
        except ValueError:
            password = None
        if password:
            found.append(password)
    if settings.notify_secret is not None:
        found.append(settings.notify_secret.get_secret_value())
    if settings.notify_url is not None:
        url = urlsplit(settings.notify_url.get_secret_value())
        found += [part for part in (url.password, url.query) if part]
    return found


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is masked whole.
        self.secrets = sorted(
            {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        text = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
        return _KEY_VALUE.sub(rf"\g<head>{MASK}", text)


class RedactFilter(logging.Filter):
    """Renders and masks a record in place, before any formatter sees it."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format
            message = f"{record.msg} {record.args!r}"
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
            record.exc_info = None  # formatters use the masked text
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, str):
                setattr(record, name, self.redact(value))
        return True


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {
        name: record.__dict__[name]
        for name in CONTEXT_FIELDS
        if record.__dict__.get(name) is not None
    }


class TextFormatter(logging.Formatter):
    """One line a record, control characters escaped (see common/printable.py); a traceback
    follows on lines of its own."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = printable(record.exc_text, keep_newlines=True)
        if record.stack_info:
            record.stack_info = printable(record.stack_info, keep_newlines=True)
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = printable(super().formatMessage(record))
        context = " ".join(
            f"{name}={printable(str(value))}" for name, value in _context(record).items()
        )
        return f"{line} [{context}]" if context else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "time": time.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_context(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(
    level: str, fmt: str, secrets: Iterable[str] = (), stream: IO[str] | None = None
) -> None:
    """Send every record to `stream` (stderr) as `fmt` ("text" or "json"), masked."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactFilter(Redactor(secrets)))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    # Libraries' debug output is theirs to debug; ours is what PYTHON_LOG_LEVEL=DEBUG shows.
    quiet = max(logging.getLevelName(level), logging.WARNING)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(quiet)
