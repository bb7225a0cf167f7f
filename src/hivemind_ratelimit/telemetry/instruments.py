"""The instruments: every metric Hivemind exports, as OpenTelemetry observable instruments.

Each instrument's callback reads the plain counters (`ServiceStats`, `MeshStats`, the
node's gauges) when a reader collects; nothing here runs per request. Callbacks can
run on the OTLP exporter's thread (or the /metrics worker thread) while the event loop
bumps counters: they copy a dict (one C-level call, atomic under the GIL) before
iterating it, so a collection never trips over a dict that grows; at worst it reads a
value one call old.

`Catalogue.families` lists every metric in order, with its unit and labels, for the
Prometheus renderer (HELP and TYPE even before the first sample) and the docs test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from hivemind_ratelimit.mesh.membership import State
from hivemind_ratelimit.mesh.protocol import MeshCore
from hivemind_ratelimit.telemetry.stats import Gauges, RuleStats, ServiceStats

Kind = Literal["counter", "gauge", "histogram"]
Callback = Callable[[CallbackOptions], Iterable[Observation]]


@dataclass(frozen=True, slots=True)
class Family:
    """One instrument: its OpenTelemetry name, kind, unit, labels and meaning."""

    name: str
    kind: Kind
    unit: str
    labels: tuple[str, ...]
    description: str


@dataclass(frozen=True, slots=True)
class MetricSources:
    """What the instruments read, at collection time only."""

    stats: ServiceStats
    gauges: Callable[[], Gauges]
    mesh: Callable[[], MeshCore | None] = lambda: None


_RULE = ("domain", "key")
RULE_FAMILIES: tuple[tuple[Family, str], ...] = (
    (
        Family(
            "hivemind.rate_limit.hits",
            "counter",
            "{hit}",
            _RULE,
            "Hits counted against a rule (the reference's total_hits).",
        ),
        "total_hits",
    ),
    (
        Family("hivemind.rate_limit.over_limit", "counter", "{hit}", _RULE, "Hits over the rule's limit."),
        "over_limit",
    ),
    (
        Family(
            "hivemind.rate_limit.near_limit",
            "counter",
            "{hit}",
            _RULE,
            "Hits above near_limit_ratio of the limit.",
        ),
        "near_limit",
    ),
    (
        Family("hivemind.rate_limit.within_limit", "counter", "{hit}", _RULE, "Hits within the limit."),
        "within_limit",
    ),
    (
        Family(
            "hivemind.rate_limit.shadow_mode",
            "counter",
            "{hit}",
            _RULE,
            "Over-limit hits let through by shadow_mode.",
        ),
        "shadow_mode",
    ),
)

LATENCY = Family(
    "hivemind.decision.duration", "histogram", "s", (), "Time to decide one ShouldRateLimit call."
)


class Catalogue:
    """Builds the instruments on a meter, and lists them (in order) for the renderers."""

    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources
        self.families: list[Family] = []
        self._callbacks: list[tuple[Family, Callback]] = []
        self._service()
        self._mesh()

    def add(self, family: Family, callback: Callback | None = None) -> None:
        self.families.append(family)
        if callback is not None:
            self._callbacks.append((family, callback))

    def register(self, meter: Meter) -> None:
        for family, callback in self._callbacks:
            if family.kind == "counter":
                meter.create_observable_counter(family.name, [callback], family.unit, family.description)
            else:
                meter.create_observable_gauge(family.name, [callback], family.unit, family.description)

    # -- service -------------------------------------------------------------------------

    def _service(self) -> None:
        stats = self.sources.stats
        for family, attr in RULE_FAMILIES:
            self.add(family, _rules(stats, attr))
        self.add(
            Family(
                "hivemind.requests",
                "counter",
                "{request}",
                ("code",),
                "ShouldRateLimit calls answered, by overall code.",
            ),
            _table(lambda: stats.responses, "code"),
        )
        self.add(
            Family(
                "hivemind.request.errors",
                "counter",
                "{request}",
                ("kind",),
                "ShouldRateLimit calls that failed, by kind.",
            ),
            _table(lambda: stats.errors, "kind"),
        )
        self.add(LATENCY)  # no instrument: metrics.py `with_latency` adds it to each collection
        self.add(
            Family(
                "hivemind.config.loads",
                "counter",
                "{load}",
                ("result",),
                "Rule loads and reloads, by result.",
            ),
            _table(lambda: stats.config_loads, "result"),
        )
        for name, attr, help_text in (
            ("hivemind.domain_not_found", "domain_not_found", "Calls for a domain with no rules."),
            (
                "hivemind.counter.overflows",
                "counter_overflow",
                "Descriptors answered by on_counter_overflow because max_counters was reached.",
            ),
            (
                "hivemind.global_shadow_mode",
                "global_shadow_mode",
                "OVER_LIMIT answers turned into OK by the global shadow_mode.",
            ),
        ):
            self.add(Family(name, "counter", "{call}", (), help_text), _attribute(stats, attr))
        gauges = self.sources.gauges
        self.add(
            Family("hivemind.counters.live", "gauge", "{counter}", (), "Counters held in memory."),
            _scalar(lambda: gauges().live_counters),
        )
        self.add(
            Family(
                "hivemind.rules.loaded", "gauge", "{rule}", (), "Rules with a limit in the loaded rule set."
            ),
            _scalar(lambda: gauges().rules_loaded),
        )
        self.add(
            Family("hivemind.config.info", "gauge", "{info}", ("version",), "The loaded rule set's version."),
            lambda _: [Observation(1, {"version": gauges().config_version})],
        )

    # -- mesh ----------------------------------------------------------------------------

    def _mesh(self) -> None:
        mesh = self.sources.mesh

        def stat(read: Callable[[MeshCore], int]) -> Callback:
            def observe(_: CallbackOptions) -> list[Observation]:
                core = mesh()
                return [] if core is None else [Observation(read(core))]

            return observe

        def table(read: Callable[[MeshCore], dict[str, int]], label: str) -> Callback:
            def observe(_: CallbackOptions) -> list[Observation]:
                core = mesh()
                return (
                    [] if core is None else [Observation(n, {label: k}) for k, n in dict(read(core)).items()]
                )

            return observe

        def members(_: CallbackOptions) -> list[Observation]:
            core = mesh()
            if core is None:
                return []
            counts = dict.fromkeys(State, 0)
            for member in list(core.membership.members.values()):
                counts[member.state] += 1
            return [Observation(n, {"state": s.name.lower()}) for s, n in counts.items()]

        def per_peer(field: str) -> Callback:
            def observe(_: CallbackOptions) -> list[Observation]:
                core = mesh()
                if core is None:
                    return []
                out = []
                for member in list(core.membership.members.values()):
                    value = getattr(member, field)
                    if value is not None:
                        out.append(Observation(value, {"peer": member.node_id}))
                return out

            return observe

        def sync_lag(_: CallbackOptions) -> list[Observation]:
            core = mesh()
            if core is None:
                return []
            return [Observation(v, {"peer": p}) for p, v in dict(core.stats.sync_lag).items()]

        self.add(
            Family(
                "hivemind.mesh.members",
                "gauge",
                "{member}",
                ("state",),
                "Peers by state, as this node sees them.",
            ),
            members,
        )
        self.add(
            Family(
                "hivemind.mesh.messages.sent",
                "counter",
                "{message}",
                ("kind",),
                "Peer messages sent, by kind.",
            ),
            table(lambda c: c.stats.sent, "kind"),
        )
        self.add(
            Family(
                "hivemind.mesh.messages.received",
                "counter",
                "{message}",
                ("kind",),
                "Peer messages received, by kind.",
            ),
            table(lambda c: c.stats.received, "kind"),
        )
        self.add(
            Family("hivemind.mesh.sent", "counter", "By", (), "Peer protocol bytes sent."),
            stat(lambda c: c.stats.bytes_sent),
        )
        self.add(
            Family("hivemind.mesh.received", "counter", "By", (), "Peer protocol bytes received."),
            stat(lambda c: c.stats.bytes_received),
        )
        self.add(
            Family(
                "hivemind.mesh.malformed_messages",
                "counter",
                "{stream}",
                (),
                "Peer streams closed for a malformed or unexpected message.",
            ),
            stat(lambda c: c.stats.malformed),
        )
        self.add(
            Family(
                "hivemind.mesh.refused_peers",
                "counter",
                "{handshake}",
                (),
                "Handshakes refused (wrong secret, protocol version).",
            ),
            stat(lambda c: c.stats.refused),
        )
        self.add(
            Family(
                "hivemind.mesh.dropped_counters",
                "counter",
                "{counter}",
                (),
                "Counters from peers not stored because max_counters was reached.",
            ),
            stat(lambda c: c.stats.dropped_counters),
        )
        self.add(
            Family(
                "hivemind.mesh.sync_lag",
                "gauge",
                "s",
                ("peer",),
                "Age of the last sync message from a peer on arrival.",
            ),
            sync_lag,
        )
        self.add(
            Family(
                "hivemind.mesh.clock_offset",
                "gauge",
                "s",
                ("peer",),
                "How far a peer's clock is ahead of ours.",
            ),
            per_peer("clock_offset"),
        )
        self.add(
            Family(
                "hivemind.mesh.rtt", "gauge", "s", ("peer",), "Round-trip time of the last probe of a peer."
            ),
            per_peer("rtt"),
        )
        for name, read, help_text in (
            ("hivemind.mesh.windows_closed", _windows_closed, "Shared counter windows closed."),
            ("hivemind.mesh.admitted", _admitted, "Hits admitted cluster-wide in closed windows."),
            ("hivemind.mesh.limit", _limits, "Sum of the limits of closed windows."),
            (
                "hivemind.mesh.over_admitted",
                _over_admitted,
                "Hits admitted beyond the limit in closed windows.",
            ),
        ):
            unit = "{window}" if name.endswith("windows_closed") else "{hit}"
            self.add(Family(name, "counter", unit, ("domain",), help_text), table(read, "domain"))


def _windows_closed(core: MeshCore) -> dict[str, int]:
    return core.stats.windows_closed


def _admitted(core: MeshCore) -> dict[str, int]:
    return core.stats.admitted


def _limits(core: MeshCore) -> dict[str, int]:
    return core.stats.limits


def _over_admitted(core: MeshCore) -> dict[str, int]:
    return core.stats.over_admitted


def _rules(stats: ServiceStats, attr: str) -> Callback:
    def observe(_: CallbackOptions) -> list[Observation]:
        rules: list[tuple[tuple[str, str], RuleStats]] = list(stats.rules.items())
        return [Observation(getattr(r, attr), {"domain": d, "key": k}) for (d, k), r in rules]

    return observe


def _table(read: Callable[[], dict[str, int]], label: str) -> Callback:
    return lambda _: [Observation(n, {label: k}) for k, n in dict(read()).items()]


def _attribute(stats: ServiceStats, attr: str) -> Callback:
    return lambda _: [Observation(getattr(stats, attr))]


def _scalar(read: Callable[[], int]) -> Callback:
    return lambda _: [Observation(read())]
