"""Settings come from the environment; a bad value stops start with one line, never a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import Settings, load_settings
from common.errors import ConfigError

SECRET = "s3cr3t-Value-that-must-never-leak"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting from the outer environment or a stray .env reaches these tests."""
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    return str(caught.value)


def test_defaults() -> None:
    settings = load_settings()

    assert settings.watch_filter_globs == ("*.mp4",)
    assert settings.stream_chunk_size_mb == 10
    assert settings.part_size_bytes == 10 * 1024 * 1024
    assert settings.redis_connection_url == "redis://localhost:6379/0"


@pytest.mark.parametrize(
    ("raw", "globs"),
    [
        ('["*.mp4", "*.MOV"]', ("*.mp4", "*.MOV")),
        ("*.mp4, *.mov", ("*.mp4", "*.mov")),
        ("*.mkv", ("*.mkv",)),
    ],
)
def test_watch_filter_globs_from_json_or_comma_list(
    monkeypatch: pytest.MonkeyPatch, raw: str, globs: tuple[str, ...]
) -> None:
    monkeypatch.setenv("WATCH_FILTER_GLOBS", raw)

    assert load_settings().watch_filter_globs == globs


def test_settings_are_read_from_a_dot_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STREAM_CHUNK_SIZE_MB=16\n")

    assert load_settings().stream_chunk_size_mb == 16


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STREAM_CHUNK_SIZE_MB", "4"),
        ("STREAM_CHUNK_SIZE_MB", "5121"),
        ("REDIS_PORT", "abc"),
        ("REDIS_PORT", "0"),
        ("WATCH_FILTER_GLOBS", '["*.mp4",'),
        ("WATCH_FILTER_GLOBS", " , "),
        ("PYTHON_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_value_gives_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    message = config_error(monkeypatch, **{name: value})

    assert "\n" not in message
    assert message.startswith(f"invalid setting {name}: ")


def test_chunk_size_below_five_mib_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(monkeypatch, STREAM_CHUNK_SIZE_MB="4")

    assert message.splitlines() == [message]
    assert "STREAM_CHUNK_SIZE_MB" in message


def test_non_numeric_redis_port_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(monkeypatch, REDIS_PORT="abc")

    assert message.splitlines() == [message]
    assert "REDIS_PORT" in message
    assert "abc" not in message


def test_secret_never_appears_in_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(
        monkeypatch,
        S3_SECRET_ACCESS_KEY=SECRET,
        S3_ACCESS_KEY_ID=SECRET + "-id",
        REDIS_URL=f"redis://:{SECRET}@redis:6379/0",
        REDIS_PORT="abc",
    )

    assert "REDIS_PORT" in message
    assert SECRET not in message


def test_secret_never_appears_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("S3_ACCESS_KEY_ID", SECRET + "-id")
    monkeypatch.setenv("REDIS_URL", f"redis://:{SECRET}@redis:6379/0")

    settings = load_settings()

    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


def test_redis_url_wins_over_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "ignored-host")
    monkeypatch.setenv("REDIS_PORT", "1234")
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6380/2")

    assert load_settings().redis_connection_url == "redis://cache.example:6380/2"


def test_redis_host_and_port_build_the_url_without_redis_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_HOST", "cache.example")
    monkeypatch.setenv("REDIS_PORT", "6380")

    assert load_settings().redis_connection_url == "redis://cache.example:6380/0"
