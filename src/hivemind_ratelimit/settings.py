"""Service settings: built-in defaults < config.yaml < HIVEMIND_<SECTION>__<KEY> < flags.

Read once at start, validated, frozen. Unknown keys are errors that name the key and
where it came from. Durations are strings such as `20ms`, `5s`, `1m`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hivemind_ratelimit.errors import SettingsError
from hivemind_ratelimit.rules.model import Consistency

ENV_PREFIX = "HIVEMIND_"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h)?\s*$")
_SCALE = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`20ms`, `5s`, `1.5m`, `2h`, or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a string such as '20ms' or '5s'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _SCALE[match.group(2)]
    raise ValueError(f"{value!r} is not a duration (use e.g. '20ms', '5s', '1m')")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Port = Annotated[int, Field(ge=0, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerTls(_Section):
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""  # set: clients must present a certificate signed by it (mTLS)

    @model_validator(mode="after")
    def _complete(self) -> ServerTls:
        if (self.cert_file or self.key_file or self.client_ca_file) and not (
            self.cert_file and self.key_file
        ):
            raise ValueError(
                "TLS needs both cert_file and key_file (client_ca_file adds client certificates)"
            )
        return self


class RequestLimits(_Section):
    max_domain_bytes: int = Field(256, ge=1)
    max_descriptors: int = Field(64, ge=1)
    max_entries: int = Field(32, ge=1)
    max_entry_bytes: int = Field(1024, ge=1)  # each key and each value


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    grpc_port: Port = 8081
    grpc_uds: str = ""
    http_port: Port = 8080
    transport: Literal["auto", "nghttp2", "grpcio"] = "auto"  # see rls/transport.py
    tls: ServerTls = ServerTls()
    limits: RequestLimits = RequestLimits()
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    drain_timeout: Duration = 5.0


class MeshTls(_Section):
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""


class MeshSettings(_Section):
    node_id: str = ""
    host: str = "0.0.0.0"
    port: Port = 7946
    advertise_address: str = ""
    bootstrap_peers: tuple[str, ...] = ()
    sync_interval: Duration = 0.02
    probe_interval: Duration = 1.0
    suspect_timeout: Duration = 5.0
    warmup_timeout: Duration = 2.0
    secret_file: str = ""
    tls: MeshTls = MeshTls()

    @field_validator("bootstrap_peers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value


class RateLimitingSettings(_Section):
    config_path: str = "config/ratelimit.yaml"
    watch: bool = True
    watch_interval: Duration = 1.0
    merge_domains: bool = False
    near_limit_ratio: float = Field(0.8, ge=0.0, le=1.0)
    consistency: Consistency = Consistency.BOUNDED
    max_counters: int = Field(1_000_000, ge=1)
    on_counter_overflow: Literal["allow", "deny"] = "allow"
    response_headers: bool = False
    shadow_mode: bool = False
    stop_increment_when_over_limit: bool = False


class ObservabilitySettings(_Section):
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        # envoyproxy/ratelimit users write LOG_LEVEL=WARN; accept any case and "warn".
        if isinstance(value, str):
            value = value.strip().lower()
            return "warning" if value == "warn" else value
        return value

    log_format: Literal["text", "json"] = "text"
    otlp_endpoint: str = ""
    trace_sample_ratio: float = Field(0.01, ge=0.0, le=1.0)


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    mesh: MeshSettings = MeshSettings()
    rate_limiting: RateLimitingSettings = RateLimitingSettings()
    observability: ObservabilitySettings = ObservabilitySettings()


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from the layers; raises SettingsError naming every bad key."""
    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise SettingsError(f"{path}: malformed YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"{path}: expected a mapping of sections at the top level")
        data = loaded or {}
    for dotted, value in _from_environ(os.environ if environ is None else environ).items():
        _set(data, dotted, value)
    for dotted, value in (overrides or {}).items():
        _set(data, dotted, value)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            lines.append(f"{where}: {message}")
        source = f" in {config_file}, environment or flags" if config_file else ""
        raise SettingsError(f"invalid settings{source}:\n  " + "\n  ".join(lines)) from None


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """HIVEMIND_MESH__BOOTSTRAP_PEERS=a:7946,b:7946 -> {'mesh.bootstrap_peers': '...'}."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        # Plain text goes to the validator as is ("8081" -> 8081, "true" -> True,
        # "a:7946,b:7946" -> a list); only YAML flow lists are parsed here.
        value: Any = raw
        if raw.lstrip().startswith("["):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise SettingsError(f"{name}: malformed list: {exc}") from exc
        out[dotted] = value
    return out


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
