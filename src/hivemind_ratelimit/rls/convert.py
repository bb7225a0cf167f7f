"""Protobuf <-> domain conversion, with the input bounds checked on the way in."""

from __future__ import annotations

from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import struct_pb2

from hivemind_ratelimit.core.limiter import Code, Decision, Request, RequestDescriptor
from hivemind_ratelimit.core.windows import Unit
from hivemind_ratelimit.errors import InvalidRequest
from hivemind_ratelimit.settings import RequestLimits

_UNITS = {u.value: u for u in Unit}


def request_from_proto(message: rls_pb2.RateLimitRequest, bounds: RequestLimits) -> Request:
    domain = message.domain
    if not domain:
        raise InvalidRequest("domain must not be empty")
    if len(domain.encode()) > bounds.max_domain_bytes:
        raise InvalidRequest(f"domain is longer than {bounds.max_domain_bytes} bytes")
    count = len(message.descriptors)
    if count == 0:
        raise InvalidRequest("at least one descriptor is required")
    if count > bounds.max_descriptors:
        raise InvalidRequest(f"{count} descriptors; at most {bounds.max_descriptors} are allowed")
    max_entries, max_bytes = bounds.max_entries, bounds.max_entry_bytes
    descriptors = []
    for index, descriptor in enumerate(message.descriptors):
        entries = descriptor.entries
        if not entries:
            raise InvalidRequest(f"descriptors[{index}] has no entries")
        if len(entries) > max_entries:
            raise InvalidRequest(
                f"descriptors[{index}] has {len(entries)} entries; at most {max_entries} are allowed"
            )
        pairs = []
        for position, entry in enumerate(entries):
            key, value = entry.key, entry.value
            if not key:
                raise InvalidRequest(f"descriptors[{index}].entries[{position}] has an empty key")
            # len(str) <= len(bytes): check the cheap bound first, encode only when close.
            if (len(key) * 4 > max_bytes and len(key.encode()) > max_bytes) or (
                len(value) * 4 > max_bytes and len(value.encode()) > max_bytes
            ):
                raise InvalidRequest(
                    f"descriptors[{index}].entries[{position}]: "
                    f"key and value are limited to {max_bytes} bytes each"
                )
            pairs.append((key, value))
        override = None
        if descriptor.HasField("limit"):
            override = (descriptor.limit.requests_per_unit, _UNITS.get(descriptor.limit.unit, Unit.UNKNOWN))
        hits = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else None
        descriptors.append(RequestDescriptor(tuple(pairs), override, hits))
    return Request(domain, tuple(descriptors), message.hits_addend)


def response_to_proto(decision: Decision) -> rls_pb2.RateLimitResponse:
    response = rls_pb2.RateLimitResponse(overall_code=decision.overall.value)
    for status in decision.statuses:
        item = response.statuses.add(code=status.code.value, limit_remaining=status.remaining)
        if status.limit is not None:
            item.current_limit.requests_per_unit = status.limit.requests_per_unit
            item.current_limit.unit = status.limit.unit.value
            if status.limit.name:
                item.current_limit.name = status.limit.name
            item.duration_until_reset.seconds = status.reset_seconds
    for key, value in decision.headers:
        response.response_headers_to_add.add(key=key, value=value)
    if decision.quota_mode:
        metadata = struct_pb2.Struct()
        metadata.update({"quotaModeEnabled": True, "quotaModeViolations": decision.quota_violations})
        response.dynamic_metadata.CopyFrom(metadata)
    return response


def code_name(code: Code) -> str:
    return code.name
