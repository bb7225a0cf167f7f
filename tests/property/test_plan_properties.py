"""The planned path (`Limiter.plan` + `decide_plan` + `PlanEncoder`) answers, counts and
keeps stats exactly as the general path (`Limiter.decide` + `response_bytes`).

Two nodes get the same rules, options and traffic on the same clock: one serves through
`RateLimitServicer.handle_bytes` (planned whenever the request allows it), the other
through `decide` and `response_bytes`. Every answer, every counter and every stat must
be equal. The rules mix what a plan takes (plain fixed windows, no rule, unlimited) with
what sends a request back to the general path (shadow and quota mode, sliding windows,
several limits, replaces, options that change the decision, a full store), alone or in
a cluster whose peers report demand (bounded mode's allowances and leases).
"""

from __future__ import annotations

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from hivemind_ratelimit.core.allowance import ClusterView
from hivemind_ratelimit.core.clock import ManualClock
from hivemind_ratelimit.core.limiter import Limiter, LimiterOptions, Request, RequestDescriptor
from hivemind_ratelimit.core.store import CounterStore
from hivemind_ratelimit.rls.servicer import RateLimitServicer
from hivemind_ratelimit.rls.wire import parse_request, response_bytes
from hivemind_ratelimit.rules.loader import load_texts
from hivemind_ratelimit.rules.model import Consistency
from hivemind_ratelimit.settings import RequestLimits
from hivemind_ratelimit.telemetry.stats import ServiceStats

T0 = 1_700_006_400
KEYS = ("a", "b", "c")
VALUES = ("x", "y")
LIMIT_KINDS = ("plain",) * 8 + ("unlimited", "sliding", "two", "replacing", "named")


@st.composite
def rule_texts(draw: st.DrawFn) -> str:
    lines = ["domain: d", "descriptors:"]
    for key in KEYS:
        if not draw(st.booleans()):
            continue
        lines.append(f"  - key: {key}")
        if draw(st.booleans()):
            lines.append(f"    value: {draw(st.sampled_from(VALUES))}")
        kind = draw(st.sampled_from(LIMIT_KINDS))
        limit = draw(st.integers(0, 6))
        unit = draw(st.sampled_from(("second", "minute")))
        plain = f"unit: {unit}, requests_per_unit: {limit}"
        if kind == "unlimited":
            lines.append("    rate_limit: {unlimited: true}")
        elif kind == "sliding":
            lines.append(f"    rate_limit: {{{plain}, algorithm: sliding_window}}")
        elif kind == "two":
            lines.append("    rate_limits:")
            lines.append(f"      - {{unit: second, requests_per_unit: {limit}}}")
            lines.append(f"      - {{unit: minute, requests_per_unit: {limit + 3}}}")
        elif kind == "replacing":
            lines.append(f"    rate_limit: {{{plain}, replaces: [{{name: n}}]}}")
        elif kind == "named":
            lines.append(f"    rate_limit: {{{plain}, name: n}}")
        else:
            lines.append(f"    rate_limit: {{{plain}}}")
        if draw(st.integers(0, 9)) == 0:
            lines.append(f"    {draw(st.sampled_from(('shadow_mode', 'quota_mode')))}: true")
    if len(lines) == 2:
        lines.append("  - key: a\n    rate_limit: {unit: second, requests_per_unit: 2}")
    return "\n".join(lines) + "\n"


def payload(descriptors: list[list[tuple[str, str]]], hits: int) -> bytes:
    request = rls_pb2.RateLimitRequest(domain="d", hits_addend=hits)
    for entries in descriptors:
        descriptor = request.descriptors.add()
        for key, value in entries:
            descriptor.entries.append(ratelimit_pb2.RateLimitDescriptor.Entry(key=key, value=value))
    return request.SerializeToString()  # type: ignore[no-any-return]


entries = st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES)), min_size=1, max_size=2)
calls = st.lists(
    st.tuples(
        st.lists(entries, min_size=1, max_size=3),
        st.sampled_from((0, 0, 1, 2, 3)),  # hits_addend
        st.sampled_from((0.0, 0.0, 0.02, 0.3, 1.0, 7.0)),  # seconds to the next call
        st.sampled_from((None, None, 0.0, 5.0, 50.0)),  # a peer reports this demand (hits/s)
    ),
    min_size=1,
    max_size=40,
)
rarely = st.sampled_from((False,) * 5 + (True,))
options = st.builds(
    LimiterOptions,
    shadow_mode=rarely,
    stop_increment_when_over_limit=rarely,
    response_headers=rarely,
    default_consistency=st.sampled_from(list(Consistency)),
)


def node(
    text: str, opts: LimiterOptions, clock: ManualClock, max_counters: int, peers: int | None = None
) -> Limiter:
    """A limiter; with `peers`, in a cluster of that many live peers (bounded mode applies)."""
    cluster = None
    if peers is not None:
        cluster = ClusterView("me", clock)
        cluster.members.update(f"p{i}" for i in range(peers))
    return Limiter(
        store=CounterStore(max_counters),
        clock=clock,
        stats=ServiceStats(),
        options=opts,
        rules=load_texts([("r.yaml", text)]),
        cluster=cluster,
    )


def counters(limiter: Limiter) -> list[tuple[object, ...]]:
    out = []
    for c in limiter.store:
        mesh = c.mesh
        lease = (
            None if mesh is None else (mesh.allowance, mesh.spent, mesh.fresh, mesh.stale, mesh.lease_until)
        )
        out.append((c.key, c.window[0], c.own, c.admitted, c.seen, c.limit, lease))
    return sorted(out, key=repr)


@settings(max_examples=200, deadline=None)
@given(rule_texts(), options, calls, st.sampled_from((2, 5, 1000, 1000)), st.sampled_from((None, 0, 1, 2)))
def test_planned_path_agrees_with_the_general_path(
    text: str,
    opts: LimiterOptions,
    traffic: list[tuple[list[list[tuple[str, str]]], int, float, float | None]],
    room: int,
    peers: int | None,
) -> None:
    clock = ManualClock(T0)
    planned, general = node(text, opts, clock, room, peers), node(text, opts, clock, room, peers)
    servicer = RateLimitServicer(planned, RequestLimits(), planned.stats)
    for descriptors, hits, pause, demand in traffic:
        if demand is not None and peers:
            for limiter in (planned, general):
                assert limiter.cluster is not None
                for counter in list(limiter.store):
                    limiter.cluster.reported(counter.key, "p0", demand)
        data = payload(descriptors, hits)
        request = parse_request(data, RequestLimits())
        assert request is not None
        assert servicer.handle_bytes(data) == response_bytes(general.decide(request))
        clock.advance(pause)
    assert counters(planned) == counters(general)
    assert len(planned.store.dirty) == len(general.store.dirty)
    assert planned.stats.rules == general.stats.rules
    assert (planned.stats.counter_overflow, planned.stats.global_shadow_mode) == (
        general.stats.counter_overflow,
        general.stats.global_shadow_mode,
    )


def test_a_plain_request_is_planned_and_a_reload_plans_it_again() -> None:
    """The property above only means something if plans are made: the common shape is."""
    clock = ManualClock(T0)
    text = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: minute, requests_per_unit: 2}\n"
    limiter = node(text, LimiterOptions(), clock, 100)
    request = Request("d", (RequestDescriptor((("a", "x"),)), RequestDescriptor((("z", "q"),))))
    plan = limiter.plan(request)
    assert plan is not None
    # overall code; remaining and reset of "a"; -2 and 0 for the descriptor without a rule
    expected = [[1, 1, 60, -2, 0], [1, 0, 60, -2, 0], [2, -1, 60, -2, 0]]
    assert [limiter.decide_plan(plan) for _ in range(3)] == expected

    servicer = RateLimitServicer(limiter, RequestLimits(), limiter.stats)
    data = payload([[("a", "y")]], 0)
    servicer.handle_bytes(data)
    (prepared,) = servicer._prepared.values()
    assert prepared.encoder is not None
    shadow = text.replace("rate_limit:", "shadow_mode: true\n    rate_limit:")
    limiter.rules = load_texts([("r.yaml", shadow)])
    servicer.handle_bytes(data)
    assert prepared.rules is limiter.rules
    assert prepared.encoder is None  # shadow mode: the general path decides
