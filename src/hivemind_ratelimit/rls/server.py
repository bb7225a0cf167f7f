"""The RLS gRPC server on grpc.aio: RateLimitService and grpc.health.v1.

Errors are translated to gRPC statuses here, once. An unexpected exception answers
INTERNAL and is counted and logged; it never takes the server down.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hivemind_ratelimit.errors import HivemindError, ListenError, SettingsError
from hivemind_ratelimit.rls.servicer import RateLimitServicer
from hivemind_ratelimit.settings import ServerSettings

log = logging.getLogger("hivemind.rls")

HEALTH_SERVICES = ("", "ratelimit")


class _RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    def __init__(self, servicer: RateLimitServicer) -> None:
        self._servicer = servicer

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rls_pb2.RateLimitResponse:
        try:
            observer = self._servicer.observer
            if observer is None:  # no tracing, no debug logging: the only cost is this branch
                return self._servicer.should_rate_limit(request)
            return observer.call(
                self._servicer.should_rate_limit, request, context.invocation_metadata() or ()
            )
        except HivemindError as exc:
            self._servicer.stats.count_error(exc.metric_label)
            await context.abort(exc.grpc_status, str(exc))
        except Exception:  # the boundary: count, log, answer INTERNAL, keep serving
            self._servicer.stats.count_error("internal")
            log.exception("ShouldRateLimit failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable")  # abort() always raises


class RlsServer:
    def __init__(self, settings: ServerSettings, servicer: RateLimitServicer) -> None:
        self._settings = settings
        self._servicer = servicer
        self._server: grpc.aio.Server | None = None
        self.health: health_aio.HealthServicer | None = None
        self.addresses: list[str] = []

    async def start(self) -> None:
        """Build and start the server; grpc.aio binds to the running event loop."""
        s = self._settings
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a leftover server must not silently share the port
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ]
        server = self._server = grpc.aio.server(options=options)
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(_RateLimitService(self._servicer), server)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        credentials = _server_credentials(s)
        address = f"{s.host}:{s.grpc_port}"
        try:
            port = (
                server.add_secure_port(address, credentials)
                if credentials
                else server.add_insecure_port(address)
            )
            self.addresses.append(f"{s.host}:{port}")
            if s.grpc_uds:
                address = f"unix:{s.grpc_uds}"
                server.add_insecure_port(address)
                self.addresses.append(address)
        except RuntimeError:  # grpcio says only "Failed to bind to address ..."
            # Stop it here: a server left for the garbage collector outlives the event loop.
            await server.stop(None)
            self._server = None
            raise ListenError(f"cannot listen for gRPC on {address} (in use, or not allowed)") from None
        await self.set_serving(False)
        await server.start()

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if self.health is not None:
            for name in HEALTH_SERVICES:
                await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self.set_serving(False)
            await self._server.stop(grace)


def _server_credentials(s: ServerSettings) -> grpc.ServerCredentials | None:
    tls = s.tls
    if not (tls.cert_file or tls.key_file):
        return None
    if not (tls.cert_file and tls.key_file):
        raise SettingsError("server.tls needs both cert_file and key_file")
    key = Path(tls.key_file).read_bytes()
    cert = Path(tls.cert_file).read_bytes()
    ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )
