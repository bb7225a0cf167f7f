"""The transport seam: a request message in, a response message out.

Any HTTP/2 transport (grpcio today, a faster native one later) calls
`should_rate_limit`; it raises HivemindError subclasses that the transport turns into
gRPC statuses. Latency and response codes are counted here, as plain integers.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf.message import DecodeError

from hivemind_ratelimit.core.limiter import Code, Limiter, LimiterOptions, Request
from hivemind_ratelimit.errors import InvalidRequest
from hivemind_ratelimit.rls.convert import request_from_proto, response_to_proto
from hivemind_ratelimit.rls.wire import PlanEncoder, parse_request, response_bytes
from hivemind_ratelimit.rules.model import RuleSet
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
        self._prepared: OrderedDict[bytes, _Prepared] = OrderedDict()

    def should_rate_limit(self, message: rls_pb2.RateLimitRequest) -> rls_pb2.RateLimitResponse:
        started = time.perf_counter()
        request = request_from_proto(message, self.bounds)
        decision = self.limiter.decide(request)
        response = response_to_proto(decision)
        self.stats.answered(decision.overall.name, time.perf_counter() - started)
        return response

    def handle_bytes(self, payload: bytes, metadata: Metadata = ()) -> bytes:
        """The same call for a transport that speaks bytes: request bytes in, response bytes out.

        The common request shapes skip protobuf message objects (rls/wire.py) and, when
        their rules allow, the general decision too (`Limiter.plan`); the rest, and every
        call while an observer is set, take the message path above.
        """
        observer = self.observer
        if observer is None:
            started = time.perf_counter()
            # Envoy sends byte-identical requests for the same client and route: each
            # distinct one is parsed and planned once (the cache is bounded).
            prepared = self._prepared.get(payload)
            if prepared is None:
                prepared = self._prepare(payload)
            if prepared is not None:
                limiter = self.limiter
                if prepared.rules is not limiter.rules or prepared.options is not limiter.options:
                    prepared.replan(limiter)
                encoder = prepared.encoder
                if encoder is not None and (results := limiter.decide_plan(encoder.plan)) is not None:
                    body = encoder.encode(results)
                    code = results[0]
                else:
                    decision = limiter.decide(prepared.request)
                    body = response_bytes(decision)
                    code = decision.overall
                self.stats.answered(_CODE_NAMES[code], time.perf_counter() - started)
                return body
        try:
            message = _parse(payload)
        except DecodeError:
            raise InvalidRequest("the request is not a valid RateLimitRequest message") from None
        if observer is None:
            return self.should_rate_limit(message).SerializeToString()  # type: ignore[no-any-return]
        return observer.call(self.should_rate_limit, message, metadata).SerializeToString()  # type: ignore[no-any-return]

    def _prepare(self, payload: bytes) -> _Prepared | None:
        request = parse_request(payload, self.bounds)
        if request is None:
            return None  # not the common shape: the message path decides (and says why)
        prepared = _Prepared(request)
        prepared.replan(self.limiter)
        if len(self._prepared) >= PREPARED_CACHE_SIZE:
            self._prepared.popitem(last=False)  # the oldest: no pause, hot ones come back one by one
        self._prepared[payload] = prepared
        return prepared


class _Prepared:
    """A distinct request payload, parsed, with its plan (in the encoder) for the rules
    and options it was made with; None when the request has no plan."""

    __slots__ = ("encoder", "options", "request", "rules")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.rules: RuleSet | None = None
        self.options: LimiterOptions | None = None
        self.encoder: PlanEncoder | None = None

    def replan(self, limiter: Limiter) -> None:
        self.rules, self.options = limiter.rules, limiter.options
        plan = limiter.plan(self.request)
        self.encoder = None if plan is None else PlanEncoder(plan)


_parse = rls_pb2.RateLimitRequest.FromString
_CODE_NAMES = {code.value: code.name for code in Code}
PREPARED_CACHE_SIZE = 4096  # distinct request payloads kept parsed and planned (a few MB)
