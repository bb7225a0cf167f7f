"""Rule hot reload in a real process: file change, bad file, SIGHUP, ConfigMap symlink swap.

Each test runs its own Hivemind with a short watch interval and hour-long windows, so
the counts a test makes stay in one window (see `ensure_window_room`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from integration.hivemind_harness import (
    OK,
    OVER_LIMIT,
    RPC_TIMEOUT,
    HivemindFactory,
    HivemindProcess,
    ensure_window_room,
    grpc_channel,
    make_request,
    metric_key,
    wait_until,
)

pytestmark = pytest.mark.integration

DOMAIN = "reload"
WATCH = {"rate_limiting.watch_interval": "200ms"}
RELOAD_TIMEOUT = 10.0  # seconds; the watcher polls every 200 ms


def rules(changed: int, unchanged: int = 5) -> str:
    return f"""
domain: {DOMAIN}
descriptors:
  - key: changed
    rate_limit: {{unit: hour, requests_per_unit: {changed}}}
  - key: unchanged
    rate_limit: {{unit: hour, requests_per_unit: {unchanged}}}
"""


INVALID_RULES = f"""
domain: {DOMAIN}
descriptors:
  - key: changed
    colour: blue
    rate_limit: {{unit: fortnight, requests_per_unit: 1}}
"""


def write_atomically(path: Path, text: str) -> None:
    """Replace a file whole, as configuration management tools do."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


class Client:
    def __init__(self, node: HivemindProcess) -> None:
        self.node = node
        self.channel = grpc_channel(node.grpc_target)
        self.stub: Any = rls_pb2_grpc.RateLimitServiceStub(self.channel)

    def hit(self, key: str) -> rls_pb2.RateLimitResponse.DescriptorStatus:
        response = self.stub.ShouldRateLimit(make_request(DOMAIN, {key: "x"}), timeout=RPC_TIMEOUT)
        return response.statuses[0]

    def wait_for_rule(self, line: str) -> None:
        wait_until(lambda: line in self.node.http("/rlconfig").body.splitlines(), RELOAD_TIMEOUT, what=line)

    def config_loads(self, result: str) -> float:
        return self.node.metrics()[metric_key("hivemind_config_loads_total", result=result)]


@pytest.fixture
def start(hivemind_factory: HivemindFactory) -> Iterator[Any]:
    """Start a node on a rules path and return a client for it; channels closed afterwards."""
    clients: list[Client] = []

    def _start(path: Path, settings: dict[str, str] | None = None) -> Client:
        ensure_window_room(3600, needed=20)
        client = Client(hivemind_factory(path, settings=settings if settings is not None else WATCH))
        clients.append(client)
        return client

    try:
        yield _start
    finally:
        for client in clients:
            client.channel.close()


def test_file_change_reloads_and_counters_of_unchanged_rules_survive(start: Any, tmp_path: Path) -> None:
    path = tmp_path / "ratelimit.yaml"
    path.write_text(rules(changed=2), encoding="utf-8")
    client = start(path)
    assert [client.hit("unchanged").limit_remaining for _ in range(3)] == [4, 3, 2]
    assert [client.hit("changed").code for _ in range(3)] == [OK, OK, OVER_LIMIT]

    time.sleep(0.05)  # a new modification time, whatever the file system's granularity
    path.write_text(rules(changed=4), encoding="utf-8")  # in place, as an editor does
    client.wait_for_rule(f"{DOMAIN}.changed: 4 per hour")

    status = client.hit("changed")
    assert status.current_limit.requests_per_unit == 4
    status = client.hit("unchanged")
    assert (status.code, status.limit_remaining, status.current_limit.requests_per_unit) == (OK, 1, 5)
    assert client.config_loads("success") == 2
    assert "rules reloaded (file change)" in client.node.log()


def test_invalid_file_keeps_the_rules_in_force(start: Any, tmp_path: Path) -> None:
    path = tmp_path / "ratelimit.yaml"
    path.write_text(rules(changed=2), encoding="utf-8")
    client = start(path)
    assert [client.hit("changed").code for _ in range(2)] == [OK, OK]
    assert client.config_loads("error") == 0

    write_atomically(path, INVALID_RULES)
    wait_until(lambda: client.config_loads("error") >= 1, RELOAD_TIMEOUT, what="a failed reload")

    # The old rules and their counters are still in force.
    assert f"{DOMAIN}.changed: 2 per hour" in client.node.http("/rlconfig").body.splitlines()
    status = client.hit("changed")
    assert (status.code, status.current_limit.requests_per_unit) == (OVER_LIMIT, 2)
    assert client.config_loads("success") == 1
    log = client.node.log()
    assert "rejected" in log and str(path) in log and "fortnight" in log and "colour" in log
    assert client.node.http("/ready").status == 200

    # A fixed file is picked up again.
    write_atomically(path, rules(changed=3))
    client.wait_for_rule(f"{DOMAIN}.changed: 3 per hour")
    assert client.config_loads("success") == 2


def test_sighup_reloads(start: Any, tmp_path: Path) -> None:
    path = tmp_path / "ratelimit.yaml"
    path.write_text(rules(changed=2), encoding="utf-8")
    client = start(path, settings={"rate_limiting.watch": "false"})

    write_atomically(path, rules(changed=7))
    time.sleep(0.5)  # with watching off, nothing happens on its own
    assert f"{DOMAIN}.changed: 2 per hour" in client.node.http("/rlconfig").body.splitlines()

    client.node.send_signal(signal.SIGHUP)
    client.wait_for_rule(f"{DOMAIN}.changed: 7 per hour")
    assert client.hit("changed").current_limit.requests_per_unit == 7
    assert "rules reloaded (SIGHUP)" in client.node.log()
    assert client.node.running


def _configmap_volume(root: Path, text: str) -> Path:
    """A directory laid out as Kubernetes mounts a ConfigMap:

    root/..2026_01_01_00_00_00.0001/ratelimit.yaml   the data
    root/..data -> ..2026_01_01_00_00_00.0001        swapped atomically on update
    root/ratelimit.yaml -> ..data/ratelimit.yaml     what users see
    """
    root.mkdir()
    first = root / "..2026_01_01_00_00_00.0001"
    first.mkdir()
    (first / "ratelimit.yaml").write_text(text, encoding="utf-8")
    (root / "..data").symlink_to(first.name)
    (root / "ratelimit.yaml").symlink_to("..data/ratelimit.yaml")
    return first


def _configmap_update(root: Path, old: Path, text: str) -> None:
    """What the kubelet does: write a new timestamped dir, rename a new `..data` over the old."""
    new = root / "..2026_01_01_00_05_00.0002"
    new.mkdir()
    (new / "ratelimit.yaml").write_text(text, encoding="utf-8")
    (root / "..data_tmp").symlink_to(new.name)
    os.replace(root / "..data_tmp", root / "..data")
    for file in old.iterdir():
        file.unlink()
    old.rmdir()


@pytest.mark.parametrize("target", ["directory", "file"])
def test_configmap_symlink_swap_is_picked_up(start: Any, tmp_path: Path, target: str) -> None:
    root = tmp_path / "config"
    old = _configmap_volume(root, rules(changed=2))
    client = start(root if target == "directory" else root / "ratelimit.yaml")
    status = client.hit("unchanged")
    assert (status.limit_remaining, status.current_limit.requests_per_unit) == (4, 5)

    _configmap_update(root, old, rules(changed=9))
    client.wait_for_rule(f"{DOMAIN}.changed: 9 per hour")
    assert client.hit("changed").current_limit.requests_per_unit == 9
    assert client.hit("unchanged").limit_remaining == 3
    assert client.config_loads("error") == 0
