"""The status page at `GET /` on the admin port: what this node is doing, for people.

One server-rendered HTML page: this node, every mesh member as it sees them (state,
address, last heard, round-trip time, clock offset), the rules in force (version, load
time, the rules themselves), the busiest counters of the current windows and the error
counts. It refreshes itself (a meta refresh, no script), loads nothing from anywhere
(the Content-Security-Policy header allows inline styles only) and escapes every value:
counter keys carry request values, which are whatever a client sent.

The page reads the same plain data as /metrics and /mesh. Finding the busiest counters
is one pass over the live counters (`heapq.nlargest`), O(counters) per page view: fine
for a person every few seconds, not for a scraper (use /metrics for that).
"""

from __future__ import annotations

import heapq
import html
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hivemind_ratelimit.core.store import Counter
from hivemind_ratelimit.rules.matcher import COUNTER_SEPARATOR
from hivemind_ratelimit.rules.model import RuleSet
from hivemind_ratelimit.telemetry.stats import ServiceStats

if TYPE_CHECKING:
    from hivemind_ratelimit.admin.http import NodeView

REFRESH_SECONDS = 5
TOP_COUNTERS = 15
MAX_RULE_LINES = 50
MAX_TEXT = 120  # characters of a key or value shown; the rest is cut with an ellipsis
CLOCK_OFFSET_WARNING_MS = 1000.0  # as the mesh's own warning (spec §5.4)
_KEY_SEPARATOR = "\x1e"  # between domain, descriptor path and window length in a counter key
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class CounterRow:
    """One counter of a current window, as the page shows it."""

    domain: str
    descriptor: str  # "key=value, key=value"
    count: int  # the merged global count of the window
    limit: int  # 0 when unknown here (a counter only peers have used so far)
    window_seconds: int
    resets_in: float

    @property
    def used(self) -> float | None:
        return self.count / self.limit if self.limit else None


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What the page needs from the node beyond the rules, the mesh and the stats."""

    node_id: str
    version: str
    started_at: float  # Unix time
    now: float  # Unix time
    rules_path: str
    rules_loaded_at: float | None  # Unix time the rules in force were loaded
    reload_error: str  # the last rejected reload, "" once a reload succeeds
    busiest: tuple[CounterRow, ...]


def busiest_counters(
    counters: Iterable[Counter], now: float, n: int = TOP_COUNTERS
) -> tuple[CounterRow, ...]:
    """The `n` counters of current windows that have used most of their limit (then most hits)."""
    current = (c for c in counters if c.window_start <= now < c.window_start + c.length and c.total > 0)
    top = heapq.nlargest(n, current, key=lambda c: (c.total / c.limit if c.limit else 0.0, c.total))
    rows = []
    for counter in top:
        domain, _, rest = counter.key.partition(_KEY_SEPARATOR)
        path, _, _length = rest.rpartition(_KEY_SEPARATOR)
        rows.append(
            CounterRow(
                domain=domain,
                descriptor=", ".join(path.split(COUNTER_SEPARATOR)),
                count=counter.total,
                limit=counter.limit,
                window_seconds=counter.length,
                resets_in=max(0.0, counter.window_start + counter.length - now),
            )
        )
    return tuple(rows)


def response(node: NodeView, stats: ServiceStats) -> web.Response:
    """The page as an aiohttp response, with headers that forbid loading anything."""
    body = render(
        node.status(),
        serving=node.serving,
        ready=node.ready,
        rules=node.rules(),
        mesh=node.mesh(),
        stats=stats,
    )
    return web.Response(text=body, content_type="text/html", charset="utf-8", headers=_SECURITY_HEADERS)


# -- rendering -------------------------------------------------------------------------


def _text(value: object) -> str:
    """Escaped for HTML; control characters shown as \\xNN; long text cut."""
    raw = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in str(value))
    if len(raw) > MAX_TEXT:
        raw = raw[: MAX_TEXT - 1] + "…"
    return html.escape(raw, quote=True)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms ago"
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _utc(when: float | None) -> str:
    if when is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def _ms(value: Any) -> str:
    return "—" if value is None else f"{float(value):.1f} ms"


def _window(seconds: int) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _badge(label: str, kind: str) -> str:
    return f'<span class="badge {_text(kind)}">{_text(label)}</span>'


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], *, cls: str = "") -> str:
    """A table; `rows` cells are HTML already (escape values before)."""
    head = "".join(f"<th>{_text(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{_text(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _section(title: str, body: str, *, ident: str) -> str:
    return f'<section id="{_text(ident)}"><h2>{_text(title)}</h2>{body}</section>'


def _members(status: NodeStatus, mesh: Mapping[str, Any] | None) -> str:
    if mesh is None:
        return '<p class="muted">The mesh is off on this node.</p>'
    node = mesh.get("node") or {}
    rows = [
        [
            f"<strong>{_text(node.get('id', status.node_id))}</strong> (this node)",
            _text(node.get("address", "")),
            _badge("self", "alive"),
            "—",
            "—",
            "—",
            "—",
        ]
    ]
    for member in mesh.get("members", []):
        state = str(member.get("state", "unknown"))
        offset = member.get("clock_offset_ms")
        offset_cell = _ms(offset)
        if offset is not None and abs(float(offset)) > CLOCK_OFFSET_WARNING_MS:
            offset_cell = f'<span class="warn">{offset_cell}</span>'
        rows.append(
            [
                _text(member.get("id", "")),
                _text(member.get("address", "")),
                _badge(state, state),
                _text(_ago(member.get("last_heard_seconds_ago"))),
                _text(_ms(member.get("rtt_ms"))),
                offset_cell,
                _text(_ms(member.get("sync_lag_ms"))),
            ]
        )
    live = sum(1 for m in mesh.get("members", []) if m.get("state") in ("alive", "suspect"))
    summary = f'<p class="muted">{live + 1} live of {len(rows)} known, this node included.</p>'
    table = _table(
        ["node", "address", "state", "last heard", "round trip", "clock offset", "sync lag"],
        rows,
        cls="members",
    )
    return summary + table


def _rules(status: NodeStatus, rules: RuleSet) -> str:
    lines = rules.dump().splitlines()
    facts = [
        ("version", f"<code>{_text(rules.version)}</code>"),
        (
            "loaded",
            f"{_text(_utc(status.rules_loaded_at))} ({_text(_ago(_since(status, status.rules_loaded_at)))})",
        ),
        ("from", f"<code>{_text(status.rules_path)}</code>"),
        ("domains", _text(len(rules.domains))),
        ("limits", _text(len(lines))),
    ]
    out = _facts(facts)
    if status.reload_error:
        out += (
            '<div class="error"><strong>Last reload rejected</strong> (the rules above stay in force):'
            f"<pre>{_text_block(status.reload_error)}</pre></div>"
        )
    shown = "\n".join(_text(line) for line in lines[:MAX_RULE_LINES])
    more = len(lines) - MAX_RULE_LINES
    if more > 0:
        shown += f'\n<span class="muted">… and {more} more: see /rlconfig</span>'
    out += f'<pre class="rules">{shown or "(no rules)"}</pre>'
    return out


def _text_block(value: str) -> str:
    """Escaped multi-line text (no cutting), for error messages."""
    return html.escape(value[:4000], quote=True)


def _since(status: NodeStatus, when: float | None) -> float | None:
    return None if when is None else max(0.0, status.now - when)


def _busiest(status: NodeStatus) -> str:
    if not status.busiest:
        return '<p class="muted">No hits in the current windows.</p>'
    rows = []
    for row in status.busiest:
        used = row.used
        if used is None:
            bar = '<span class="muted">limit not known here</span>'
        else:
            width = min(100, round(used * 100))
            kind = "over" if used > 1 else "near" if used >= 0.8 else "ok"
            bar = (
                f'<span class="bar"><span class="fill {kind}" style="width:{width}%"></span></span> '
                f"{used * 100:.0f}%"
            )
        rows.append(
            [
                _text(row.domain),
                f"<code>{_text(row.descriptor)}</code>",
                _text(row.count),
                _text(row.limit or "—"),
                bar,
                _text(_window(row.window_seconds)),
                _text(f"{row.resets_in:.1f} s"),
            ]
        )
    return _table(
        ["domain", "descriptor", "count", "limit", "used", "window", "resets in"], rows, cls="counters"
    )


def _errors(stats: ServiceStats, mesh: Mapping[str, Any] | None) -> str:
    sync = (mesh or {}).get("sync") or {}
    rows: list[tuple[str, object]] = [
        (f"request errors: {kind}", n) for kind, n in sorted(stats.errors.items())
    ]
    rows += [
        ("rule reloads rejected", stats.config_loads.get("error", 0)),
        ("counter overflow (max_counters reached)", stats.counter_overflow),
        ("malformed peer messages", sync.get("malformed_messages", 0)),
        ("peers refused", sync.get("refused_peers", 0)),
        ("peer counters dropped (store full)", sync.get("dropped_counters", 0)),
    ]
    cells = [[_text(name), f'<span class="{"bad" if n else "zero"}">{_text(n)}</span>'] for name, n in rows]
    answers = (
        ", ".join(f"{_text(code)} {_text(n)}" for code, n in sorted(stats.responses.items())) or "none yet"
    )
    return f'<p class="muted">Answers so far: {answers}.</p>' + _table(["what", "count"], cells, cls="errors")


def _facts(items: Iterable[tuple[str, str]]) -> str:
    """A definition list; values are HTML already."""
    return "<dl>" + "".join(f"<dt>{_text(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def render(
    status: NodeStatus,
    *,
    serving: bool,
    ready: bool,
    rules: RuleSet,
    mesh: Mapping[str, Any] | None,
    stats: ServiceStats,
) -> str:
    node = (mesh or {}).get("node") or {}
    state = _badge("serving", "alive") if serving else _badge("not serving", "dead")
    if serving and not ready:
        state += " " + _badge("not ready", "suspect")
    header = _facts(
        [
            ("node", f"<strong>{_text(status.node_id)}</strong> {state}"),
            ("mesh address", _text(node.get("address", "—"))),
            ("incarnation", _text(node.get("incarnation", "—"))),
            ("version", f"hivemind {_text(status.version)}"),
            ("up", _text(_duration(status.now - status.started_at))),
            ("as of", f"{_text(_utc(status.now))}, refreshes every {REFRESH_SECONDS} s"),
        ]
    )
    sections = [
        _section("This node", header, ident="node"),
        _section("Members", _members(status, mesh), ident="members"),
        _section("Busiest counters now", _busiest(status), ident="counters"),
        _section("Rules", _rules(status, rules), ident="rules"),
        _section("Requests and errors", _errors(stats, mesh), ident="errors"),
    ]
    links = " · ".join(
        f'<a href="{path}">{path}</a>'
        for path in ("/metrics", "/mesh", "/rlconfig", "/healthcheck", "/ready")
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Hivemind · {_text(status.node_id)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f'<header><h1>Hivemind <span class="muted">· {_text(status.node_id)}</span></h1></header>'
        f"<main>{''.join(sections)}</main>"
        f"<footer>Machine-readable: {links}</footer>"
        "</body></html>\n"
    )


_CSS = """
:root{--fg:#1d2330;--muted:#6b7385;--line:#e3e6ec;--bg:#f6f7f9;--card:#fff;
--ok:#1f8a4c;--warn:#b26a00;--bad:#c0392b;--grey:#7f8796}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
header{background:#232a3b;color:#fff;padding:12px 24px}
header h1{margin:0;font-size:20px;font-weight:600}
header .muted{color:#aab2c5}
main{padding:8px 24px 16px;max-width:1200px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin:12px 0}
h2{font-size:15px;margin:0 0 8px;text-transform:uppercase;letter-spacing:.04em;color:#3a4256}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:var(--muted)}dd{margin:0}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.03em}
tbody tr:nth-child(even){background:#fafbfc}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:#f1f3f6;padding:8px 10px;border-radius:6px;overflow:auto;margin:8px 0 0}
.muted{color:var(--muted)}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;
background:var(--grey)}
.badge.alive{background:var(--ok)}.badge.suspect{background:var(--warn)}.badge.dead{background:var(--bad)}
.badge.left{background:var(--grey)}
.warn{color:var(--warn);font-weight:600}.bad{color:var(--bad);font-weight:600}.zero{color:var(--muted)}
.error{border-left:4px solid var(--bad);background:#fdf0ef;padding:8px 12px;margin-top:10px}
.bar{display:inline-block;width:120px;height:10px;background:#e9ecf1;border-radius:5px;overflow:hidden;
vertical-align:middle}
.fill{display:block;height:100%;background:var(--ok)}.fill.near{background:var(--warn)}
.fill.over{background:var(--bad)}
footer{padding:0 24px 24px;color:var(--muted)}
footer a{color:#3451b2}
"""
