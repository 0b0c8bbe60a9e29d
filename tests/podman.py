"""The container images built and run with rootful podman, where no registry is reachable.

The three adjustments the README describes: a base image made locally with debootstrap and
imported, the runc runtime with explicit ulimits (a CONTAINERS_CONF file), and
`--format docker` so that the images keep their HEALTHCHECK. The wheels are fetched on the
host and mounted into the build. The base image and the wheels are kept between runs in
CACHE, the wheels keyed by a hash of pyproject.toml; podman's layer cache does the rest.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import ROOT

CACHE = Path("/var/tmp/cefmp4-podman")
# Debian's own python3 and its venv module: what the Dockerfiles need of their BASE.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_SUITE = "bookworm"
BASE_MIRROR = "http://deb.debian.org/debian"
ROLES = ("producer", "consumer")


def _at_most(value: int, limit: int) -> int:
    hard = resource.getrlimit(limit)[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def containers_conf() -> str:
    """runc, and limits no higher than this machine's: podman's defaults would raise them.

    Raising a limit is not permitted here, and a container that asks fails to start
    ("error setting rlimit type 7: operation not permitted").
    """
    nofile = _at_most(20000, resource.RLIMIT_NOFILE)
    nproc = _at_most(4096, resource.RLIMIT_NPROC)
    return (
        '[engine]\nruntime = "runc"\n\n[containers]\n'
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
    )


# Build requirements of cefmp4 (pyproject's [build-system]) and what redis needs on
# Python < 3.11.3, which Debian bookworm's python3 (3.11.2) is, unlike the host's.
EXTRA_WHEELS = ("setuptools>=68", "wheel", "async-timeout>=4.0.3")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def base_image() -> str:
    return f"localhost/cefmp4-base:{BASE_SUITE}-{_digest(BASE_MIRROR, *BASE_PACKAGES)}"


def image(role: str) -> str:
    return f"localhost/cefmp4-{role}:latest"


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CACHE / "containers.conf")}


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`podman ARGS` with this module's CONTAINERS_CONF; output captured."""
    result = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=podman_env(),
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result


def why_podman_cannot_run() -> str | None:
    """None where the images can be built and run here, else the reason they cannot."""
    if shutil.which("podman") is None:
        return "podman is not installed"
    if os.geteuid() != 0:
        return "podman runs the images as root only here (rootless needs subuids)"
    if shutil.which("runc") is None:
        return "runc is not installed"
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "containers.conf").write_text(containers_conf())
    if podman("image", "exists", base_image(), check=False).returncode != 0 and (
        shutil.which("debootstrap") is None
    ):
        return "debootstrap is not installed, and no base image is cached"
    info = podman("info", check=False, timeout=60)
    if info.returncode != 0:
        return f"podman info fails: {info.stderr.strip().splitlines()[-1:]}"
    return None


@contextmanager
def _locked() -> Iterator[None]:
    """One preparation at a time, across pytest workers."""
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(command: Sequence[str], timeout: float) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: exit {result.returncode}\n{result.stderr}")


def _ensure_base() -> str:
    name = base_image()
    if podman("image", "exists", name, check=False).returncode == 0:
        return name
    rootfs = CACHE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            BASE_SUITE,
            str(rootfs),
            BASE_MIRROR,
        ],
        timeout=600,
    )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    try:
        imported = subprocess.run(
            ["podman", "import", "-", name],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=300,
            env=podman_env(),
            check=False,
        )
    finally:
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    if imported.returncode != 0:
        raise RuntimeError(f"podman import: {imported.stderr}")
    return name


def _ensure_wheels() -> Path:
    """The wheels of cefmp4's dependencies and build requirements (not of cefmp4 itself)."""
    key = _digest((ROOT / "pyproject.toml").read_text(), *EXTRA_WHEELS)
    wheels = CACHE / f"wheels-{key}"
    if wheels.is_dir():
        return wheels
    partial = CACHE / f"wheels-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--wheel-dir", str(partial), str(ROOT), *EXTRA_WHEELS], timeout=600)
    for built in partial.glob("cefmp4-*.whl"):
        built.unlink()  # built again from the sources in the image
    partial.rename(wheels)
    return wheels


def build_images() -> dict[str, str]:
    """Both images built from this checkout on the local base; their names by role."""
    with _locked():
        base = _ensure_base()
        wheels = _ensure_wheels()
        for role in ROLES:
            podman(
                "build",
                "--format",
                "docker",
                "--network",
                "host",
                "--build-arg",
                f"BASE={base}",
                "--build-arg",
                "WHEELS=/wheelhouse",
                "--volume",
                f"{wheels}:/wheelhouse:ro",
                "--file",
                str(ROOT / f"Dockerfile.{role}"),
                "--tag",
                image(role),
                str(ROOT),
                timeout=900,
            )
    return {role: image(role) for role in ROLES}
