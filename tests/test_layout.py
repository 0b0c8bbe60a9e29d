"""The layout explains the design: arrows point down, one writer of the state, clear names,
and a wheel that installs only `cefmp4`."""

from __future__ import annotations

import ast
import itertools
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Package folder -> its layer. A module imports from its own layer or below, never from a
# sibling of its layer (the producer and the consumers know nothing of each other).
LAYERS = {"common": 0, "producer": 1, "consumer": 1, "cefmp4": 2}
STATE_WRITERS = {"cefmp4.consumer.projector", "cefmp4.consumer.replay", "cefmp4.consumer.retention"}


def source_modules() -> dict[str, Path]:
    """Installed module name -> file, for every module of the project."""
    found: dict[str, Path] = {}
    for folder in LAYERS:
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.is_symlink():
                continue
            package = "cefmp4" if folder == "cefmp4" else f"cefmp4.{folder}"
            found[f"{package}.{path.stem}"] = path
    return found


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def folder_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "cefmp4":
        return None
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "cefmp4"


def test_imports_point_down_the_layers() -> None:
    modules = source_modules()
    wrong = []
    for module, path in modules.items():
        if module.endswith(".__main__"):
            continue  # `python -m producer` from a checkout: an entry point, like the CLI
        here = folder_of(module)
        assert here is not None
        for imported in imports_of(path):
            there = folder_of(imported)
            if there is None or there == here or imported not in modules:
                continue
            if LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{module} imports {imported}")

    assert wrong == []


def test_only_the_projector_replay_and_retention_write_the_state() -> None:
    writers = {
        module
        for module, path in source_modules().items()
        if {"cefmp4.common.statestore.StateWriter", "cefmp4.common.statestore.StateChanges"}
        & imports_of(path)
    }

    assert writers - STATE_WRITERS == set()


def test_no_module_reads_or_writes_state_keys_but_the_state_store() -> None:
    state_keys = ("keys.stream(", "keys.parts(", "keys.paths", "keys.streams", "keys.snapshot")
    tools = {str(path.relative_to(ROOT)): path for path in (ROOT / "ops").rglob("*.py")}
    found = [
        f"{module} uses {key}"
        for module, path in {**source_modules(), **tools}.items()
        if module != "cefmp4.common.statestore"
        for key in state_keys
        if key in path.read_text()
    ]

    assert found == []


def _one_edit_apart(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def test_no_two_module_names_differ_by_one_letter() -> None:
    names = {m.rsplit(".", 1)[1] for m in source_modules()} - {"__init__", "__main__"}

    close = [(a, b) for a, b in itertools.combinations(sorted(names), 2) if _one_edit_apart(a, b)]

    assert close == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of what the images build from, so no build/ lands in the checkout.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in LAYERS:
        shutil.copytree(ROOT / folder, source / folder, symlinks=True)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    [built] = out.glob("cefmp4-*.whl")
    return built


def test_the_wheel_installs_only_the_cefmp4_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()

    top = {
        name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")
    }
    assert top == {"cefmp4"}
    for module in ("cefmp4/cli.py", "cefmp4/common/config.py", "cefmp4/producer/watcher.py"):
        assert module in names
    assert "cefmp4/consumer/uploader.py" in names
    assert not [name for name in names if "/ops/" in name or "/tests/" in name]


def test_the_installed_package_runs_from_anywhere(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        check=True,
        capture_output=True,
    )
    check = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import cefmp4.cli, cefmp4.consumer.uploader, cefmp4.producer.watcher;"
        "assert cefmp4.cli.__file__.startswith(sys.argv[1]), cefmp4.cli.__file__;"
        "cefmp4.cli.build_parser().parse_args(['status', '--json'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", check, str(target)],
        cwd=tmp_path,
        env={name: value for name, value in os.environ.items() if name != "PYTHONPATH"},
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stderr
