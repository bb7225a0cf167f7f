"""Service settings: defaults < file < environment < flags; unknown keys named."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_ratelimit.errors import SettingsError
from hivemind_ratelimit.rules.model import Consistency
from hivemind_ratelimit.settings import Settings, load_settings, parse_duration


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_match_the_specification() -> None:
    s = load_settings(environ={})
    assert (s.server.host, s.server.grpc_port, s.server.grpc_uds, s.server.http_port) == (
        "0.0.0.0",
        8081,
        "",
        8080,
    )
    assert s.server.transport == "auto"  # nghttp2 when its core builds, else grpcio (issue 5)
    assert (s.server.tls.cert_file, s.server.tls.key_file, s.server.tls.client_ca_file) == ("", "", "")
    limits = s.server.limits
    assert (limits.max_domain_bytes, limits.max_descriptors, limits.max_entries, limits.max_entry_bytes) == (
        256,
        64,
        32,
        1024,
    )
    m = s.mesh
    assert (m.node_id, m.host, m.port, m.advertise_address, m.bootstrap_peers) == (
        "",
        "0.0.0.0",
        7946,
        "",
        (),
    )
    assert (m.sync_interval, m.probe_interval, m.suspect_timeout, m.warmup_timeout) == (0.02, 1.0, 5.0, 2.0)
    assert m.secret_file == ""
    r = s.rate_limiting
    assert r.config_path == "config/ratelimit.yaml"
    assert (r.watch, r.merge_domains, r.near_limit_ratio) == (True, False, 0.8)
    assert r.consistency is Consistency.BOUNDED
    assert (r.max_counters, r.on_counter_overflow) == (1_000_000, "allow")
    assert (r.response_headers, r.shadow_mode, r.stop_increment_when_over_limit) == (False, False, False)
    o = s.observability
    assert (o.log_level, o.log_format, o.otlp_endpoint, o.trace_sample_ratio) == ("info", "text", "", 0.01)
    assert s == Settings()


def test_settings_are_frozen() -> None:
    s = load_settings(environ={})
    with pytest.raises(ValueError):
        s.server.grpc_port = 1  # type: ignore[misc]


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
server:
  grpc_port: 9081
  tls: {cert_file: /c.pem, key_file: /k.pem}
mesh:
  bootstrap_peers: [a:7946, b:7946]
  sync_interval: 50ms
  suspect_timeout: 1m
rate_limiting:
  consistency: eventual
  on_counter_overflow: deny
  near_limit_ratio: 0.5
""",
    )
    s = load_settings(path, environ={})
    assert s.server.grpc_port == 9081
    assert s.server.http_port == 8080  # untouched keys keep defaults
    assert (s.server.tls.cert_file, s.server.tls.key_file) == ("/c.pem", "/k.pem")
    assert s.mesh.bootstrap_peers == ("a:7946", "b:7946")
    assert s.mesh.sync_interval == pytest.approx(0.05)
    assert s.mesh.suspect_timeout == 60.0
    assert s.rate_limiting.consistency is Consistency.EVENTUAL
    assert s.rate_limiting.on_counter_overflow == "deny"
    assert s.rate_limiting.near_limit_ratio == 0.5


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "# nothing\n"), environ={}) == Settings()


def test_environment(tmp_path: Path) -> None:
    s = load_settings(
        environ={
            "HIVEMIND_MESH__BOOTSTRAP_PEERS": "a:1,b:2",
            "HIVEMIND_SERVER__GRPC_PORT": "9000",
            "HIVEMIND_RATE_LIMITING__SHADOW_MODE": "true",
            "HIVEMIND_MESH__SYNC_INTERVAL": "5ms",
            "HIVEMIND_SERVER__TLS__CERT_FILE": "/tls.pem",
            "HIVEMIND_SERVER__TLS__KEY_FILE": "/key.pem",
            "HIVEMIND_NOT_A_SETTING": "ignored",  # no section separator
            "PATH": "/usr/bin",
        }
    )
    assert s.mesh.bootstrap_peers == ("a:1", "b:2")
    assert s.server.grpc_port == 9000
    assert s.rate_limiting.shadow_mode is True
    assert s.mesh.sync_interval == pytest.approx(0.005)
    assert (s.server.tls.cert_file, s.server.tls.key_file) == ("/tls.pem", "/key.pem")


@pytest.mark.parametrize(
    ("raw", "peers"),
    [
        ("a:1,b:2", ("a:1", "b:2")),
        (" a:1 , b:2 ,", ("a:1", "b:2")),
        ("[a:1, b:2]", ("a:1", "b:2")),
        ("single:7946", ("single:7946",)),
        ("", ()),
    ],
)
def test_bootstrap_peers_from_environment(raw: str, peers: tuple[str, ...]) -> None:
    assert load_settings(environ={"HIVEMIND_MESH__BOOTSTRAP_PEERS": raw}).mesh.bootstrap_peers == peers


def test_flags_override_environment_override_file(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  grpc_port: 1111\n  http_port: 1112\nmesh:\n  port: 1113\n")
    environ = {"HIVEMIND_SERVER__GRPC_PORT": "2221", "HIVEMIND_SERVER__HTTP_PORT": "2222"}
    s = load_settings(path, environ=environ, overrides={"server.grpc_port": 3331})
    assert s.server.grpc_port == 3331  # flag
    assert s.server.http_port == 2222  # environment
    assert s.mesh.port == 1113  # file
    assert s.mesh.host == "0.0.0.0"  # default


def test_environ_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIVEMIND_MESH__PORT", "4444")
    assert load_settings().mesh.port == 4444


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server:\n  grpc_prot: 1\n", "server.grpc_prot"),
        ("bogus:\n  x: 1\n", "bogus"),
        ("mesh:\n  tls:\n    certfile: x\n", "mesh.tls.certfile"),
    ],
)
def test_unknown_keys_in_the_file_are_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, text), environ={})
    assert f"{key}: unknown key" in str(caught.value)
    assert str(tmp_path / "config.yaml") in str(caught.value)


@pytest.mark.parametrize(
    ("name", "key"),
    [("HIVEMIND_MESH__BOGUS", "mesh.bogus"), ("HIVEMIND_NOPE__X", "nope")],
)
def test_unknown_keys_in_the_environment_are_named(name: str, key: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={name: "1"})
    assert f"{key}: unknown key" in str(caught.value)


def test_unknown_flag_is_named() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={}, overrides={"rate_limiting.bogus": 1})
    assert "rate_limiting.bogus: unknown key" in str(caught.value)


def test_every_problem_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  grpc_port: -1\n  nope: 1\nmesh:\n  sync_interval: soon\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ={})
    text = str(caught.value)
    assert "server.grpc_port" in text
    assert "server.nope: unknown key" in text
    assert "mesh.sync_interval" in text and "'soon' is not a duration" in text


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("20ms", 0.02),
        ("5s", 5.0),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("1.5m", 90.0),
        ("250us", 0.00025),
        ("3", 3.0),
        (" 7s ", 7.0),
        (4, 4.0),
        (0.5, 0.5),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)
    assert load_settings(environ={}, overrides={"mesh.probe_interval": value}).mesh.probe_interval == (
        pytest.approx(seconds)
    )


@pytest.mark.parametrize("value", ["fast", "5 parsecs", "-5s", "s", "", "1d", True, None, [1]])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={}, overrides={"mesh.probe_interval": value})
    assert "mesh.probe_interval" in str(caught.value)


def test_negative_duration_is_rejected() -> None:
    with pytest.raises(SettingsError):
        load_settings(environ={}, overrides={"mesh.sync_interval": -1})


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("server.grpc_port", 70000),
        ("server.grpc_port", "eighty"),
        ("server.transport", "h2o"),
        ("rate_limiting.on_counter_overflow", "maybe"),
        ("rate_limiting.consistency", "strong"),
        ("rate_limiting.near_limit_ratio", 1.5),
        ("rate_limiting.max_counters", 0),
        ("rate_limiting.watch", "perhaps"),
        ("observability.log_format", "xml"),
        ("observability.log_level", "loud"),
        ("observability.trace_sample_ratio", -0.1),
        ("server.limits.max_descriptors", 0),
    ],
)
def test_bad_values(dotted: str, value: object) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={}, overrides={dotted: value})
    assert dotted in str(caught.value)


def test_bad_values_from_the_environment() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"HIVEMIND_SERVER__GRPC_PORT": "99999"})
    assert "server.grpc_port" in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"HIVEMIND_MESH__BOOTSTRAP_PEERS": "[a:1, b:2"})
    assert "HIVEMIND_MESH__BOOTSTRAP_PEERS" in str(caught.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml", environ={})
    with pytest.raises(SettingsError, match="malformed YAML"):
        load_settings(write(tmp_path, "server: [\n"), environ={})
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"), environ={})


def test_tls_needs_certificate_and_key() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={}, overrides={"server.tls.cert_file": "/c.pem"})
    assert "server.tls" in str(caught.value)
    with pytest.raises(SettingsError):
        load_settings(environ={}, overrides={"server.tls.client_ca_file": "/ca.pem"})


@pytest.mark.parametrize(("raw", "level"), [("WARN", "warning"), ("Debug", "debug"), (" error ", "error")])
def test_log_level_spellings(raw: str, level: str) -> None:
    assert load_settings(environ={"HIVEMIND_OBSERVABILITY__LOG_LEVEL": raw}).observability.log_level == level
