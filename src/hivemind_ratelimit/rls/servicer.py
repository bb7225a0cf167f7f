"""The transport seam: a request message in, a response message out.

Any HTTP/2 transport (grpcio today, a faster native one later) calls
`should_rate_limit`; it raises HivemindError subclasses that the transport turns into
gRPC statuses. Latency and response codes are counted here, as plain integers.
"""

from __future__ import annotations

import time

from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf.message import DecodeError

from hivemind_ratelimit.core.limiter import Code, Limiter, Request
from hivemind_ratelimit.errors import InvalidRequest
from hivemind_ratelimit.rls.convert import request_from_proto, response_to_proto
from hivemind_ratelimit.rls.wire import parse_request, response_bytes
from hivemind_ratelimit.settings import RequestLimits
from hivemind_ratelimit.telemetry.stats import ServiceStats
from hivemind_ratelimit.telemetry.tracing import Metadata, RequestObserver


class RateLimitServicer:
    def __init__(
        self,
        limiter: Limiter,
        bounds: RequestLimits,
        stats: ServiceStats,
        observer: RequestObserver | None = None,
    ) -> None:
        self.limiter = limiter
        self.bounds = bounds
        self.stats = stats
        # Tracing / debug logging per call, or None (the usual case: one branch). A
        # transport with an observer calls `observer.call(should_rate_limit, request,
        # metadata)` instead of `should_rate_limit(request)`.
        self.observer = observer
        self._parsed: dict[bytes, Request] = {}

    def should_rate_limit(self, message: rls_pb2.RateLimitRequest) -> rls_pb2.RateLimitResponse:
        started = time.perf_counter()
        request = request_from_proto(message, self.bounds)
        decision = self.limiter.decide(request)
        response = response_to_proto(decision)
        self.stats.latency.observe(time.perf_counter() - started)
        self.stats.count_response(decision.overall.name)
        return response

    def handle_bytes(self, payload: bytes, metadata: Metadata = ()) -> bytes:
        """The same call for a transport that speaks bytes: request bytes in, response bytes out.

        The common request shapes skip protobuf message objects (rls/wire.py); the rest,
        and every call while an observer is set, take the message path above.
        """
        observer = self.observer
        if observer is None:
            started = time.perf_counter()
            # Envoy sends byte-identical requests for the same client and route: parse
            # each distinct one once (Request is immutable; the cache is bounded).
            parsed = self._parsed
            request = parsed.get(payload)
            if request is None:
                request = parse_request(payload, self.bounds)
                if request is not None:
                    if len(parsed) >= PARSED_CACHE_SIZE:
                        parsed.clear()
                    parsed[payload] = request
            if request is not None:
                decision = self.limiter.decide(request)
                body = response_bytes(decision)
                self.stats.latency.observe(time.perf_counter() - started)
                self.stats.count_response(_CODE_NAMES[decision.overall])
                return body
        try:
            message = _parse(payload)
        except DecodeError:
            raise InvalidRequest("the request is not a valid RateLimitRequest message") from None
        if observer is None:
            return self.should_rate_limit(message).SerializeToString()  # type: ignore[no-any-return]
        return observer.call(self.should_rate_limit, message, metadata).SerializeToString()  # type: ignore[no-any-return]


_parse = rls_pb2.RateLimitRequest.FromString
_CODE_NAMES = {code: code.name for code in Code}
PARSED_CACHE_SIZE = 4096  # distinct request payloads kept parsed (up to ~2 MB)
