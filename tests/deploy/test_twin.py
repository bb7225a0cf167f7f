"""The integration environment's twin without Docker, checked by the compose check script.

deploy/demo/twin.py starts what test/docker-compose.yaml describes (three Hivemind
nodes in one mesh, Envoy in front of a backend, config/ratelimit.yaml's rule) as
processes on 127.0.0.1, and test/check.sh, the script `cd test && make test-integration`
runs against the containers, runs against it unchanged: the 6th request in a second
gets 429, every node learned the count over the mesh, a second later requests pass, and
with Envoy's node stopped the next node holds the limit.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.conftest import REPO, twin_module

pytestmark = pytest.mark.integration


def test_check_script_passes_against_the_twin(twin: Any) -> None:
    result = twin.run_checks(timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"^checks: 5 passed, 0 failed$", result.stdout, re.MULTILINE), output
    assert "FAIL" not in output
    # The script stopped hivemind-1 (Envoy's node) with SIGTERM: a graceful leave.
    first = twin.nodes[0]
    assert first.popen.wait(10) == 0, first.log_tail()
    for peer in twin.nodes[1:]:
        assert re.search(r"member hivemind-1: \S+ -> left", peer.log_path.read_text()), peer.log_tail()


def _healthcheck_command() -> list[str]:
    """The HEALTHCHECK of the Dockerfile, in exec form."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", text, re.MULTILINE)
    assert match, "no HEALTHCHECK ... CMD [...] in the Dockerfile"
    command: list[str] = json.loads(match.group(1))
    return command


def test_the_images_healthcheck_command_asks_healthcheck(twin: Any) -> None:
    """The HEALTHCHECK one-liner, run here against a twin node, then against nothing."""
    command = _healthcheck_command()
    assert command[0] == "python"
    command[0] = sys.executable
    port = twin.ports.admin[1]
    env = twin_module.child_env()
    alive = subprocess.run(
        command, env={**env, "HIVEMIND_SERVER__HTTP_PORT": str(port)}, capture_output=True, timeout=20
    )
    assert alive.returncode == 0, alive.stderr
    closed = twin_module.free_ports(1)[0]
    dead = subprocess.run(
        command, env={**env, "HIVEMIND_SERVER__HTTP_PORT": str(closed)}, capture_output=True, timeout=20
    )
    assert dead.returncode != 0


def test_the_twin_is_built_from_the_compose_file() -> None:
    """Nodes, files and addresses come from test/docker-compose.yaml, not from a copy."""
    topology = twin_module.read_topology()
    compose = yaml.safe_load((REPO / "test" / "docker-compose.yaml").read_text())
    nodes = sorted(name for name in compose["services"] if name.startswith("hivemind"))
    assert [node.service for node in topology.nodes] == nodes == ["hivemind-1", "hivemind-2", "hivemind-3"]
    for node in topology.nodes:
        assert node.config == REPO / "test" / "hivemind.yaml"
        assert node.rules == (("ratelimit.yaml", REPO / "config" / "ratelimit.yaml"),)
    assert topology.envoy_config == REPO / "test" / "envoy.yaml"
    ports = twin_module.pick_ports(topology, fixed=False)
    config = twin_module.envoy_config(topology, ports)
    addresses = re.findall(
        r"address: (\S+), port_value: (\d+)", yaml.safe_dump(config, default_flow_style=True)
    )
    assert addresses and all(host == "127.0.0.1" for host, _ in addresses)


def test_the_twin_refuses_an_address_it_does_not_know(tmp_path: Path) -> None:
    envoy = yaml.safe_load((REPO / "test" / "envoy.yaml").read_text())
    envoy["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
        "endpoint"
    ]["address"]["socket_address"]["address"] = "somewhere-else"
    (tmp_path / "envoy.yaml").write_text(yaml.safe_dump(envoy))
    topology = twin_module.read_topology()
    moved = twin_module.Topology(
        nodes=topology.nodes,
        envoy_config=tmp_path / "envoy.yaml",
        envoy_published=topology.envoy_published,
        backend_port=topology.backend_port,
    )
    with pytest.raises(twin_module.TwinError, match="somewhere-else"):
        twin_module.envoy_config(moved, twin_module.pick_ports(moved, fixed=False))
