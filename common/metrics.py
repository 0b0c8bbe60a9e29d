"""The Prometheus metrics cefmp4 exports, and the /metrics endpoint that serves them.

Every metric is defined here, named `cefmp4_...` with its unit in the name. Labels take
a few known values only (a state, a consumer group, an error kind): never a path, a
stream id or anything else that grows with the data.

Counters and histograms count what this process did; a scrape of every process sums
them. The gauges that describe the shared state (streams by state, consumer groups, dead
letters) are read from Redis by every consumer (`consumer/gauges.py`), so they are the
same in each: aggregate them with `max`, not `sum`.
"""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from cefmp4.common.config import Settings
from cefmp4.common.errors import ConfigError, LogError, ProjectionBehind, StorageError
from cefmp4.common.keys import GROUPS
from cefmp4.common.streamstate import StreamState

logger = logging.getLogger(__name__)


UPLOADED_BYTES = Counter(
    "cefmp4_uploaded_bytes", "Bytes of recordings sent to S3 in parts (a re-sent part counts again)"
)
UPLOADED_PARTS = Counter("cefmp4_uploaded_parts", "Parts sent to S3")
PART_BYTES_SENT = Counter(
    "cefmp4_part_bytes_sent",
    "Bytes of parts read by the HTTP client as it sends them (counted while a part is sent)",
)
UPLOAD_RATE_LIMIT = Gauge(
    "cefmp4_upload_rate_limit_bytes_per_second",
    "UPLOAD_RATE_LIMIT_MBPS of this consumer in bytes per second; 0: no limit",
)
COPIED_BYTES = Counter(
    "cefmp4_copied_bytes",
    "Bytes of recordings not sent again but copied on S3 from their previous object",
)
STREAMS = Gauge("cefmp4_streams", "Streams (recordings) by state, from the projection", ["state"])
STREAM_DURATION = Histogram(
    "cefmp4_stream_duration_seconds",
    "From the start of a stream's upload to its completion",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
)
LAST_WRITE_TO_COMPLETE = Histogram(
    "cefmp4_last_write_to_complete_seconds",
    "From the last write to a recording (its mtime) to its object being complete",
    buckets=(0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600),
)
S3_ERRORS = Counter("cefmp4_s3_errors", "Failed S3 calls, by error code or exception", ["kind"])
REDIS_ERRORS = Counter("cefmp4_redis_errors", "Failed Redis calls, by exception", ["kind"])
UNREPLICATED_WRITES = Counter(
    "cefmp4_redis_unreplicated_writes",
    "Writes that fewer replicas than REDIS_WAIT_REPLICAS acknowledged in time",
)
RETRIES = Counter(
    "cefmp4_retries", "Passes over a recording tried again, by what failed", ["cause"]
)
DEAD_LETTERS = Counter(
    "cefmp4_dead_letters", "Log entries this process set aside as dead letters", ["group"]
)
DEAD_LETTER_ENTRIES = Gauge("cefmp4_dead_letter_entries", "Entries in the dead-letter stream")
GROUP_LAG = Gauge(
    "cefmp4_consumer_group_lag_entries", "Log entries not yet delivered to a group", ["group"]
)
GROUP_PENDING = Gauge(
    "cefmp4_consumer_group_pending_entries",
    "Log entries delivered to a group but not yet acknowledged",
    ["group"],
)
GAUGES_REFRESHED = Gauge(
    "cefmp4_gauges_refreshed_timestamp_seconds", "When the gauges read from Redis were refreshed"
)
NOTIFY_DELIVERED = Counter(
    "cefmp4_notify_delivered", "Completions posted to NOTIFY_URL and answered with a 2xx"
)
NOTIFY_FAILURES = Counter(
    "cefmp4_notify_failures",
    "Posts to NOTIFY_URL that failed, by what happened: an HTTP status class "
    "(4xx, 5xx, ...), timeout or connection",
    ["kind"],
)
NOTIFY_PENDING = Gauge(
    "cefmp4_notify_pending_entries",
    "Completions not yet posted to NOTIFY_URL: read but not answered with a 2xx, or not read",
)
LOCAL_FILES_REMOVED = Counter(
    "cefmp4_local_files_removed",
    "Recordings AFTER_UPLOAD took out of WATCH_DIR once their objects were verified, by how: "
    "deleted, moved, or gone (not there any more when their time came)",
    ["how"],
)
WATCH_DIR_FREE_BYTES = Gauge(
    "cefmp4_watch_dir_free_bytes", "Free bytes on WATCH_DIR's filesystem (for unprivileged users)"
)
WATCH_DIR_FREE_RATIO = Gauge(
    "cefmp4_watch_dir_free_ratio", "Free share of WATCH_DIR's filesystem, 0 to 1"
)
HEARTBEAT = Gauge(
    "cefmp4_heartbeat_timestamp_seconds", "Last turn of this process's event loop heartbeat"
)

# S3 error codes worth telling apart; any other code is counted as "other".
_S3_CODES = frozenset(
    {
        "AccessDenied",
        "BadDigest",
        "BucketAlreadyExists",
        "BucketAlreadyOwnedByYou",
        "EntityTooLarge",
        "EntityTooSmall",
        "InternalError",
        "InvalidAccessKeyId",
        "InvalidArgument",
        "InvalidBucketName",
        "InvalidDigest",
        "InvalidPart",
        "InvalidPartOrder",
        "InvalidRequest",
        "NoSuchBucket",
        "NoSuchKey",
        "NoSuchUpload",
        "NotFound",
        "RequestTimeTooSkewed",
        "RequestTimeout",
        "ServiceUnavailable",
        "SignatureDoesNotMatch",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "XAmzContentChecksumMismatch",
    }
)


def s3_error_kind(code: str, exc: BaseException) -> str:
    """A bounded label for a failed S3 call: a known code, an HTTP status, or the exception."""
    if code:
        if code in _S3_CODES or (len(code) == 3 and code.isdigit()):
            return code
        return "other"
    return type(exc).__name__


def count_s3_error(code: str, exc: BaseException) -> None:
    S3_ERRORS.labels(kind=s3_error_kind(code, exc)).inc()


def count_redis_error(exc: BaseException) -> None:
    """Count a failed Redis call by redis-py's exception (the cause of a LogError)."""
    cause = exc.__cause__ if isinstance(exc, LogError) and exc.__cause__ is not None else exc
    REDIS_ERRORS.labels(kind=type(cause).__name__).inc()


def count_notify_failure(kind: str) -> None:
    NOTIFY_FAILURES.labels(kind=kind).inc()


def count_unreplicated_write() -> None:
    UNREPLICATED_WRITES.inc()


def count_part_uploaded(length: int) -> None:
    UPLOADED_PARTS.inc()
    UPLOADED_BYTES.inc(length)


def count_part_copied(length: int) -> None:
    COPIED_BYTES.inc(length)


def count_retry(exc: BaseException) -> None:
    """Something is tried again after `exc`; a Redis failure is also counted as an error."""
    if isinstance(exc, StorageError):
        cause = "s3"  # already counted in S3_ERRORS where the call failed
    elif isinstance(exc, LogError):
        cause = "redis"
        count_redis_error(exc)
    elif isinstance(exc, ProjectionBehind):
        cause = "projection"
    else:
        cause = "other"
    RETRIES.labels(cause=cause).inc()


def count_dead_letter(group: str) -> None:
    DEAD_LETTERS.labels(group=group if group in GROUPS else "other").inc()


def observe_completed(state: StreamState, mtime_ns: int) -> None:
    """Durations of a stream just completed; `mtime_ns` is its file's last write."""
    completed_ms = state.completed_at_ms
    STREAM_DURATION.observe(max(0.0, (completed_ms - state.created_at_ms) / 1000))
    LAST_WRITE_TO_COMPLETE.observe(max(0.0, completed_ms / 1000 - mtime_ns / 1e9))


def serve(settings: Settings) -> WSGIServer | None:
    """Serve /metrics on METRICS_HOST:METRICS_PORT from a thread; None when the port is unset."""
    if settings.metrics_port is None:
        return None
    try:
        server, _thread = start_http_server(settings.metrics_port, settings.metrics_host)
    except OSError as exc:
        raise ConfigError(
            f"invalid setting METRICS_PORT: cannot listen on "
            f"{settings.metrics_host}:{settings.metrics_port}: {exc.strerror or exc}"
        ) from None
    logger.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    return server
