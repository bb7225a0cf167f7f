"""ShouldRateLimit decisions, following envoyproxy/ratelimit's semantics.

`Limiter.decide` takes a plain request and returns a plain decision; the gRPC layer
converts protobufs on either side. A decision runs in three steps:

1. resolve: find each descriptor's limits (request override, tree match, unlimited),
   then drop limits that another descriptor `replaces` by name;
2. evaluate: read each limit's counter for the current window (sliding windows also
   weigh the previous one) and decide over/under with the hits this request adds;
3. commit: add the hits (all of them unless `stop_increment_when_over_limit` and a
   descriptor is over), update the per-rule stats, apply shadow and quota modes.

Counting: a window's counter starts at 0; a request is over limit when the count after
adding its hits exceeds the limit, so a limit of N admits exactly N per window.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, NamedTuple

from hivemind_ratelimit.core.allowance import ClusterView
from hivemind_ratelimit.core.clock import Clock
from hivemind_ratelimit.core.store import Counter, CounterMesh, CounterStore
from hivemind_ratelimit.core.windows import Unit, sliding_weight_count
from hivemind_ratelimit.rules import matcher
from hivemind_ratelimit.rules.model import EMPTY_RULESET, Algorithm, Consistency, Domain, Limit, Rule, RuleSet
from hivemind_ratelimit.telemetry.stats import RuleStats, ServiceStats

UINT32_MAX = 4_294_967_295
KEY_SEPARATOR = "\x1e"


class Code(IntEnum):
    """Values match envoy.service.ratelimit.v3.RateLimitResponse.Code."""

    UNKNOWN = 0
    OK = 1
    OVER_LIMIT = 2


class OverflowPolicy(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


# Request, RequestDescriptor and DescriptorStatus are named tuples: made on every call,
# and a tuple is the cheapest immutable record to build.
class RequestDescriptor(NamedTuple):
    entries: tuple[tuple[str, str], ...]
    override: tuple[int, Unit] | None = None  # (requests_per_unit, unit) from Envoy
    hits_addend: int | None = None  # the descriptor's own hits_addend, when set


class Request(NamedTuple):
    domain: str
    descriptors: tuple[RequestDescriptor, ...]
    hits_addend: int = 0


@dataclass(frozen=True, slots=True)
class CurrentLimit:
    requests_per_unit: int
    unit: Unit
    name: str = ""


class DescriptorStatus(NamedTuple):
    code: Code
    limit: CurrentLimit | None = None
    remaining: int = 0
    reset_seconds: int = 0


_OK, _OVER_LIMIT = Code.OK.value, Code.OVER_LIMIT.value

STATUS_NO_LIMIT = DescriptorStatus(Code.OK)
STATUS_UNLIMITED = DescriptorStatus(Code.OK, remaining=UINT32_MAX)


@dataclass(slots=True)
class Decision:
    overall: Code
    statuses: list[DescriptorStatus]
    headers: list[tuple[str, str]] = field(default_factory=list)
    quota_violations: list[int] = field(default_factory=list)
    quota_mode: bool = False  # a quota-mode rule took part (the reference's quotaModeEnabled)
    quota_descriptors: int = 0


@dataclass(frozen=True, slots=True)
class LimiterOptions:
    near_limit_ratio: float = 0.8
    shadow_mode: bool = False
    stop_increment_when_over_limit: bool = False
    response_headers: bool = False
    on_counter_overflow: OverflowPolicy = OverflowPolicy.ALLOW
    default_consistency: Consistency = Consistency.BOUNDED
    grace_seconds: float = 2.0  # counters outlive their window by this much


class _Spec:
    """One limit of a resolved descriptor, with everything a decision needs precomputed.

    Everything but the counter key depends on the limit alone: a spec made from the
    limit (`_Spec(limit, options)`, once per rule: `Limiter._resolve`) is a template
    that `keyed` copies for each counter path.
    """

    __slots__ = ("current", "key", "length", "limit", "mode", "near", "retain", "rps", "sliding")

    def __init__(self, limit: Limit, options: LimiterOptions) -> None:
        self.limit = limit
        self.key = ""
        self.length = length = 0 if limit.unlimited else limit.window_seconds
        self.sliding = sliding = limit.algorithm is Algorithm.SLIDING_WINDOW
        self.retain = length * (2 if sliding else 1)  # + window start + grace
        self.mode = limit.consistency or options.default_consistency
        self.rps = limit.requests_per_unit
        self.near = math.floor(limit.requests_per_unit * options.near_limit_ratio)
        self.current = CurrentLimit(limit.requests_per_unit, limit.unit, limit.name)

    def keyed(self, domain: str, path: str) -> _Spec:
        spec = _Spec.__new__(_Spec)
        spec.limit = self.limit
        spec.key = f"{domain}{KEY_SEPARATOR}{path}{KEY_SEPARATOR}{self.length}"
        spec.length = self.length
        spec.sliding = self.sliding
        spec.retain = self.retain
        spec.mode = self.mode
        spec.rps = self.rps
        spec.near = self.near
        spec.current = self.current
        return spec


class _Resolved:
    """What a descriptor's entries resolve to: immutable, cached per rule set."""

    __slots__ = ("planned", "replaces", "rule", "specs", "stats_key")

    def __init__(
        self, rule: Rule | None, specs: tuple[_Spec, ...], replaces: frozenset[str], stats_key: str
    ) -> None:
        self.rule = rule
        self.specs = specs
        self.replaces = replaces
        self.stats_key = stats_key
        # Its part of a plan (Limiter._plan_part), made when a plan first needs it.
        self.planned: tuple[PlanItem, PlanCount | None] | None = None


def _templates(
    limits: tuple[Limit, ...], options: LimiterOptions
) -> tuple[tuple[_Spec, ...], frozenset[str]]:
    """The specs of a rule's limits without counter keys, and the names they replace."""
    return (
        tuple(_Spec(limit, options) for limit in limits),
        frozenset(name for limit in limits for name in limit.replaces),
    )


class _Check:
    """One limit of one descriptor, evaluated."""

    __slots__ = ("after", "before", "count", "counter", "over", "reset", "spec", "spend")

    def __init__(
        self, spec: _Spec, counter: Counter | None, before: int, after: int, over: bool, reset: int,
        count: bool = True, spend: bool = False,
    ) -> None:  # fmt: skip
        self.spec = spec
        self.counter = counter  # None: the store is full (overflow)
        self.before = before
        self.after = after
        self.over = over
        self.reset = reset
        self.count = count  # add the hits to this node's slot (False: refused by the allowance)
        self.spend = spend  # bounded mode: the hits spend this node's allowance

    @property
    def remaining(self) -> int:
        return 0 if self.over else max(self.spec.rps - self.after, 0)


# Resolved descriptors cached per limiter; the oldest goes when the cache is full, all of
# them when the rules (or options) change. Big enough for the hot keys, small next to
# the store.
RESOLVE_CACHE_SIZE = 16_384


class Limiter:
    def __init__(
        self,
        *,
        store: CounterStore,
        clock: Clock,
        stats: ServiceStats,
        options: LimiterOptions | None = None,
        rules: RuleSet = EMPTY_RULESET,
        cluster: ClusterView | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.stats = stats
        self.options = options or LimiterOptions()
        self.rules = rules  # swapped whole on reload; read once per decision
        self.cluster = cluster  # None: a single node, nothing is shared
        self._cache: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], _Resolved | None] = OrderedDict()
        self._cache_for: tuple[RuleSet, LimiterOptions] | None = None
        # id(rule.limits) -> (rule.limits, its spec templates, the names they replace)
        self._templates: dict[int, tuple[tuple[Limit, ...], tuple[_Spec, ...], frozenset[str]]] = {}

    def decide(self, request: Request) -> Decision:
        rules = self.rules
        descriptors = request.descriptors
        domain = rules.domains.get(request.domain)
        if domain is None:
            self.stats.domain_not_found += 1
            return Decision(Code.OK, [STATUS_NO_LIMIT] * len(descriptors))
        options = self.options
        self._check_cache()
        now = self.clock.now()
        name = domain.name
        resolved: list[_Resolved | None] = []
        replacing = False
        for descriptor in descriptors:
            if descriptor.override is not None and descriptor.override[1] is not Unit.UNKNOWN:
                found: _Resolved | None = self._override(name, descriptor)
            else:
                found = self._lookup(domain, descriptor.entries)
            if found is not None and found.replaces:
                replacing = True
            resolved.append(found)
        filtered = _apply_replaces(resolved) if replacing else None

        default_hits = max(request.hits_addend, 1)
        any_over = False
        # Hits that earlier descriptors of this request will add to the same counter (two
        # descriptors can share one, e.g. through share_threshold): the reference counts
        # them one after the other, so the later descriptor sees the earlier one's hits.
        pending: dict[int, int] = {}
        # (index, resolved, hits, checks) of each descriptor with a limit to count.
        work: list[tuple[int, _Resolved, int, list[_Check]]] = []
        statuses = [STATUS_NO_LIMIT] * len(descriptors)
        for index, found in enumerate(resolved):
            if found is None:
                continue
            specs = found.specs if filtered is None else filtered[index]
            if not specs:
                continue
            if specs[0].limit.unlimited:
                statuses[index] = STATUS_UNLIMITED
                continue
            descriptor = descriptors[index]
            hits = descriptor.hits_addend if descriptor.hits_addend is not None else default_hits
            checks = []
            mine: list[int] = []  # limits of one window length share one counter
            for spec in specs:
                check = self._evaluate(spec, hits, now)
                counter = check.counter
                if counter is not None:
                    cid = id(counter)
                    if pending:
                        earlier = pending.get(cid, 0)
                        if earlier:
                            check.before += earlier
                            check.after += earlier
                            check.over = check.over or check.after > spec.rps
                    if cid not in mine:
                        mine.append(cid)
                checks.append(check)
                if check.over:
                    any_over = True
            work.append((index, found, hits, checks))
            for cid in mine:
                pending[cid] = pending.get(cid, 0) + hits

        commit = not (any_over and options.stop_increment_when_over_limit)
        decision = Decision(Code.OK, statuses)
        over_limit = False
        for index, found, hits, checks in work:
            status = self._commit(name, found, checks, hits, commit, index, decision)
            if status.code is Code.OVER_LIMIT:
                over_limit = True
            statuses[index] = status

        # Quota mode (as the reference since its "all limits exceeded" fix): quota rules
        # over their limit let the request through, unless every one of them is over.
        all_quota_over = 0 < decision.quota_descriptors == len(decision.quota_violations)
        if all_quota_over or over_limit:
            if options.shadow_mode:
                self.stats.global_shadow_mode += 1
            else:
                decision.overall = Code.OVER_LIMIT
        if options.response_headers:
            decision.headers = _headers(statuses)
        return decision

    # -- the planned path ------------------------------------------------------------

    def plan(self, request: Request) -> Plan | None:
        """A plan for a request whose every descriptor needs nothing but one plain
        fixed-window limit (or none, or unlimited); None for any other request.

        `decide_plan` then decides it in one pass with what the plan precomputed, with
        exactly the counts, stats and statuses `decide` gives (tests/property checks
        both against each other). A plan belongs to the rules and options it was made
        with: the caller makes it again when either changed (a reload).
        """
        options = self.options
        if options.shadow_mode or options.stop_increment_when_over_limit or options.response_headers:
            return None
        domain = self.rules.domains.get(request.domain)
        if domain is None:
            return None
        items: list[PlanItem] = []
        counts: list[PlanCount | None] = []
        keys: set[str] = set()
        self._check_cache()
        for descriptor in request.descriptors:
            if descriptor.override is not None or descriptor.hits_addend is not None:
                return None
            found = self._lookup(domain, descriptor.entries)
            if found is None:
                items.append(_NO_RULE)
                counts.append(None)
                continue
            planned = found.planned
            if planned is None:
                planned = found.planned = self._plan_part(domain.name, found)
            if planned is _NOT_PLANNED:
                return None
            item, count = planned
            if count is not None:
                if count[0] in keys:
                    return None  # two descriptors counting on one counter
                keys.add(count[0])
            items.append(item)
            counts.append(count)
        return Plan(tuple(items), tuple(counts), len(keys), max(request.hits_addend, 1))

    def _plan_part(self, domain: str, found: _Resolved) -> tuple[PlanItem, PlanCount | None]:
        """A resolved descriptor's part of a plan, or _NOT_PLANNED. Kept on the resolved
        descriptor, which is cached per rules and options like the plan."""
        rule = found.rule
        if found.replaces or len(found.specs) != 1 or rule is None or rule.quota_mode or rule.shadow_mode:
            return _NOT_PLANNED
        spec = found.specs[0]
        if spec.limit.unlimited:
            return _UNLIMITED
        if spec.sliding:
            return _NOT_PLANNED
        count = (
            spec.key, spec.length, spec.retain + self.options.grace_seconds, spec.rps, spec.near,
            spec.mode is Consistency.LOCAL, spec.mode is Consistency.BOUNDED,
            self.stats.rule(domain, found.stats_key),
        )  # fmt: skip
        return PlanItem(spec, None), count

    def decide_plan(self, plan: Plan) -> list[int] | None:
        """Decide a planned request: the overall code (a Code value), then per item the
        remaining count after its hits (-1: over limit, -2: an item without a limit) and
        the seconds until its window resets. None when the store has no room for the
        request's counters: `decide` then applies the overflow policy (nothing is
        counted here then).
        """
        store = self.store
        if store.size + plan.counters > store.max_counters:
            return None
        cluster = self.cluster
        dirty = store.dirty if cluster is not None else None
        view = cluster if cluster is not None and cluster.active else None  # bounded mode applies
        now = self.clock.now()
        seconds = int(now)
        hits = plan.hits
        newest = store.newest
        out = [_OK]
        for count in plan.counts:
            if count is None:
                out += _NO_LIMIT_RESULT
                continue
            key, length, keep, rps, near, local, bounded, stats = count
            start = int(now // length) * length
            counter = newest.get(key)
            if counter is None or counter.window[0] != start:
                counter = store.get_or_create(key, start, length, start + keep, now)
                assert counter is not None  # there was room for every counter of the request
            counter.limit = rps
            if local:
                counter.seen = -1
            mesh = counter.mesh
            before = counter.own if mesh is None else counter.own + mesh.remote_total
            after = before + hits
            stats.total_hits += hits
            if after > rps:
                counter.own += hits
                if before >= rps:
                    stats.over_limit += hits
                else:
                    stats.over_limit += after - rps
                    stats.near_limit += rps - max(near, before)
                out[0] = _OVER_LIMIT
                out.append(-1)
            elif bounded and view is not None and not self._spend(view, counter, rps - before, hits, now):
                stats.over_limit += hits  # refused by the allowance: not counted
                out[0] = _OVER_LIMIT
                out.append(-1)
            else:
                counter.own += hits
                counter.admitted += hits
                if bounded and view is not None:
                    spending = counter.mesh
                    assert spending is not None  # made by _spend
                    spending.spent += hits
                if after > near:
                    stats.near_limit += hits if before >= near else after - near
                stats.within_limit += hits
                out.append(rps - after)
            if counter.seen >= 0:
                counter.seen += hits
                if dirty is not None:
                    dirty.add(counter)
            out.append(length - seconds % length)
        return out

    # -- step 1 ------------------------------------------------------------------------

    def _check_cache(self) -> None:
        """Drop the resolution cache when the rules or options changed."""
        made_for = self._cache_for
        if made_for is None or made_for[0] is not self.rules or made_for[1] is not self.options:
            self._cache.clear()
            self._templates.clear()
            self._cache_for = (self.rules, self.options)

    def _lookup(self, domain: Domain, entries: tuple[tuple[str, str], ...]) -> _Resolved | None:
        """`_resolve`, through the cache (call `_check_cache` first)."""
        cache = self._cache
        key = (domain.name, entries)
        found: _Resolved | None = cache.get(key, _MISSING)
        if found is _MISSING:
            found = self._resolve(domain, entries)
            if len(cache) >= RESOLVE_CACHE_SIZE:
                cache.popitem(last=False)  # the oldest: no pause, hot entries come back one by one
            cache[key] = found
        return found

    def _resolve(self, domain: Domain, entries: tuple[tuple[str, str], ...]) -> _Resolved | None:
        match = matcher.find(domain, entries)
        if match is None:
            return None
        rule = match.rule
        # Per rule (the rule keeps its limits tuple alive, so its id stays its own).
        made = self._templates.get(id(rule.limits))
        if made is None or made[0] is not rule.limits:
            made = self._templates[id(rule.limits)] = (rule.limits, *_templates(rule.limits, self.options))
        _, templates, replaces = made
        name, path = domain.name, match.counter_path
        return _Resolved(rule, tuple(t.keyed(name, path) for t in templates), replaces, match.stats_key)

    def _override(self, domain_name: str, descriptor: RequestDescriptor) -> _Resolved:
        assert descriptor.override is not None
        requests, unit = descriptor.override
        entries = descriptor.entries
        path = matcher.COUNTER_SEPARATOR.join(f"{k}={v}" for k, v in entries)
        # Keys only: request values would make the metric's cardinality unbounded.
        stats_key = ".".join([domain_name, *(k for k, _ in entries)])
        templates, replaces = _templates((Limit(requests, unit),), self.options)
        return _Resolved(None, tuple(t.keyed(domain_name, path) for t in templates), replaces, stats_key)

    # -- step 2 ------------------------------------------------------------------------

    def _evaluate(self, spec: _Spec, hits: int, now: float) -> _Check:
        length = spec.length
        start = int(now // length) * length  # window_start()
        key = spec.key
        counter = self.store.get_or_create(
            key, start, length, start + spec.retain + self.options.grace_seconds, now
        )
        reset = length - int(now) % length  # seconds_until_reset()
        rps = spec.rps
        if counter is None:
            if self.options.on_counter_overflow is OverflowPolicy.DENY:
                # As if the window were already full: every hit of the request is over limit.
                return _Check(spec, None, rps, rps + hits, True, reset)
            return _Check(spec, None, 0, 0, False, reset)
        counter.limit = rps
        mode = spec.mode
        if mode is Consistency.LOCAL:
            counter.seen = -1  # not shared (Counter.shared)
        mesh = counter.mesh
        before = counter.own if mesh is None else counter.own + mesh.remote_total
        if spec.sliding:
            previous = self.store.get(key, start - length)
            if previous is not None:
                before = sliding_weight_count(previous.total, before, now, start, length)
        after = before + hits
        over = after > rps
        cluster = self.cluster
        if over or mode is not Consistency.BOUNDED or cluster is None or not cluster.active:
            return _Check(spec, counter, before, after, over, reset)
        if self._spend(cluster, counter, rps - before, hits, now):
            return _Check(spec, counter, before, after, False, reset, spend=True)
        # Refused by the allowance while the global count is under the limit: not
        # counted, or refused hits would eat the budget the busy node needs.
        return _Check(spec, counter, before, after, True, reset, count=False)

    def _spend(self, cluster: ClusterView, counter: Counter, remaining: int, hits: int, now: float) -> bool:
        """Bounded mode, within the global limit: may this node spend `hits` of its
        allowance, its share of the `remaining` budget (core/allowance.py)? A new one is
        asked for when the lease ran out, or when the hits do not fit and the view
        changed since. The caller adds the hits to `mesh.spent` when it commits them.
        """
        mesh = counter.mesh
        if mesh is None:
            mesh = counter.mesh = CounterMesh()
        if mesh.allowance < 0 or now >= mesh.lease_until:
            self._allow(cluster, counter, mesh, remaining)
        if mesh.spent + hits <= mesh.allowance:
            return True
        if mesh.stale:
            self._allow(cluster, counter, mesh, remaining)
            if mesh.spent + hits <= mesh.allowance:
                return True
        # Cold start: demand is not known yet; one hit per member may pass.
        return mesh.fresh and mesh.allowance == 0 and mesh.spent == 0 and hits <= 1

    def _allow(self, cluster: ClusterView, counter: Counter, mesh: CounterMesh, remaining: int) -> None:
        mesh.allowance = cluster.allowance_for(counter, remaining)
        mesh.spent = 0
        mesh.stale = False
        mesh.fresh = cluster.is_new(counter.key)
        self.store.dirty.add(counter)  # peers learn the new lease with the next deltas

    # -- step 3 ------------------------------------------------------------------------

    def _commit(
        self,
        domain: str,
        resolved: _Resolved,
        checks: list[_Check],
        hits: int,
        commit: bool,
        index: int,
        decision: Decision,
    ) -> DescriptorStatus:
        # Counters changed for the mesh's next deltas; without a cluster view no mesh
        # drains them, so they are not collected (for a million counters, ~30 MB).
        dirty = self.store.dirty if self.cluster is not None else None
        overflow = False
        done: list[int] = []  # two limits of one window length share a counter: add once
        for check in checks:
            counter = check.counter
            if counter is None:
                overflow = True
                continue
            if done and id(counter) in done:
                continue
            done.append(id(counter))
            if commit and hits and check.count:
                counter.own += hits
                if not check.over:
                    counter.admitted += hits
                if check.spend:
                    mesh = counter.mesh
                    assert mesh is not None  # made by _evaluate with the allowance
                    mesh.spent += hits
            if hits and counter.seen >= 0:  # shared (Counter.shared)
                counter.seen += hits
                if dirty is not None:
                    dirty.add(counter)
        if overflow:
            self.stats.counter_overflow += 1
        # The most restrictive limit: the first one over, else the one with least left.
        if len(checks) == 1:
            check = checks[0]
        else:
            over = [c for c in checks if c.over]
            check = over[0] if over else min(checks, key=lambda c: c.remaining)
        rule = resolved.rule
        stats = self.stats.rule(domain, resolved.stats_key)
        self._count(stats, check, hits)
        spec = check.spec
        if rule is not None and rule.quota_mode:
            decision.quota_mode = True
            decision.quota_descriptors += 1
        if not check.over:
            return DescriptorStatus(Code.OK, spec.current, max(spec.rps - check.after, 0), check.reset)
        if rule is not None and rule.quota_mode:
            decision.quota_violations.append(index)
            return DescriptorStatus(Code.OK, spec.current, 0, check.reset)
        if rule is not None and rule.shadow_mode:
            stats.shadow_mode += hits
            return DescriptorStatus(Code.OK, spec.current, 0, check.reset)
        return DescriptorStatus(Code.OVER_LIMIT, spec.current, 0, check.reset)

    @staticmethod
    def _count(stats: RuleStats, check: _Check, hits: int) -> None:
        """Per-rule stats, split the way envoyproxy/ratelimit splits them."""
        limit = check.spec.rps
        near = check.spec.near
        before, after = check.before, check.after
        stats.total_hits += hits
        if check.over:
            if before >= limit or after <= limit:
                # Wholly over; or refused by this node's bounded allowance (the global
                # count was still within the limit): every hit of the request is over.
                stats.over_limit += hits
            else:
                stats.over_limit += after - limit
                stats.near_limit += limit - max(near, before)
        else:
            if after > near:
                stats.near_limit += hits if before >= near else after - near
            stats.within_limit += hits


_MISSING: Any = object()


# What decide_plan needs of one counted limit: counter key, window length, retention
# after the window start (grace included), limit, near-limit threshold, local, bounded,
# rule stats.
PlanCount = tuple[str, int, float, int, int, bool, bool, RuleStats]
_NO_LIMIT_RESULT = (-2, 0)


class PlanItem(NamedTuple):
    """One descriptor of a plan: its limit, or the fixed status of a descriptor without one."""

    spec: _Spec | None  # None: `status` is the answer (no matching rule, or unlimited)
    status: DescriptorStatus | None

    @property
    def current(self) -> CurrentLimit | None:
        return None if self.spec is None else self.spec.current


_NO_RULE = PlanItem(None, STATUS_NO_LIMIT)
_UNLIMITED: tuple[PlanItem, PlanCount | None] = (PlanItem(None, STATUS_UNLIMITED), None)
_NOT_PLANNED: tuple[PlanItem, PlanCount | None] = (PlanItem(None, None), None)  # a marker


class Plan:
    """What `Limiter.plan` precomputed for one request shape (see there)."""

    __slots__ = ("counters", "counts", "hits", "items")

    def __init__(
        self, items: tuple[PlanItem, ...], counts: tuple[PlanCount | None, ...], counters: int, hits: int
    ) -> None:
        self.items = items  # per descriptor: what the answer needs
        self.counts = counts  # per descriptor: what decide_plan needs, None without a limit
        self.counters = counters  # how many counters the request may create
        self.hits = hits


def _apply_replaces(resolved: Sequence[_Resolved | None]) -> list[tuple[_Spec, ...]]:
    """Each descriptor's limits without those another descriptor `replaces` by name."""
    replaced = {name for r in resolved if r is not None for name in r.replaces}
    return [
        () if r is None else tuple(s for s in r.specs if not (s.limit.name and s.limit.name in replaced))
        for r in resolved
    ]


def _headers(statuses: Sequence[DescriptorStatus]) -> list[tuple[str, str]]:
    """RateLimit-* headers from the descriptor closest to its limit.

    As the reference: the one with the least remaining, but a descriptor that is over
    limit always wins over one that merely has 0 left (the last one over, if several).
    """
    tightest: DescriptorStatus | None = None
    for status in statuses:
        if status.limit is None:
            continue
        if status.code is Code.OVER_LIMIT or tightest is None or status.remaining < tightest.remaining:
            tightest = status
    if tightest is None or tightest.limit is None:
        return []
    return [
        ("RateLimit-Limit", str(tightest.limit.requests_per_unit)),
        ("RateLimit-Remaining", str(tightest.remaining)),
        ("RateLimit-Reset", str(tightest.reset_seconds)),
    ]
