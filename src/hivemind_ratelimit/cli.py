"""The command line. The only place that chooses exit codes.

hivemind [serve] [--config FILE] [flags]      run the service
hivemind check-config PATH                    validate rule files, print every problem
hivemind query --domain D --descriptor k=v    send one ShouldRateLimit, print the answer
hivemind mesh status [--target HOST:PORT]     the members as a node sees them (its admin port)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from hivemind_ratelimit import __version__
from hivemind_ratelimit.errors import HivemindError, RuleConfigError, SettingsError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

# Flags for the most used settings: (flag, settings key, type, help). Every other key is
# reachable with --set section.key=value or HIVEMIND_<SECTION>__<KEY>.
SERVE_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--host", "server.host", str, "address for the gRPC and admin ports"),
    ("--grpc-port", "server.grpc_port", int, "RLS gRPC port (default 8081)"),
    ("--http-port", "server.http_port", int, "admin HTTP port (default 8080, 0 disables)"),
    ("--rules", "rate_limiting.config_path", str, "rule file or directory"),
    ("--log-level", "observability.log_level", str, "debug, info, warning or error"),
    ("--log-format", "observability.log_format", str, "text or json"),
    ("--node-id", "mesh.node_id", str, "this node's id in the mesh"),
    ("--mesh-port", "mesh.port", int, "peer protocol port (default 7946)"),
    ("--bootstrap-peers", "mesh.bootstrap_peers", str, "comma-separated host:port of peers"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hivemind", description="Distributed rate limit service for Envoy.")
    parser.add_argument("--version", action="version", version=f"hivemind {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the service (the default)")
    _serve_arguments(serve)

    check = sub.add_parser("check-config", help="validate rule files")
    check.add_argument("path", help="a rule file or a directory of *.yaml / *.yml")
    check.add_argument("--merge-domains", action="store_true", help="allow a domain in several files")

    query = sub.add_parser("query", help="send one ShouldRateLimit request")
    query.add_argument("--domain", required=True)
    query.add_argument(
        "--descriptor",
        action="append",
        required=True,
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="one descriptor; repeat for several",
    )
    query.add_argument("--hits", type=int, default=0, help="hits_addend (default: 1)")
    query.add_argument("--target", default="127.0.0.1:8081", help="host:port or unix:PATH")
    query.add_argument("--timeout", type=float, default=5.0)
    query.add_argument("--json", action="store_true", help="print the response as proto3 JSON")

    mesh = sub.add_parser("mesh", help="look at the mesh")
    mesh_sub = mesh.add_subparsers(dest="mesh_command", required=True)
    status = mesh_sub.add_parser("status", help="the members as a node sees them")
    status.add_argument("--target", default="127.0.0.1:8080", help="the node's admin address host:port")
    status.add_argument("--timeout", type=float, default=5.0)
    status.add_argument("--json", action="store_true", help="print the raw /mesh JSON")
    return parser


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="service config file (config.yaml)")
    for flag, key, kind, help_text in SERVE_FLAGS:
        parser.add_argument(flag, dest=key, type=kind, default=None, help=f"{help_text} [{key}]")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any setting, e.g. mesh.sync_interval=50ms",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "serve")
    args = _parser().parse_args(args_list)
    try:
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "query":
            return _query(args)
        if args.command == "mesh":
            return _mesh_status(args)
        return _serve(args)
    except SettingsError as exc:
        print(f"hivemind: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuleConfigError as exc:
        count = len(exc.problems)
        print(f"hivemind: invalid rules ({count} problem{'s' if count != 1 else ''}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_ERROR
    except HivemindError as exc:
        print(f"hivemind: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `hivemind query ... | head -1`
        sys.stderr.close()
        return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from hivemind_ratelimit.app import App
    from hivemind_ratelimit.settings import load_settings
    from hivemind_ratelimit.telemetry.logging import setup_logging

    overrides: dict[str, Any] = {
        key: getattr(args, key) for _, key, _, _ in SERVE_FLAGS if getattr(args, key) is not None
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SettingsError(f"--set takes SECTION.KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    settings = load_settings(args.config, overrides=overrides)
    app = App(settings)
    setup_logging(settings.observability.log_level, settings.observability.log_format, app.node_id)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional
        pass
    asyncio.run(app.serve_forever())
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    from hivemind_ratelimit.rules.loader import load_path

    rules = load_path(args.path, merge_domains=args.merge_domains)
    count = sum(len(r.limits) for r in rules.walk())
    print(f"{args.path}: OK ({len(rules.domains)} domains, {count} limits, version {rules.version})")
    return EXIT_OK


def _query(args: argparse.Namespace) -> int:
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
    from google.protobuf import json_format

    request = rls_pb2.RateLimitRequest(domain=args.domain, hits_addend=args.hits)
    for text in args.descriptor:
        descriptor = request.descriptors.add()
        for pair in text.split(","):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                print(f"hivemind: descriptor entries are KEY=VALUE, got {pair!r}", file=sys.stderr)
                return EXIT_USAGE
            descriptor.entries.append(ratelimit_pb2.RateLimitDescriptor.Entry(key=key, value=value))
    with grpc.insecure_channel(args.target) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        try:
            response = stub.ShouldRateLimit(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"hivemind: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_ERROR
    if args.json:
        print(json_format.MessageToJson(response, indent=None))
        return EXIT_OK
    code_name = rls_pb2.RateLimitResponse.Code.Name
    unit_name = rls_pb2.RateLimitResponse.RateLimit.Unit.Name
    print(code_name(response.overall_code))
    for index, status in enumerate(response.statuses):
        line = f"  descriptor {index}: {code_name(status.code)}"
        if status.HasField("current_limit"):
            limit = status.current_limit
            line += f" limit={limit.requests_per_unit}/{unit_name(limit.unit).lower()}"
            if limit.name:
                line += f" name={limit.name}"
            line += f" remaining={status.limit_remaining} reset={status.duration_until_reset.seconds}s"
        elif status.limit_remaining:
            line += " (unlimited)"
        else:
            line += " (no limit)"
        print(line)
    for header in response.response_headers_to_add:
        print(f"  header {header.key}: {header.value}")
    if response.HasField("dynamic_metadata"):
        print(f"  metadata {json.dumps(json_format.MessageToDict(response.dynamic_metadata))}")
    return EXIT_OK


def _mesh_status(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    target = args.target if "://" in args.target else f"http://{args.target}"
    try:
        with urllib.request.urlopen(f"{target}/mesh", timeout=args.timeout) as reply:
            data = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"hivemind: cannot read {target}/mesh: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    node = data.get("node") or {}
    print(f"node {node.get('id')} at {node.get('address')} (incarnation {node.get('incarnation')})")
    columns = ("MEMBER", 24), ("STATE", 8), ("ADDRESS", 22), ("LINK", 5)
    print(
        " ".join(f"{name:<{width}}" for name, width in columns)
        + f" {'HEARD':>8} {'RTT ms':>8} {'OFFSET ms':>10}"
    )
    for m in data.get("members", []):

        def num(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        print(
            f"{m['id']:<24} {m['state']:<8} {m['address']:<22} {'yes' if m['linked'] else 'no':<5} "
            f"{m['last_heard_seconds_ago']:>7.1f}s {num(m['rtt_ms']):>8} {num(m['clock_offset_ms']):>10}"
        )
    sync = data.get("sync", {})
    sent = sum(sync.get("messages_sent", {}).values())
    received = sum(sync.get("messages_received", {}).values())
    print(
        f"sync: {sent} messages / {sync.get('bytes_sent', 0)} bytes sent, "
        f"{received} / {sync.get('bytes_received', 0)} received, "
        f"{sync.get('malformed_messages', 0)} malformed, {sync.get('refused_peers', 0)} refused"
    )
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig()
    sys.exit(main())
