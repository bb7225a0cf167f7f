"""Shared by every test folder: a failing test's report carries the logs of the
processes it had running (hivemind, Envoy), so CI output says what went wrong."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from integration.hivemind_harness import ManagedProcess


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.when in ("setup", "call"):
        for process in sorted(ManagedProcess.live, key=lambda p: p.name):
            report.sections.append((f"log of {process.name} (pid {process.pid})", process.log_tail()))
    return report
