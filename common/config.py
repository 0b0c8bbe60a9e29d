"""Settings from the environment (and `.env`), validated once at start."""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.connection import parse_url

from cefmp4.common.errors import ConfigError

MIB = 1024 * 1024

# S3's limits on an object's tags; the tags cefmp4 sets itself count against the ten.
MAX_OBJECT_TAGS = 10
CONTENT_TAG = "cefmp4-content"  # what a completed object was made from (consumer/recognition.py)
CEFMP4_TAG_KEYS = frozenset({CONTENT_TAG})  # keys starting cefmp4- are ours
MAX_USER_OBJECT_TAGS = MAX_OBJECT_TAGS - len(CEFMP4_TAG_KEYS)
_TAG_TEXT = re.compile(r"[\w\s+\-=.:/@]*")
_STORAGE_CLASS = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def _is_http_url(text: str) -> bool:
    """An http:// or https:// URL with a host, and a port if any that is a number above 0."""
    try:
        parts = urlsplit(text)
        has_host = parts.scheme in {"http", "https"} and bool(parts.hostname)
        return has_host and (parts.port is None or parts.port > 0)
    except ValueError:  # a port that is not a number, a broken IPv6 address
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True
    )

    watch_dir: Path = Path("recordings")
    watch_filter_globs: Annotated[tuple[str, ...], NoDecode] = ("*.mp4",)
    watch_file_min_age_seconds_for_idle: float = Field(default=5.0, gt=0, le=86_400)
    watch_finalize_on_close: bool = True

    s3_endpoint_url: str | None = None
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_bucket_name: str = Field(default="recordings", min_length=3, max_length=63)
    s3_region_name: str = "us-east-1"
    s3_key_prefix: str = ""
    s3_storage_class: str | None = None
    s3_sse: Literal["AES256", "aws:kms"] | None = None
    s3_sse_kms_key_id: SecretStr | None = None
    s3_object_tags: Annotated[tuple[tuple[str, str], ...], NoDecode] = ()
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_ca_bundle: Path | None = None

    redis_url: SecretStr | None = None
    redis_host: str = "localhost"
    redis_port: int = Field(default=6379, ge=1, le=65535)
    # None: "cefmp4:", or "{cefmp4}:" with REDIS_CLUSTER (one hash slot for every key).
    redis_key_prefix: str | None = Field(default=None, min_length=1)
    redis_sentinels: Annotated[tuple[tuple[str, int], ...], NoDecode] = ()
    redis_sentinel_master: str | None = Field(default=None, validate_default=True)
    redis_sentinel_password: SecretStr | None = None
    redis_cluster: bool = False
    # None: 1 with sentinels (a failover must not lose the step), 0 otherwise.
    redis_wait_replicas: int | None = Field(default=None, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(default=1000, ge=1, le=60_000)

    stream_chunk_size_mb: int = Field(default=10, ge=5, le=5120)
    stream_timeout_seconds: float = Field(default=60.0, gt=0)
    upload_concurrency: int = Field(default=4, ge=1, le=64)
    upload_rate_limit_mbps: float | None = Field(default=None, gt=0, le=1_000_000)
    consumer_name: str | None = None
    claim_idle_seconds: float = Field(default=60.0, ge=1, le=3600)
    dead_letter_after_deliveries: int = Field(default=5, ge=1, le=1000)
    dead_letter_max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    retry_failed_after_seconds: float = Field(default=10.0, gt=0, le=86_400)
    retry_failed_max_seconds: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    orphan_upload_grace_seconds: float = Field(default=3600.0, ge=0)
    orphan_check_interval_seconds: float = Field(default=600.0, gt=0)
    finished_stream_retention_seconds: float = Field(default=7 * 86_400.0, ge=0)
    log_retention_enabled: bool = True
    log_retention_snapshot_interval_seconds: float = Field(default=300.0, gt=0)
    log_retention_min_entries: int = Field(default=10_000, ge=0)
    metadata_sidecar: bool = True
    completions_max_entries: int = Field(default=100_000, ge=1, le=100_000_000)
    notify_url: SecretStr | None = None
    notify_secret: SecretStr | None = Field(default=None, validate_default=True)
    notify_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    after_upload: Literal["keep", "delete", "move"] = "keep"
    after_upload_delay_seconds: float = Field(default=60.0, ge=0, le=30 * 86_400)
    after_upload_move_dir: Path | None = Field(default=None, validate_default=True)
    local_min_free_percent: float = Field(default=10.0, ge=0, le=100)
    python_log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    health_file: Path | None = None  # None: one of this deployment, see heartbeat_path
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "0.0.0.0"

    @field_validator("watch_filter_globs", mode="before")
    @classmethod
    def _parse_globs(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = json.loads(text)
            else:
                value = [part.strip() for part in text.split(",")]
        if isinstance(value, list | tuple):
            if not all(isinstance(glob, str) for glob in value):
                raise ValueError("must be a list of strings")
            globs = tuple(glob.strip() for glob in value if glob.strip())
            if not globs:
                raise ValueError("needs at least one glob")
            return globs
        return value

    @field_validator("python_log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        # Our own words: redis-py's message may quote a piece of the password.
        if value is None:
            return value
        url = value.get_secret_value()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        try:
            parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError:
            raise ValueError(
                "is not a Redis URL such as redis://user:password@host:6379/0 (a password "
                "holding / ? # or @ must be percent-encoded, / as %2F)"
            ) from None
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _parse_sentinels(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        sentinels: list[tuple[str, int]] = []
        for item in (part.strip() for part in value.split(",")):
            host, _, port = item.rpartition(":")
            if not item:
                continue
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError("must be host:port pairs separated by commas")
            sentinels.append((host.strip("[]"), int(port)))
        return tuple(sentinels)

    @field_validator("redis_sentinels", "redis_cluster")
    @classmethod
    def _check_not_unix(cls, value: Any, info: ValidationInfo) -> Any:
        url = info.data.get("redis_url")
        if value and url is not None and url.get_secret_value().startswith("unix://"):
            raise ValueError("needs a redis:// or rediss:// REDIS_URL, not unix://")
        return value

    @field_validator("redis_sentinel_master")
    @classmethod
    def _check_sentinel_master(cls, value: str | None, info: ValidationInfo) -> str | None:
        sentinels = info.data.get("redis_sentinels")
        if sentinels and not value:
            raise ValueError("must name the primary the sentinels monitor (REDIS_SENTINELS is set)")
        if value and not sentinels:
            raise ValueError("is set but REDIS_SENTINELS is not")
        return value

    @field_validator("redis_cluster")
    @classmethod
    def _check_cluster(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("redis_sentinels"):
            raise ValueError("cannot be combined with REDIS_SENTINELS (pick one)")
        return value

    @field_validator("redis_key_prefix")
    @classmethod
    def _check_redis_key_prefix(cls, value: str | None) -> str | None:
        if value is not None and ("{" in value or "}" in value):
            raise ValueError(
                "must not hold { or }: with REDIS_CLUSTER cefmp4 makes the prefix a hash tag itself"
            )
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not _is_http_url(value):
            raise ValueError("must be an http:// or https:// URL, such as http://minio:9000")
        return value

    @field_validator("notify_url")
    @classmethod
    def _check_notify_url(cls, value: SecretStr | None) -> SecretStr | None:
        # The URL may carry a token: the message never quotes it.
        if value is not None and not _is_http_url(value.get_secret_value()):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("notify_secret")
    @classmethod
    def _check_notify_secret(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if info.data.get("notify_url") is not None and (
            value is None or len(value.get_secret_value()) < 16
        ):
            raise ValueError("needs at least 16 characters when NOTIFY_URL is set (it signs posts)")
        return value

    @field_validator("after_upload", mode="before")
    @classmethod
    def _lower_after_upload(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("after_upload_move_dir")
    @classmethod
    def _check_move_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if info.data.get("after_upload") != "move":
            return value
        if value is None:
            raise ValueError("is needed with AFTER_UPLOAD=move")
        if not value.is_dir():
            raise ValueError(f"{value} is not an existing directory")
        watch_dir = info.data.get("watch_dir")
        if watch_dir is not None:
            moved, watched = value.resolve(), Path(watch_dir).resolve()
            # A file moved into WATCH_DIR would be taken for a new recording.
            if moved == watched or watched in moved.parents:
                raise ValueError(f"{value} must be outside WATCH_DIR ({watch_dir})")
        return value

    @field_validator("s3_key_prefix")
    @classmethod
    def _check_key_prefix(cls, value: str) -> str:
        return value.lstrip("/")

    @field_validator("s3_storage_class")
    @classmethod
    def _check_storage_class(cls, value: str | None) -> str | None:
        if value is not None and not _STORAGE_CLASS.fullmatch(value):
            raise ValueError(
                "must be a storage class name in capitals, such as STANDARD_IA or GLACIER_IR"
            )
        return value

    @field_validator("s3_sse_kms_key_id")
    @classmethod
    def _check_kms_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and info.data.get("s3_sse") != "aws:kms":
            raise ValueError("is only used with S3_SSE=aws:kms")
        return value

    @field_validator("s3_object_tags", mode="before")
    @classmethod
    def _parse_tags(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            pairs = parse_qsl(value.strip(), keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError("must be URL-query form: key=value&key2=value2") from None
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("names a key twice")
        if len(pairs) > MAX_USER_OBJECT_TAGS:
            raise ValueError(
                f"has {len(pairs)} tags; at most {MAX_USER_OBJECT_TAGS} (S3 allows "
                f"{MAX_OBJECT_TAGS}, cefmp4 sets {len(CEFMP4_TAG_KEYS)})"
            )
        for key, tag_value in pairs:
            if not 1 <= len(key) <= 128 or len(tag_value) > 256:
                raise ValueError("keys must have 1 to 128 characters, values at most 256")
            if not (_TAG_TEXT.fullmatch(key) and _TAG_TEXT.fullmatch(tag_value)):
                raise ValueError(
                    "keys and values may hold letters, digits, spaces and + - = . _ : / @"
                )
            if key.startswith(("aws:", "cefmp4-")):
                raise ValueError(f"may not set the key {key!r}: it belongs to AWS or cefmp4")
        return tuple(pairs)

    @field_validator("s3_ca_bundle")
    @classmethod
    def _check_ca_bundle(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        if not value.is_file():
            raise ValueError(f"{value} is not a file")
        try:
            ssl.create_default_context().load_verify_locations(cafile=str(value))
        except (ssl.SSLError, OSError, ValueError):
            raise ValueError(f"{value} holds no PEM certificate") from None
        return value

    @property
    def part_size_bytes(self) -> int:
        return self.stream_chunk_size_mb * MIB

    @property
    def keys_prefix(self) -> str:
        """REDIS_KEY_PREFIX, a hash tag in cluster mode so every key shares one slot."""
        prefix = self.redis_key_prefix if self.redis_key_prefix is not None else "cefmp4:"
        if not self.redis_cluster:
            return prefix
        name, colon = (prefix[:-1], ":") if prefix.endswith(":") else (prefix, "")
        return "{" + name + "}" + colon

    @property
    def wait_replicas(self) -> int:
        """How many replicas must hold a step's record before the step counts as done."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self.redis_sentinels else 0

    @property
    def redis_connection_url(self) -> str:
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        return f"redis://{self.redis_host}:{self.redis_port}/0"

    @property
    def redis_display_url(self) -> str:
        """The Redis URL with its password masked, to say which Redis a command uses."""
        return masked_url(self.redis_connection_url)

    @property
    def heartbeat_path(self) -> Path:
        """HEALTH_FILE, or by default a file of this deployment's own in the temp folder.

        Named from the Redis, the key prefix and WATCH_DIR, so that `cefmp4 health` finds
        the file of the process started with the same settings, and two deployments on one
        machine do not share one.
        """
        if self.health_file is not None:
            return self.health_file
        deployment = "|".join(
            (self.redis_display_url, self.keys_prefix, str(self.watch_dir.absolute()))
        )
        digest = hashlib.sha256(deployment.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"cefmp4-health-{digest}"


def masked_url(url: str) -> str:
    """`url` with any password replaced by ***."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(a URL that cannot be shown)"
    if password:
        user, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "password" for name, _ in query):
        shown = [(name, "***" if name == "password" else value) for name, value in query]
        parts = parts._replace(query="&".join(f"{name}={value}" for name, value in shown))
    return parts.geturl()


def load_settings(**overrides: Any) -> Settings:
    """Read settings, turning validation errors into one ConfigError line per bad variable.

    The message names the variable and the reason, never the value (it may be a secret).
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise ConfigError(f"invalid setting {name}: {first['msg']}") from None
