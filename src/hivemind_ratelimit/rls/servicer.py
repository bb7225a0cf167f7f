"""The transport seam: a request message in, a response message out.

Any HTTP/2 transport (grpcio today, a faster native one later) calls
`should_rate_limit`; it raises HivemindError subclasses that the transport turns into
gRPC statuses. Latency and response codes are counted here, as plain integers.
"""

from __future__ import annotations

import time

from envoy.service.ratelimit.v3 import rls_pb2

from hivemind_ratelimit.core.limiter import Limiter
from hivemind_ratelimit.rls.convert import request_from_proto, response_to_proto
from hivemind_ratelimit.settings import RequestLimits
from hivemind_ratelimit.telemetry.stats import ServiceStats


class RateLimitServicer:
    def __init__(self, limiter: Limiter, bounds: RequestLimits, stats: ServiceStats) -> None:
        self.limiter = limiter
        self.bounds = bounds
        self.stats = stats

    def should_rate_limit(self, message: rls_pb2.RateLimitRequest) -> rls_pb2.RateLimitResponse:
        started = time.perf_counter()
        request = request_from_proto(message, self.bounds)
        decision = self.limiter.decide(request)
        response = response_to_proto(decision)
        self.stats.latency.observe(time.perf_counter() - started)
        self.stats.count_response(decision.overall.name)
        return response
