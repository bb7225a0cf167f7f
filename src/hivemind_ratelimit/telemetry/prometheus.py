"""Prometheus text exposition of the plain counters, rendered at scrape time."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hivemind_ratelimit.telemetry.stats import ServiceStats

RULE_METRICS = (
    (
        "hivemind_rate_limit_hits_total",
        "total_hits",
        "Hits counted against a rule (the reference's total_hits).",
    ),
    ("hivemind_rate_limit_over_limit_total", "over_limit", "Hits over the rule's limit."),
    ("hivemind_rate_limit_near_limit_total", "near_limit", "Hits above near_limit_ratio of the limit."),
    ("hivemind_rate_limit_within_limit_total", "within_limit", "Hits within the limit."),
    ("hivemind_rate_limit_shadow_mode_total", "shadow_mode", "Over-limit hits let through by shadow_mode."),
)


@dataclass(frozen=True, slots=True)
class Gauges:
    live_counters: int
    config_version: str
    rules_loaded: int


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float | int]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines.extend(f"{name}{labels} {value}" for labels, value in samples)
    return lines


def render(stats: ServiceStats, gauges: Gauges) -> str:
    lines: list[str] = []
    rules = sorted(stats.rules.items())
    for name, attr, help_text in RULE_METRICS:
        samples = [(_labels(domain=d, key=k), getattr(r, attr)) for (d, k), r in rules]
        lines += _family(name, "counter", help_text, samples)
    lines += _family(
        "hivemind_requests_total",
        "counter",
        "ShouldRateLimit calls answered, by overall code.",
        [(_labels(code=code), n) for code, n in sorted(stats.responses.items())],
    )
    lines += _family(
        "hivemind_request_errors_total",
        "counter",
        "ShouldRateLimit calls that failed, by kind.",
        [(_labels(kind=kind), n) for kind, n in sorted(stats.errors.items())],
    )
    hist = stats.latency
    lines += [
        "# HELP hivemind_decision_duration_seconds Time to decide one ShouldRateLimit call.",
        "# TYPE hivemind_decision_duration_seconds histogram",
    ]
    cumulative = 0
    for bound, count in zip([*hist.bounds, float("inf")], hist.counts, strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else repr(bound)
        lines.append(f'hivemind_decision_duration_seconds_bucket{{le="{le}"}} {cumulative}')
    lines.append(f"hivemind_decision_duration_seconds_sum {hist.total!r}")
    lines.append(f"hivemind_decision_duration_seconds_count {hist.count}")
    lines += _family(
        "hivemind_config_loads_total",
        "counter",
        "Rule loads and reloads, by result.",
        [(_labels(result=r), n) for r, n in sorted(stats.config_loads.items())],
    )
    lines += _family(
        "hivemind_domain_not_found_total",
        "counter",
        "Calls for a domain with no rules.",
        [("", stats.domain_not_found)],
    )
    lines += _family(
        "hivemind_counter_overflows_total",
        "counter",
        "Descriptors answered by on_counter_overflow because max_counters was reached.",
        [("", stats.counter_overflow)],
    )
    lines += _family(
        "hivemind_global_shadow_mode_total",
        "counter",
        "OVER_LIMIT answers turned into OK by the global shadow_mode.",
        [("", stats.global_shadow_mode)],
    )
    lines += _family(
        "hivemind_counters_live", "gauge", "Counters held in memory.", [("", gauges.live_counters)]
    )
    lines += _family(
        "hivemind_rules_loaded",
        "gauge",
        "Rules with a limit in the loaded rule set.",
        [("", gauges.rules_loaded)],
    )
    lines += _family(
        "hivemind_config_info",
        "gauge",
        "The loaded rule set's version.",
        [(_labels(version=gauges.config_version), 1)],
    )
    return "\n".join(lines) + "\n"


def render_mesh(mesh: dict[str, Any]) -> str:
    """Mesh metrics from the node's description (mesh/protocol.py `describe`)."""
    members = mesh["members"]
    sync = mesh["sync"]
    states: dict[str, int] = {"alive": 0, "suspect": 0, "dead": 0, "left": 0}
    for member in members:
        states[member["state"]] = states.get(member["state"], 0) + 1
    lines: list[str] = []
    lines += _family(
        "hivemind_mesh_members",
        "gauge",
        "Peers by state, as this node sees them.",
        [(_labels(state=s), n) for s, n in sorted(states.items())],
    )
    lines += _family(
        "hivemind_mesh_messages_sent_total",
        "counter",
        "Peer messages sent, by kind.",
        [(_labels(kind=k), n) for k, n in sorted(sync["messages_sent"].items())],
    )
    lines += _family(
        "hivemind_mesh_messages_received_total",
        "counter",
        "Peer messages received, by kind.",
        [(_labels(kind=k), n) for k, n in sorted(sync["messages_received"].items())],
    )
    lines += _family(
        "hivemind_mesh_sent_bytes_total", "counter", "Peer protocol bytes sent.", [("", sync["bytes_sent"])]
    )
    lines += _family(
        "hivemind_mesh_received_bytes_total",
        "counter",
        "Peer protocol bytes received.",
        [("", sync["bytes_received"])],
    )
    lines += _family(
        "hivemind_mesh_malformed_messages_total",
        "counter",
        "Peer streams closed for a malformed or unexpected message.",
        [("", sync["malformed_messages"])],
    )
    lines += _family(
        "hivemind_mesh_refused_peers_total",
        "counter",
        "Handshakes refused (wrong secret, protocol version).",
        [("", sync["refused_peers"])],
    )
    for name, field, help_text in (
        (
            "hivemind_mesh_sync_lag_seconds",
            "sync_lag_ms",
            "Age of the last sync message from a peer on arrival.",
        ),
        ("hivemind_mesh_clock_offset_seconds", "clock_offset_ms", "How far a peer's clock is ahead of ours."),
        ("hivemind_mesh_rtt_seconds", "rtt_ms", "Round-trip time of the last probe of a peer."),
    ):
        samples = [(_labels(peer=m["id"]), m[field] / 1000) for m in members if m[field] is not None]
        lines += _family(name, "gauge", help_text, samples)
    accuracy = mesh["accuracy"]
    for name, field, help_text in (
        ("hivemind_mesh_windows_closed_total", "windows_closed", "Shared counter windows closed."),
        ("hivemind_mesh_admitted_total", "admitted", "Hits admitted cluster-wide in closed windows."),
        ("hivemind_mesh_limit_total", "limits", "Sum of the limits of closed windows."),
        (
            "hivemind_mesh_over_admitted_total",
            "over_admitted",
            "Hits admitted beyond the limit in closed windows.",
        ),
    ):
        lines += _family(
            name, "counter", help_text, [(_labels(domain=d), a[field]) for d, a in sorted(accuracy.items())]
        )
    return "\n".join(lines) + "\n"
