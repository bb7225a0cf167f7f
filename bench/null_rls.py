"""A do-nothing RLS server: the cost floor of the gRPC stack Hivemind runs on.

Same stack as `hivemind serve` (grpc.aio on uvloop, the same server options); the
servicer answers every ShouldRateLimit with one constant OK response. The request is
still parsed by grpcio, as in Hivemind, so the difference between the two is the
decision itself: request conversion, rule matching, counters, response building.

    python bench/null_rls.py --port 18081 [--transport grpcio|nghttp2]

With `--transport nghttp2` the same constant answer is served by Hivemind's native
transport (rls/h2server.py) with a servicer that does nothing: the floor of that stack.

Prints `listening on HOST:PORT` once serving; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

# Built once: the handler does no work at all.
RESPONSE = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)

# The options of hivemind_ratelimit.rls.server, so both servers run the same transport.
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
]


class NullRateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        return RESPONSE


class NullBytesServicer:
    """What H2RlsServer needs of a servicer: constant bytes back, nothing counted."""

    def __init__(self) -> None:
        from hivemind_ratelimit.telemetry.stats import ServiceStats

        self.stats = ServiceStats()
        self.observer = None
        self._answer = RESPONSE.SerializeToString()

    def handle_bytes(self, payload: bytes, metadata: Any = ()) -> bytes:
        return self._answer


async def serve_native(host: str, port: int) -> None:
    from hivemind_ratelimit.rls.h2server import H2RlsServer
    from hivemind_ratelimit.settings import ServerSettings

    settings = ServerSettings(host=host, grpc_port=port, transport="nghttp2")
    server = H2RlsServer(settings, NullBytesServicer())  # type: ignore[arg-type]
    await server.start()
    await server.set_serving(True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {server.addresses[0]}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(NullRateLimitService(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {host}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--transport", choices=("grpcio", "nghttp2"), default="grpcio")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional, as in Hivemind
        pass
    asyncio.run((serve_native if args.transport == "nghttp2" else serve)(args.host, args.port))


if __name__ == "__main__":
    main()
