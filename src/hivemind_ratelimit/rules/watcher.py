"""Hot reload: parse everything, then swap whole; a bad reload keeps the last good rules.

Changes are found by polling a fingerprint of the config path: for every rule file its
resolved path, size and modification time. Polling sees what inotify can miss, most of
all a Kubernetes ConfigMap update, which swaps a `..data` symlink and leaves the
visible file names untouched: the resolved paths change, so the fingerprint does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from opentelemetry.trace import NoOpTracer, Span, Status, StatusCode, Tracer

from hivemind_ratelimit.errors import RuleConfigError
from hivemind_ratelimit.rules.loader import load_path, rule_files
from hivemind_ratelimit.rules.model import RuleSet
from hivemind_ratelimit.telemetry.stats import ServiceStats

log = logging.getLogger("hivemind.rules")

Fingerprint = tuple[tuple[str, str, int, int, int, int], ...]


def fingerprint(path: Path) -> Fingerprint:
    items = []
    try:
        files = rule_files(path)
    except OSError:
        return ()
    for file in files:
        try:
            real = os.path.realpath(file)
            st = os.stat(real)
        except OSError:
            items.append((str(file), "", -1, -1, -1, -1))
            continue
        # The inode and change time also catch a same-size rewrite within one mtime tick.
        items.append((str(file), real, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    return tuple(items)


class RuleReloader:
    def __init__(
        self,
        path: str | Path,
        *,
        merge_domains: bool,
        stats: ServiceStats,
        apply: Callable[[RuleSet], None],
        tracer: Tracer | None = None,
    ) -> None:
        self.path = Path(path)
        self.tracer = tracer or NoOpTracer()  # a span per load and reload
        self.merge_domains = merge_domains
        self.stats = stats
        self.apply = apply
        self.current: RuleSet | None = None
        self.last_error: str = ""
        self._fingerprint: Fingerprint = ()

    def load_initial(self) -> RuleSet:
        """The first load; raises RuleConfigError so the service refuses to start on bad rules."""
        self._fingerprint = fingerprint(self.path)
        with self.tracer.start_as_current_span("hivemind.rules.load") as span:
            try:
                rules = load_path(self.path, merge_domains=self.merge_domains)
            except RuleConfigError as exc:
                self.stats.config_loads["error"] += 1
                _traced(span, "error", str(exc))
                raise
            self._install(rules)
            _traced(span, "success", rules.version)
            return rules

    def reload(self, reason: str) -> bool:
        """Parse and swap; on any problem keep the rules in force. True when in force now."""
        with self._span(reason) as span:
            return self._accept(self._parse(), reason, span)

    async def reload_async(self, reason: str) -> bool:
        """As reload, parsing off the event loop (a large rule set takes a while)."""
        with self._span(reason) as span:
            return self._accept(await asyncio.to_thread(self._parse), reason, span)

    def _span(self, reason: str) -> AbstractContextManager[Span]:
        return self.tracer.start_as_current_span(
            "hivemind.rules.reload", attributes={"hivemind.reason": reason}
        )

    def _parse(self) -> RuleSet | RuleConfigError:
        self._fingerprint = fingerprint(self.path)
        try:
            return load_path(self.path, merge_domains=self.merge_domains)
        except RuleConfigError as exc:
            return exc

    def _accept(self, result: RuleSet | RuleConfigError, reason: str, span: Span) -> bool:
        if isinstance(result, RuleConfigError):
            _traced(span, "error", str(result))
            self.stats.config_loads["error"] += 1
            self.last_error = str(result)
            kept = self.current.version if self.current else "-"
            for problem in result.problems:
                log.error("rule reload (%s) rejected, keeping version %s: %s", reason, kept, problem)
            return False
        if self.current is not None and result.version == self.current.version:
            _traced(span, "unchanged", result.version)
            return True
        _traced(span, "success", result.version)
        self._install(result)
        log.info("rules reloaded (%s): version %s, %d domains", reason, result.version, len(result.domains))
        return True

    def _install(self, rules: RuleSet) -> None:
        self.apply(rules)
        self.current = rules
        self.last_error = ""
        self.stats.config_loads["success"] += 1

    async def watch(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
                return
            except TimeoutError:
                pass
            current = await asyncio.to_thread(fingerprint, self.path)
            if current != self._fingerprint:
                await self.reload_async("file change")


def _traced(span: Span, result: str, detail: str) -> None:
    """The outcome on the load's span: result, and the version or the error."""
    span.set_attribute("hivemind.result", result)
    if result == "error":
        span.set_status(Status(StatusCode.ERROR, detail[:512]))
    else:
        span.set_attribute("hivemind.rules.version", detail)
