"""Settings come from the environment; a bad value stops start with one line, never a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from cefmp4.common.config import load_settings
from tests.conftest import config_error

SECRET = "s3cr3t-Value-that-must-never-leak"


# No setting from the outer environment or a stray .env reaches these tests.
pytestmark = pytest.mark.usefixtures("clean_env")


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
        ("WATCH_FINALIZE_ON_CLOSE", "sometimes"),
        ("COMPLETIONS_MAX_ENTRIES", "0"),
        ("NOTIFY_URL", "hooks.example.com/x?token=abc"),
        ("NOTIFY_TIMEOUT_SECONDS", "0"),
        ("AFTER_UPLOAD", "trash"),
        ("AFTER_UPLOAD_DELAY_SECONDS", "-1"),
        ("LOCAL_MIN_FREE_PERCENT", "101"),
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


def test_notify_url_needs_a_secret_to_sign_with(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://hooks.example.com/x?token=never-shown"
    for secret in (None, "short"):
        extra = {"NOTIFY_SECRET": secret} if secret else {}
        message = config_error(monkeypatch, NOTIFY_URL=url, **extra)

        assert message.startswith("invalid setting NOTIFY_SECRET: ")
        assert "never-shown" not in message and "short" not in message


def test_move_after_upload_needs_an_existing_folder_outside_watch_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    watch = tmp_path / "rec"
    (watch / "done").mkdir(parents=True)
    (tmp_path / "done").mkdir()
    monkeypatch.setenv("WATCH_DIR", str(watch))
    monkeypatch.setenv("AFTER_UPLOAD", "Move")
    said = {
        folder: config_error(monkeypatch, AFTER_UPLOAD_MOVE_DIR=folder)
        for folder in (str(watch), str(watch / "done"), str(tmp_path / "missing"))
    }
    monkeypatch.delenv("AFTER_UPLOAD_MOVE_DIR")

    assert config_error(monkeypatch).startswith(
        "invalid setting AFTER_UPLOAD_MOVE_DIR: Value error, is needed with AFTER_UPLOAD=move"
    )
    assert all(m.startswith("invalid setting AFTER_UPLOAD_MOVE_DIR: ") for m in said.values())
    assert "must be outside WATCH_DIR" in said[str(watch / "done")]
    assert "not an existing directory" in said[str(tmp_path / "missing")]
    monkeypatch.setenv("AFTER_UPLOAD_MOVE_DIR", str(tmp_path / "done"))
    assert load_settings().after_upload_move_dir == tmp_path / "done"


def test_sentinels_are_host_port_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "s1:26379, 10.0.0.2:26380")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "mymaster")

    settings = load_settings()

    assert settings.redis_sentinels == (("s1", 26379), ("10.0.0.2", 26380))
    assert settings.wait_replicas == 1


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REDIS_SENTINELS": "s1:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "mymaster"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINELS": "s1", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "s1:0", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        (
            {"REDIS_SENTINELS": "s1:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_CLUSTER": "true"},
            "REDIS_CLUSTER",
        ),
        ({"REDIS_KEY_PREFIX": "{site}:"}, "REDIS_KEY_PREFIX"),
        ({"REDIS_URL": "unix:///run/redis.sock", "REDIS_CLUSTER": "true"}, "REDIS_CLUSTER"),
        ({"REDIS_WAIT_REPLICAS": "-1"}, "REDIS_WAIT_REPLICAS"),
        ({"REDIS_WAIT_TIMEOUT_MS": "0"}, "REDIS_WAIT_TIMEOUT_MS"),
    ],
)
def test_bad_redis_high_availability_settings_stop_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    assert config_error(monkeypatch, **env).startswith(f"invalid setting {named}:")


@pytest.mark.parametrize(
    ("prefix", "cluster", "expected"),
    [
        (None, False, "cefmp4:"),
        (None, True, "{cefmp4}:"),
        ("site1:", True, "{site1}:"),
        ("site1", True, "{site1}"),
        ("site1:", False, "site1:"),
    ],
)
def test_the_key_prefix_is_a_hash_tag_in_cluster_mode(
    monkeypatch: pytest.MonkeyPatch, prefix: str | None, cluster: bool, expected: str
) -> None:
    if prefix is not None:
        monkeypatch.setenv("REDIS_KEY_PREFIX", prefix)
    monkeypatch.setenv("REDIS_CLUSTER", str(cluster).lower())

    settings = load_settings()

    assert settings.keys_prefix == expected
    assert settings.wait_replicas == 0
