"""A grpcio client against every RLS transport: concurrency, flow control, errors, TLS, drain."""

from __future__ import annotations

import signal
import ssl
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from integration.hivemind_harness import (
    LOOPBACK,
    RPC_TIMEOUT,
    HivemindProcess,
    free_ports,
    grpc_channel,
    make_request,
)
from transport.conftest import DOMAIN, SETTINGS, rules_file
from transport.h2raw import RLS_PATH, RawH2, grpc_message

pytestmark = pytest.mark.integration

OK = rls_pb2.RateLimitResponse.OK


def _stub(channel: grpc.Channel) -> Any:
    return rls_pb2_grpc.RateLimitServiceStub(channel)


def test_500_concurrent_calls_on_one_channel(server: HivemindProcess) -> None:
    with grpc_channel(server.grpc_target) as channel:
        stub = _stub(channel)
        futures: list[Future[Any]] = [
            stub.ShouldRateLimit.future(make_request(DOMAIN, {"k": f"c{i}"}), timeout=30) for i in range(500)
        ]
        responses = [f.result() for f in futures]
    assert all(r.overall_code == OK for r in responses)
    assert all(r.statuses[0].limit_remaining == 1_000_000_000 - 1 for r in responses)


def test_200kb_request_and_400kb_response(server: HivemindProcess) -> None:
    """Flow control both ways: a request and a response far above the 64 KiB window."""
    big_request = make_request(DOMAIN, *({"k": f"{i:04d}-" + "v" * 1000} for i in range(200)))
    assert big_request.ByteSize() > 200_000
    # Each status carries the rule's 1000-byte limit name.
    big_response_request = make_request(DOMAIN, *({"named": str(i)} for i in range(400)))
    with grpc_channel(server.grpc_target) as channel:
        stub = _stub(channel)
        first = stub.ShouldRateLimit(big_request, timeout=RPC_TIMEOUT)
        second = stub.ShouldRateLimit(big_response_request, timeout=RPC_TIMEOUT)
    assert first.overall_code == OK and len(first.statuses) == 200
    assert second.overall_code == OK and len(second.statuses) == 400
    assert second.ByteSize() > 400_000
    assert {s.current_limit.name for s in second.statuses} == {"n" * 1000}


def test_unknown_method_answers_unimplemented(server: HivemindProcess) -> None:
    with grpc_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary("/no.such.Service/Method")(b"", timeout=RPC_TIMEOUT)
        error: Any = raised.value
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert _stub(channel).ShouldRateLimit(make_request(DOMAIN, {"k": "x"}), timeout=RPC_TIMEOUT)


def test_call_past_its_deadline(server: HivemindProcess, transport: str) -> None:
    # A grpcio client with a deadline already past: DEADLINE_EXCEEDED, the next call works.
    # (A tiny positive timeout is no test: on loopback the answer can beat the timer.)
    with grpc_channel(server.grpc_target) as channel:
        stub = _stub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ShouldRateLimit(make_request(DOMAIN, {"k": "late"}), timeout=-1)
        error: Any = raised.value
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert stub.ShouldRateLimit(make_request(DOMAIN, {"k": "x"}), timeout=RPC_TIMEOUT)
    body = grpc_message(make_request(DOMAIN, {"k": "x"}).SerializeToString())
    # A whole request that arrives with its grpc-timeout already spent (1 ns): the native
    # transport answers DEADLINE_EXCEEDED without deciding; grpcio may still answer it.
    with RawH2(LOOPBACK, server.grpc_port) as h2:
        h2.connect()
        stream = h2.request(body, extra=[("grpc-timeout", "1n")])
        h2.pump(5.0, until=stream)
    expired = h2.streams[stream]
    assert expired.header("grpc-status") in (("4",) if transport == "nghttp2" else ("0", "4")), expired
    # The server honours grpc-timeout: a request whose body never completes is ended
    # (DEADLINE_EXCEEDED, or a reset) soon after its 200 ms, not left open.
    body = grpc_message(make_request(DOMAIN, {"k": "x"}).SerializeToString())
    with RawH2(LOOPBACK, server.grpc_port) as h2:
        h2.connect()
        started = time.monotonic()
        stream = h2.request(body[:3], extra=[("grpc-timeout", "200m")], end_stream=False)
        h2.pump(5.0, until=stream)
        elapsed = time.monotonic() - started
    answer = h2.streams.get(stream)
    assert answer is not None, "no answer at all"
    assert answer.header("grpc-status") == "4" or answer.reset is not None, answer
    assert 0.15 < elapsed < 3.0, elapsed


def test_compressed_messages(server: HivemindProcess, transport: str) -> None:
    request = make_request(DOMAIN, {"k": "gzip"})
    with grpc_channel(server.grpc_target) as channel:
        stub = _stub(channel)
        if transport == "grpcio":  # grpcio decompresses
            response = stub.ShouldRateLimit(request, timeout=RPC_TIMEOUT, compression=grpc.Compression.Gzip)
            assert response.overall_code == OK
        else:  # the native transport refuses, clearly
            with pytest.raises(grpc.RpcError) as raised:
                stub.ShouldRateLimit(request, timeout=RPC_TIMEOUT, compression=grpc.Compression.Gzip)
            error: Any = raised.value
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "compressed messages are not supported" in error.details()
            assert "identity" in error.details()
    # Raw: grpc-encoding gzip on an uncompressed-looking message.
    if transport != "grpcio":
        body = grpc_message(request.SerializeToString(), compressed=True)
        with RawH2(LOOPBACK, server.grpc_port) as h2:
            h2.connect()
            stream = h2.request(body, extra=[("grpc-encoding", "br")])
            h2.pump(5.0, until=stream)
        answer = h2.streams[stream]
        assert answer.header("grpc-status") == "12", answer
        assert "grpc-encoding: br" in (answer.header("grpc-message") or ""), answer


def test_health_check(server: HivemindProcess) -> None:
    with grpc_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "ratelimit"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as raised:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=RPC_TIMEOUT)
        error: Any = raised.value
        assert error.code() == grpc.StatusCode.NOT_FOUND


def test_oversized_message_is_refused_and_the_server_goes_on(server: HivemindProcess) -> None:
    with grpc_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary(RLS_PATH)(b"x" * (5 * 1024 * 1024), timeout=RPC_TIMEOUT)
        error: Any = raised.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert _stub(channel).ShouldRateLimit(make_request(DOMAIN, {"k": "x"}), timeout=RPC_TIMEOUT)


# -- TLS and shutdown: a process of their own ---------------------------------------------


def test_tls_with_alpn_h2(transport: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", LOOPBACK)
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    node = HivemindProcess(
        tmp_path,
        rules_file(tmp_path),
        name=f"tls-{transport}",
        settings={
            **SETTINGS,
            "server.transport": transport,
            "server.tls.cert_file": str(cert_file),
            "server.tls.key_file": str(key_file),
        },
        ports=tuple(free_ports(3)),  # type: ignore[arg-type]
    )
    try:
        node.start()
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
        with grpc.secure_channel(
            node.grpc_target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        ) as channel:
            reply = _stub(channel).ShouldRateLimit(make_request(DOMAIN, {"k": "tls"}), timeout=RPC_TIMEOUT)
            assert reply.overall_code == OK
        context = ssl.create_default_context(cafile=str(ca_file))
        context.set_alpn_protocols(["h2", "http/1.1"])
        import socket

        with (
            socket.create_connection((LOOPBACK, node.grpc_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.selected_alpn_protocol() == "h2"
    finally:
        node.stop()


def test_sigterm_sends_goaway_and_drains(transport: str, tmp_path: Path) -> None:
    node = HivemindProcess(
        tmp_path,
        rules_file(tmp_path),
        name=f"drain-{transport}",
        settings={**SETTINGS, "server.transport": transport},
        ports=tuple(free_ports(3)),  # type: ignore[arg-type]
    )
    try:
        node.start()
        with RawH2(LOOPBACK, node.grpc_port) as h2:
            h2.connect()
            stream = h2.request(grpc_message(make_request(DOMAIN, {"k": "d"}).SerializeToString()))
            h2.pump(5.0, until=stream)
            assert h2.streams[stream].header("grpc-status") == "0"
            started = time.monotonic()
            node.send_signal(signal.SIGTERM)
            h2.pump(5.0)
            assert h2.goaway is not None, "no GOAWAY before the connection closed"
            assert h2.closed
        assert node.wait(10) == 0
        assert time.monotonic() - started < 5.0
    finally:
        node.stop()
