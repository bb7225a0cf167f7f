"""The composition root: builds every part from Settings, runs, drains, stops.

Start: load the rules (bad rules refuse to start), open the gRPC and admin ports,
report SERVING. Stop (SIGTERM/SIGINT): report NOT_SERVING, let in-flight calls finish
within `server.drain_timeout`, close. SIGHUP reloads the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import signal
import socket
import time
from typing import Any

from hivemind_ratelimit import __version__
from hivemind_ratelimit.admin.http import AdminServer
from hivemind_ratelimit.admin.status import NodeStatus, busiest_counters
from hivemind_ratelimit.core.allowance import ClusterView
from hivemind_ratelimit.core.clock import Clock, SystemClock
from hivemind_ratelimit.core.limiter import Limiter, LimiterOptions, OverflowPolicy
from hivemind_ratelimit.core.store import CounterStore
from hivemind_ratelimit.gcpolicy import GcPolicy
from hivemind_ratelimit.mesh.protocol import MeshCore, MeshStats, Timing
from hivemind_ratelimit.mesh.transport import MeshTransport
from hivemind_ratelimit.rls.servicer import RateLimitServicer
from hivemind_ratelimit.rls.transport import rls_server
from hivemind_ratelimit.rules.model import RuleSet
from hivemind_ratelimit.rules.watcher import RuleReloader
from hivemind_ratelimit.settings import Settings
from hivemind_ratelimit.telemetry.metrics import MetricSources
from hivemind_ratelimit.telemetry.otel import Telemetry
from hivemind_ratelimit.telemetry.prometheus import Gauges
from hivemind_ratelimit.telemetry.stats import ServiceStats

log = logging.getLogger("hivemind")

SWEEP_INTERVAL = 1.0
SWEEP_SLICE = 5_000  # counters dropped between two chances for calls to be served (~3 ms)
GC_TICK_INTERVAL = 0.1  # seconds between two freezes of the survivors (gcpolicy.py)


def default_node_id() -> str:
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


class App:
    def __init__(self, settings: Settings, *, clock: Clock | None = None, node_id: str = "") -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.node_id = node_id or settings.mesh.node_id or default_node_id()
        self.incarnation = int(time.time() * 1000)
        rl = settings.rate_limiting
        mesh = settings.mesh
        self.stats = ServiceStats()
        self.mesh_stats = MeshStats()
        self.store = CounterStore(rl.max_counters)
        # Demand fades with a half-life of two sync intervals: skew is learned fast.
        self.cluster = ClusterView(
            self.node_id, self.clock, half_life=2 * mesh.sync_interval, lease=3 * mesh.sync_interval
        )
        # Counters outlive their window long enough for the last peer updates to land.
        grace = max(2.0, 5 * mesh.sync_interval)
        self.timing = Timing(
            sync_interval=mesh.sync_interval,
            probe_interval=mesh.probe_interval,
            suspect_timeout=mesh.suspect_timeout,
            grace=grace,
        )
        self.limiter = Limiter(
            store=self.store,
            clock=self.clock,
            stats=self.stats,
            cluster=self.cluster,
            options=LimiterOptions(
                near_limit_ratio=rl.near_limit_ratio,
                shadow_mode=rl.shadow_mode,
                stop_increment_when_over_limit=rl.stop_increment_when_over_limit,
                response_headers=rl.response_headers,
                on_counter_overflow=OverflowPolicy(rl.on_counter_overflow),
                default_consistency=rl.consistency,
                grace_seconds=grace,
            ),
        )
        self.telemetry = Telemetry(
            settings.observability,
            node_id=self.node_id,
            sources=MetricSources(stats=self.stats, gauges=self.gauges, mesh=lambda: self.mesh_core),
        )
        self.servicer = RateLimitServicer(
            self.limiter, settings.server.limits, self.stats, observer=self.telemetry.requests
        )
        self.reloader = RuleReloader(
            rl.config_path,
            merge_domains=rl.merge_domains,
            stats=self.stats,
            apply=self._apply_rules,
            tracer=self.telemetry.tracer,
        )
        self.rls = rls_server(settings.server, self.servicer)
        self.admin: AdminServer | None = None
        self.mesh_transport: MeshTransport | None = None
        self.mesh_core: MeshCore | None = None
        self._serving = False
        self._ready = False
        self._rules_loaded_at: float | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.gc = GcPolicy()

    # -- NodeView for the admin endpoint ---------------------------------------------------

    @property
    def serving(self) -> bool:
        return self._serving

    @property
    def ready(self) -> bool:
        return self._ready and self._serving

    def rules(self) -> RuleSet:
        return self.limiter.rules

    def metrics_text(self) -> str:
        return self.telemetry.prometheus_text()

    def gauges(self) -> Gauges:
        rules = self.limiter.rules
        return Gauges(
            live_counters=len(self.store),
            config_version=rules.version,
            rules_loaded=sum(1 for r in rules.walk() if r.limits),
        )

    def mesh(self) -> dict[str, Any] | None:
        if self.mesh_core is None:
            return None
        return self.mesh_core.describe(self.clock.now())

    def status(self) -> NodeStatus:
        now = self.clock.now()
        return NodeStatus(
            node_id=self.node_id,
            version=__version__,
            started_at=self.incarnation / 1000,
            now=now,
            rules_path=self.settings.rate_limiting.config_path,
            rules_loaded_at=self._rules_loaded_at,
            reload_error=self.reloader.last_error,
            busiest=busiest_counters(self.store, now),
        )

    # -- lifecycle ---------------------------------------------------------------------

    def _apply_rules(self, rules: RuleSet) -> None:
        self.limiter.rules = rules
        self._rules_loaded_at = self.clock.now()

    async def start(self) -> None:
        self._stop = asyncio.Event()
        log.info("telemetry: %s", self.telemetry.describe())
        rules = self.reloader.load_initial()
        log.info(
            "rules loaded: version %s, %d domains from %s",
            rules.version,
            len(rules.domains),
            self.settings.rate_limiting.config_path,
        )
        await self._start_mesh()
        await self.rls.start()
        server = self.settings.server
        if server.http_port:
            self.admin = AdminServer(server.host, server.http_port, self.servicer, self)
            await self.admin.start()
        rl = self.settings.rate_limiting
        if rl.watch:
            self._tasks.append(asyncio.create_task(self.reloader.watch(rl.watch_interval, self._stop)))
        self._tasks.append(asyncio.create_task(self._sweep(self._stop)))
        assert self.mesh_transport is not None
        warm = await self.mesh_transport.warm_up(self.settings.mesh.warmup_timeout)
        if not warm:
            log.warning(
                "mesh warm-up incomplete after %.1fs; serving with what arrived",
                self.settings.mesh.warmup_timeout,
            )
        self.gc.start()  # everything start-up made is loaded: freeze it (gcpolicy.py)
        self._tasks.append(asyncio.create_task(self._gc_ticks(self._stop)))
        self._serving = True
        self._ready = True
        await self.rls.set_serving(True)
        log.info(
            "hivemind %s serving: grpc %s, admin %s, mesh %s, node %s",
            __version__,
            ", ".join(self.rls.addresses),
            f"{server.host}:{self.admin.bound_port}" if self.admin else "off",
            self.mesh_core.membership.address if self.mesh_core else "off",
            self.node_id,
        )

    async def _start_mesh(self) -> None:
        mesh = self.settings.mesh
        core = MeshCore(
            node_id=self.node_id,
            boot=self.incarnation,
            address="",
            store=self.store,
            cluster=self.cluster,
            timing=self.timing,
            rng=random.Random(),
            stats=self.mesh_stats,
        )
        transport = MeshTransport(core, mesh, self.clock, tracer=self.telemetry.tracer)
        await transport.start()
        core.membership.address = mesh.advertise_address or _advertise(mesh.host, transport.bound_port)
        self.mesh_core, self.mesh_transport = core, transport

    async def _sweep(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=SWEEP_INTERVAL)
            now = self.clock.now()
            # In slices, with calls served in between: a window that ends may drop a
            # million counters at once (~0.6 s in one go).
            while True:
                if self.mesh_core is not None:
                    dropped = self.mesh_core.sweep(now, SWEEP_SLICE)
                else:
                    dropped = self.store.expire(now, budget=SWEEP_SLICE)
                if dropped < SWEEP_SLICE:
                    break
                await asyncio.sleep(0)

    async def _gc_ticks(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=GC_TICK_INTERVAL)
            self.gc.tick()

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def wait(self) -> None:
        assert self._stop is not None, "start() first"
        await self._stop.wait()

    async def stop(self) -> None:
        """Drain: NOT_SERVING first, in-flight calls finish, then close everything."""
        if self._serving:
            log.info("draining (up to %.1fs)", self.settings.server.drain_timeout)
        self._serving = False
        if self._stop is not None:
            self._stop.set()
        await self.rls.stop(self.settings.server.drain_timeout)
        if self.mesh_transport is not None:
            await self.mesh_transport.leave()
            await self.mesh_transport.stop()
        if self.admin is not None:
            await self.admin.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.telemetry.shutdown()
        self.gc.stop()
        log.info("stopped")

    def _reload_on_signal(self) -> None:
        task = asyncio.create_task(self.reloader.reload_async("SIGHUP"))
        self._tasks.append(task)

    async def serve_forever(self) -> None:
        """Start, wait for SIGTERM/SIGINT (SIGHUP reloads), drain, stop."""
        try:
            await self.start()
        except BaseException:
            await self.stop()  # close whatever had started before the failure
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        try:
            await self.wait()
        finally:
            await self.stop()


def _advertise(host: str, port: int) -> str:
    """The address peers dial: the bound host, or this machine's address for 0.0.0.0."""
    if host in ("0.0.0.0", "", "::"):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
