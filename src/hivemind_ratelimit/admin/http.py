"""The admin HTTP server (aiohttp).

GET /healthcheck  200 "OK" while serving, 500 while starting or draining (as envoyproxy/ratelimit)
GET /ready        200 once rules are loaded and warm-up is done, 503 otherwise
GET /metrics      Prometheus text exposition
POST /json        a proto3-JSON RateLimitRequest -> 200 (OK), 429 (OVER_LIMIT), 400 (bad body)
GET /rlconfig     the loaded rules, one line per rule with its limit
GET /mesh         this node and every member as it sees them, and sync statistics (JSON)
GET /             the status page for people (admin/status.py)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from aiohttp import web
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import json_format

from hivemind_ratelimit.admin import status as status_page
from hivemind_ratelimit.errors import HivemindError, ListenError
from hivemind_ratelimit.rls.servicer import RateLimitServicer
from hivemind_ratelimit.rules.model import RuleSet
from hivemind_ratelimit.telemetry import prometheus

log = logging.getLogger("hivemind.admin")

MAX_JSON_BODY = 1024 * 1024


class NodeView(Protocol):
    """What the admin endpoint reads of the running node."""

    @property
    def serving(self) -> bool: ...

    @property
    def ready(self) -> bool: ...

    def rules(self) -> RuleSet: ...

    def gauges(self) -> prometheus.Gauges: ...

    def mesh(self) -> dict[str, Any] | None: ...

    def metrics_text(self) -> str: ...

    def status(self) -> status_page.NodeStatus: ...


class AdminServer:
    def __init__(self, host: str, port: int, servicer: RateLimitServicer, node: NodeView) -> None:
        self.host, self.port = host, port
        self.servicer = servicer
        self.node = node
        app = web.Application(client_max_size=MAX_JSON_BODY)
        app.router.add_get("/healthcheck", self.healthcheck)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/json", self.json)
        app.router.add_get("/rlconfig", self.rlconfig)
        app.router.add_get("/mesh", self.mesh)
        app.router.add_get("/", self.index)
        self.app = app
        self._runner: web.AppRunner | None = None
        self.bound_port = 0

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ListenError(
                f"cannot listen for admin HTTP on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthcheck(self, request: web.Request) -> web.Response:
        if self.node.serving:
            return web.Response(text="OK")
        return web.Response(status=500, text="NOT SERVING")

    async def ready(self, request: web.Request) -> web.Response:
        if self.node.ready:
            return web.Response(text="ready")
        return web.Response(status=503, text="not ready")

    async def metrics(self, request: web.Request) -> web.Response:
        # Collected through the OpenTelemetry SDK (telemetry/metrics.py) and rendered as
        # text, in a thread: a large rule set takes a while, and decisions go on meanwhile.
        text = await asyncio.to_thread(self.node.metrics_text)
        return web.Response(
            text=text,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def mesh(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.mesh() or {"node": None, "members": []})

    async def index(self, request: web.Request) -> web.Response:
        return status_page.response(self.node, self.servicer.stats)

    async def rlconfig(self, request: web.Request) -> web.Response:
        rules = self.node.rules()
        return web.Response(text=rules.dump())

    async def json(self, request: web.Request) -> web.Response:
        try:
            body = await request.text()
            message = json_format.Parse(body, rls_pb2.RateLimitRequest())
        except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
            return web.Response(status=400, text=f"bad request body: {exc}\n")
        try:
            response = self.servicer.should_rate_limit(message)
        except HivemindError as exc:
            self.servicer.stats.count_error(exc.metric_label)
            return web.Response(status=400, text=f"{exc}\n")
        status = 429 if response.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT else 200
        return web.Response(
            status=status,
            text=json_format.MessageToJson(response, indent=None),
            content_type="application/json",
        )
