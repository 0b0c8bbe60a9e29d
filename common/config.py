"""Settings from the environment (and `.env`), validated once at start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.errors import ConfigError

MIB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True
    )

    watch_dir: Path = Path("recordings")
    watch_filter_globs: Annotated[tuple[str, ...], NoDecode] = ("*.mp4",)
    watch_file_min_age_seconds_for_idle: float = Field(default=5.0, gt=0, le=86_400)

    s3_endpoint_url: str | None = None
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_bucket_name: str = Field(default="recordings", min_length=3, max_length=63)
    s3_region_name: str = "us-east-1"
    s3_key_prefix: str = ""

    redis_url: SecretStr | None = None
    redis_host: str = "localhost"
    redis_port: int = Field(default=6379, ge=1, le=65535)
    redis_key_prefix: str = Field(default="cefmp4:", min_length=1)

    stream_chunk_size_mb: int = Field(default=10, ge=5, le=5120)
    stream_timeout_seconds: float = Field(default=60.0, gt=0)
    upload_concurrency: int = Field(default=4, ge=1, le=64)
    consumer_name: str | None = None
    claim_idle_seconds: float = Field(default=60.0, ge=1, le=3600)
    dead_letter_after_deliveries: int = Field(default=5, ge=1, le=1000)
    orphan_upload_grace_seconds: float = Field(default=3600.0, ge=0)
    orphan_check_interval_seconds: float = Field(default=600.0, gt=0)
    log_retention_enabled: bool = True
    log_retention_snapshot_interval_seconds: float = Field(default=300.0, gt=0)
    log_retention_min_entries: int = Field(default=10_000, ge=0)
    metadata_sidecar: bool = True
    python_log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    health_file: Path = Path("/tmp/cefmp4-health")
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

    @field_validator("s3_key_prefix")
    @classmethod
    def _check_key_prefix(cls, value: str) -> str:
        return value.lstrip("/")

    @property
    def part_size_bytes(self) -> int:
        return self.stream_chunk_size_mb * MIB

    @property
    def redis_connection_url(self) -> str:
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        return f"redis://{self.redis_host}:{self.redis_port}/0"


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
