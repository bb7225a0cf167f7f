"""Several real `hivemind serve` processes on 127.0.0.1, and a fault-injecting TCP proxy.

`Cluster` starts N nodes (ids n0, n1, ...) that know each other as bootstrap peers, on
ports picked up front, so a node can be stopped, killed and started again on the same
ports (a restarted member). `Cluster(..., proxied=True)` puts a `FaultProxy` in front of
every node's mesh port and makes each node advertise its proxy, so every peer
connection goes through a proxy that a test can switch to drop or blackhole the
connections from chosen nodes (a partition).

A proxy knows which node opened a connection by looking the client socket up in
/proc (its inode, then which node process holds it): every node dials from
127.0.0.1, so the address alone would not tell them apart.

The load helpers count admitted requests from the clients' responses; `peek` asks a
node for a counter's remaining budget without counting (descriptor hits_addend 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import wrappers_pb2

from integration.hivemind_harness import (
    LOOPBACK,
    OK,
    RPC_TIMEOUT,
    HivemindProcess,
    free_ports,
    grpc_channel,
    stop_all,
    wait_until,
)

# Short timings so failures are detected in about a second and a half.
FAST_MESH = {
    "mesh.sync_interval": "20ms",
    "mesh.probe_interval": "200ms",
    "mesh.suspect_timeout": "1s",
    "mesh.warmup_timeout": "2s",
    "rate_limiting.watch": "false",
}


# The rules of the cluster tests.
DOMAIN = "cluster"
LIMIT = 100  # per hour: an hour-long window never ends half-way through a test
BIG_LIMIT = 1000
# One rule per consistency mode, and a big one for the fault tests (bounded, the
# default). Every test counts on a descriptor value of its own.
RULES = f"""
domain: {DOMAIN}
descriptors:
  - key: bounded
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}, consistency: bounded}}
  - key: eventual
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}, consistency: eventual}}
  - key: big
    rate_limit: {{unit: hour, requests_per_unit: {BIG_LIMIT}}}
"""


# -- requests --------------------------------------------------------------------------


def request(domain: str, entries: Mapping[str, str], *, hits: int | None = None) -> rls_pb2.RateLimitRequest:
    """One descriptor; `hits` sets the descriptor's own hits_addend (0: check, do not count)."""
    descriptor = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries.items()]
    )
    if hits is not None:
        descriptor.hits_addend.CopyFrom(wrappers_pb2.UInt64Value(value=hits))
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=[descriptor])


class Clients:
    """One gRPC channel per target, reused for the life of a test."""

    def __init__(self) -> None:
        self._stubs: dict[str, rls_pb2_grpc.RateLimitServiceStub] = {}
        self._channels: list[grpc.Channel] = []

    def stub(self, target: str) -> rls_pb2_grpc.RateLimitServiceStub:
        stub = self._stubs.get(target)
        if stub is None:
            channel = grpc_channel(target)
            self._channels.append(channel)
            stub = self._stubs[target] = rls_pb2_grpc.RateLimitServiceStub(channel)
        return stub

    def forget(self, target: str) -> None:
        """Drop the cached channel of a node that went away (a restart gets a fresh one)."""
        self._stubs.pop(target, None)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        self._stubs.clear()

    # -- one call ------------------------------------------------------------------------

    def call(self, target: str, message: rls_pb2.RateLimitRequest) -> rls_pb2.RateLimitResponse:
        return self.stub(target).ShouldRateLimit(message, timeout=RPC_TIMEOUT)

    def peek(self, target: str, domain: str, entries: Mapping[str, str]) -> int:
        """The counter's remaining budget as `target` sees it, without counting."""
        response = self.call(target, request(domain, entries, hits=0))
        assert response.statuses[0].HasField("current_limit"), response
        return int(response.statuses[0].limit_remaining)

    def hit(self, target: str, domain: str, entries: Mapping[str, str], times: int = 1) -> int:
        """`times` single-hit requests, one after the other; how many were admitted."""
        admitted = 0
        for _ in range(times):
            if self.call(target, request(domain, entries)).overall_code == OK:
                admitted += 1
        return admitted

    # -- load ----------------------------------------------------------------------------

    def offer(
        self,
        targets: Sequence[str],
        schedule: Sequence[int],
        domain: str,
        entries: Mapping[str, str],
        *,
        rate: float,
        max_in_flight: int = 32,
    ) -> list[int]:
        """Send one single-hit request per schedule entry (an index into `targets`), paced
        at `rate` per second with at most `max_in_flight` outstanding; admitted per target.
        """
        message = request(domain, entries)
        admitted = [0] * len(targets)
        in_flight: list[tuple[int, Future[Any]]] = []
        started = time.monotonic()

        def settle(block: bool) -> None:
            keep = []
            for index, future in in_flight:
                if block or future.done():
                    if future.result().overall_code == OK:
                        admitted[index] += 1
                else:
                    keep.append((index, future))
            in_flight[:] = keep

        for k, index in enumerate(schedule):
            delay = started + k / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.02:  # behind (a busy machine): slip the schedule rather than burst
                started -= delay
            settle(block=False)
            while len(in_flight) >= max_in_flight:
                in_flight[0][1].result()
                settle(block=False)
            future = self.stub(targets[index]).ShouldRateLimit.future(message, timeout=RPC_TIMEOUT)
            in_flight.append((index, future))
        settle(block=True)
        return admitted


def schedule(nodes: int, requests: int, *, skew: float | None = None, seed: int = 0) -> list[int]:
    """Which node each request goes to: uniform, or `skew` of them to node 0 and the
    rest spread over the others. Shuffled with a fixed seed, so a run is repeatable."""
    if skew is None:
        plan = [i % nodes for i in range(requests)]
    else:
        busy = round(requests * skew)
        plan = [0] * busy + [1 + i % (nodes - 1) for i in range(requests - busy)]
    random.Random(seed).shuffle(plan)
    return plan


# -- the cluster -----------------------------------------------------------------------


@dataclass
class Cluster:
    """N Hivemind nodes that bootstrap from each other (through proxies when `proxied`)."""

    workdir: Path
    rules: str
    size: int
    settings: Mapping[str, str] = field(default_factory=dict)
    node_settings: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    proxied: bool = False
    hub: ProxyHub | None = None
    nodes: list[HivemindProcess] = field(default_factory=list)
    proxies: list[FaultProxy] = field(default_factory=list)
    clients: Clients = field(default_factory=Clients)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        rules_path = self.workdir / "ratelimit.yaml"
        rules_path.write_text(self.rules, encoding="utf-8")
        # All in one call: ports picked one node at a time can collide with each other.
        flat = free_ports(3 * self.size)
        ports = [tuple(flat[3 * i : 3 * i + 3]) for i in range(self.size)]
        mesh_addresses = [f"{LOOPBACK}:{p[2]}" for p in ports]
        if self.proxied:
            assert self.hub is not None, "a proxied cluster needs a ProxyHub"
            self.proxies = [self.hub.add(p[2], owners=self.owners) for p in ports]
            mesh_addresses = [proxy.address for proxy in self.proxies]
        for i in range(self.size):
            settings = {
                **FAST_MESH,
                "mesh.node_id": f"n{i}",
                "mesh.bootstrap_peers": ",".join(a for j, a in enumerate(mesh_addresses) if j != i),
                **self.settings,
                **self.node_settings.get(i, {}),
            }
            if self.proxied:
                settings["mesh.advertise_address"] = mesh_addresses[i]
            node_dir = self.workdir / f"n{i}"
            grpc_port, http_port, mesh_port = ports[i]
            self.nodes.append(
                HivemindProcess(
                    node_dir,
                    rules_path,
                    name=f"n{i}",
                    settings=settings,
                    ports=(grpc_port, http_port, mesh_port),
                )
            )

    def __getitem__(self, index: int) -> HivemindProcess:
        return self.nodes[index]

    def __iter__(self) -> Iterator[HivemindProcess]:
        return iter(self.nodes)

    def owners(self) -> dict[int, str]:
        """pid -> node id of every running node (for the proxies)."""
        return {n.pid: n.name for n in self.nodes if n.running and n.pid is not None}

    @property
    def targets(self) -> list[str]:
        return [n.grpc_target for n in self.nodes]

    def start(self, indexes: Sequence[int] | None = None) -> Cluster:
        """Start nodes together (all by default) and wait until each is ready."""
        chosen = [self.nodes[i] for i in (range(self.size) if indexes is None else indexes)]
        for node in chosen:
            self.clients.forget(node.grpc_target)
            node.start(wait=False)
        for node in chosen:
            node.wait_ready()
        return self

    def stop(self) -> None:
        self.clients.close()
        stop_all(self.nodes)

    # -- what the nodes see --------------------------------------------------------------

    def members(self, index: int) -> dict[str, dict[str, Any]]:
        """id -> member as node `index` sees it (from /mesh)."""
        view = self.nodes[index].http("/mesh", timeout=3.0).json()
        return {m["id"]: m for m in view["members"]}

    def wait_linked(self, indexes: Sequence[int] | None = None, *, timeout: float = 15.0) -> None:
        """Until every chosen node sees every other chosen node alive and linked."""
        chosen = list(range(self.size) if indexes is None else indexes)

        def linked() -> bool:
            for i in chosen:
                members = self.members(i)
                for j in chosen:
                    m = members.get(f"n{j}")
                    if j != i and (m is None or m["state"] != "alive" or not m["linked"]):
                        return False
            return True

        wait_until(linked, timeout, interval=0.1, what=f"nodes {chosen} to be linked alive")

    def remaining(self, domain: str, entries: Mapping[str, str]) -> list[int]:
        """Every running node's view of a counter's remaining budget."""
        return [self.clients.peek(n.grpc_target, domain, entries) if n.running else -1 for n in self.nodes]

    def wait_remaining(
        self,
        domain: str,
        entries: Mapping[str, str],
        expected: int,
        indexes: Sequence[int] | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        chosen = list(range(self.size) if indexes is None else indexes)

        def agree() -> bool:
            return all(
                self.clients.peek(self.nodes[i].grpc_target, domain, entries) == expected for i in chosen
            )

        try:
            wait_until(agree, timeout, interval=0.05, what=f"remaining {expected} on nodes {chosen}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; remaining: {self.remaining(domain, entries)}") from None


def metric(node: HivemindProcess, name: str) -> float:
    """The sum of a metric's samples on `node` (0 when it is not exported)."""
    return sum(value for (key, _), value in node.metrics().items() if key == name)


# -- the fault-injecting proxy ---------------------------------------------------------


def _socket_inode(port: int, peer_port: int) -> int | None:
    """The inode of the local TCP socket bound to `port` and connected to `peer_port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as lines:
            next(lines)
            for line in lines:
                parts = line.split()
                local, remote, inode = parts[1], parts[2], parts[9]
                if (
                    int(local.rsplit(":", 1)[1], 16) == port
                    and int(remote.rsplit(":", 1)[1], 16) == peer_port
                ):
                    return int(inode)
    return None


def socket_owner(client_port: int, server_port: int, owners: Mapping[int, str]) -> str | None:
    """Which of `owners` (pid -> name) holds the client end of a loopback connection."""
    inode = _socket_inode(client_port, server_port)
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid, name in owners.items():
        fd_dir = f"/proc/{pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{fd_dir}/{fd}") == wanted:
                        return name
    return None


@dataclass(eq=False)
class _Connection:
    source: str | None
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    blackholed: bool = False

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class FaultProxy:
    """A TCP proxy from a free port on 127.0.0.1 to one upstream port, switchable per source.

    `cut(sources, how)` affects connections opened by the named nodes (None: everyone):
    `drop` closes them, `blackhole` keeps them open but lets no byte through (as a
    network that silently loses packets). New connections from a cut source are closed
    at once either way (a blackholed connect would hold a dialer for gRPC's 20 s connect
    timeout and slow the heal down). `heal()` lets everything through again and closes
    blackholed connections, which are stale by then.
    """

    def __init__(self, hub: ProxyHub, upstream_port: int, owners: Callable[[], Mapping[int, str]]) -> None:
        self.hub = hub
        self.upstream_port = upstream_port
        self.owners = owners
        self.port = 0
        self.cut_sources: dict[str | None, str] = {}  # source (None: every source) -> how
        self.connections: set[_Connection] = set()
        self.accepted: dict[str | None, int] = {}  # connections by source, for tests
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.abort()
        self.connections.clear()

    def _how(self, source: str | None) -> str | None:
        return self.cut_sources.get(source) or self.cut_sources.get(None)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_port = writer.get_extra_info("peername")[1]
        source = socket_owner(peer_port, self.port, self.owners())
        self.accepted[source] = self.accepted.get(source, 0) + 1
        connection = _Connection(source, writer)
        if self._how(source) is not None:
            connection.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.upstream_port)
        except OSError:
            connection.abort()
            return
        connection.upstream = up_writer
        self.connections.add(connection)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, connection), self._pipe(up_reader, writer, connection)
            )
        finally:
            self.connections.discard(connection)

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if connection.blackholed:
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            connection.abort()  # either side gone: the whole connection is

    # -- switches (called from the test's thread) ------------------------------------------

    def cut(self, sources: Sequence[str] | None = None, how: str = "drop") -> None:
        assert how in ("drop", "blackhole"), how
        self.hub.run(self._cut(None if sources is None else list(sources), how))

    async def _cut(self, sources: list[str] | None, how: str) -> None:
        for source in sources if sources is not None else [None]:
            self.cut_sources[source] = how
        for connection in list(self.connections):
            if sources is None or connection.source in sources:
                if how == "drop":
                    connection.abort()
                else:
                    connection.blackholed = True

    def heal(self) -> None:
        self.hub.run(self._heal())

    async def _heal(self) -> None:
        self.cut_sources.clear()
        for connection in list(self.connections):
            if connection.blackholed:
                connection.abort()


class ProxyHub:
    """An event loop in a background thread that runs every FaultProxy of a test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.proxies: list[FaultProxy] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="proxy-hub", daemon=True)
        self._thread.start()

    def run(self, coroutine: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def add(self, upstream_port: int, *, owners: Callable[[], Mapping[int, str]]) -> FaultProxy:
        proxy = FaultProxy(self, upstream_port, owners)
        self.run(proxy._start())
        self.proxies.append(proxy)
        return proxy

    def close(self) -> None:
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                self.run(proxy._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self.loop.close()
