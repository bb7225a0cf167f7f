"""ShouldRateLimit throughput and latency: Hivemind against a do-nothing RLS server.

Both servers run on the same stack (grpc.aio on uvloop), each in its own process on
free 127.0.0.1 ports:

- `hivemind serve` with a realistic rule file: every request carries two descriptors,
  both match a rule (a key-only default and a wildcard under an exact parent) and both
  update a counter; the limits are far above the load, so every answer is OK;
- `bench/null_rls.py`, which answers every call with one constant OK response.

A load generator in a separate process (grpc.aio client on uvloop, one channel,
pre-serialised requests) keeps 1 and then 16 calls in flight for a fixed time. The
variants are interleaved round by round (the order flips every round) so that drift
of a noisy machine hits both alike. Per measurement: requests/s, client-side p50/p99
latency, and the server's CPU per call from /proc/<pid>/stat (utime + stime over the
measured window). The table shows medians over rounds and the ratio Hivemind / null.
Results also go to bench/results/rls_throughput-<time>.json.

    .venv/bin/python bench/rls_throughput.py [--rounds 3] [--duration 5]

Linux only (reads /proc). Everything is bounded in time and every process started here
is stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.metadata
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DOMAIN = "edge"
CLIENTS = 256  # distinct client addresses (and so distinct counters) in the request mix
START_TIMEOUT = 20.0  # seconds for a server to answer its first call
STOP_TIMEOUT = 10.0  # seconds for a server to exit after SIGTERM

# An edge proxy's rules: per-client limits, per-route limits for the API, plus the
# usual clutter of other entries that a lookup must not be slowed down by. Limits are
# far above what one machine can send, so every answer stays OK.
RULES_HEAD = f"""\
domain: {DOMAIN}
descriptors:
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 1000000000
  - key: header_match
    value: api
    descriptors:
      - key: path
        value: /v1/orders/*
        rate_limit:
          unit: minute
          requests_per_unit: 4000000000
      - key: path
        value: /v1/*
        rate_limit:
          unit: minute
          requests_per_unit: 4000000000
      - key: path
        rate_limit:
          unit: hour
          requests_per_unit: 4000000000
  - key: header_match
    value: admin
    rate_limit:
      unit: second
      requests_per_unit: 10
"""
RULES_FILLER = """\
  - key: tenant
    value: tenant-{index}
    rate_limit:
      unit: minute
      requests_per_unit: {limit}
"""


def rules_text(filler: int = 50) -> str:
    return RULES_HEAD + "".join(RULES_FILLER.format(index=i, limit=1000 + i) for i in range(filler))


def build_payloads() -> list[bytes]:
    """Serialised RateLimitRequests: two descriptors each, as Envoy sends them."""
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2

    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    payloads = []
    for i in range(CLIENTS):
        request = rls_pb2.RateLimitRequest(domain=DOMAIN)
        request.descriptors.add().entries.append(
            entry(key="remote_address", value=f"10.1.{i // 250}.{i % 250}")
        )
        request.descriptors.add().entries.extend(
            [entry(key="header_match", value="api"), entry(key="path", value=f"/v1/orders/{1000 + i}")]
        )
        payloads.append(request.SerializeToString())
    return payloads


# -- /proc --------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def machine_ticks() -> tuple[int, int]:
    """(total, steal) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values[:8]), values[7] if len(values) > 7 else 0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Children get SIGTERM if this script dies, so nothing is left behind."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# -- the load generator (runs in its own process) ------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def drive(
    target: str, server_pid: int, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    import grpc

    payloads = build_payloads()
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        call = channel.unary_unary(METHOD)  # no serialisers: bytes in, bytes out
        t_begin = time.perf_counter()
        t_start, t_end = t_begin + warmup, t_begin + warmup + duration
        spans: list[tuple[float, float]] = []
        errors = 0
        snapshots: dict[str, tuple[float, float, float, int, int]] = {}

        def snapshot(name: str) -> None:
            total, steal = machine_ticks()
            snapshots[name] = (
                time.perf_counter(),
                process_cpu_seconds(server_pid),
                time.process_time(),
                total,
                steal,
            )

        async def clock() -> None:
            await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
            snapshot("start")
            await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
            snapshot("end")

        async def worker(offset: int) -> None:
            nonlocal errors
            index = offset
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                try:
                    await call(payloads[index % len(payloads)], timeout=5.0)
                except grpc.RpcError:
                    errors += 1
                spans.append((t0, time.perf_counter()))
                index += concurrency

        await asyncio.gather(clock(), *(worker(i) for i in range(concurrency)))

    s0, s1 = snapshots["start"], snapshots["end"]
    window = s1[0] - s0[0]
    completed = sum(1 for _, t1 in spans if s0[0] <= t1 <= s1[0])
    latencies = sorted(t1 - t0 for t0, t1 in spans if t0 >= s0[0] and t1 <= s1[0])
    per_call = 1e6 / completed if completed else float("nan")
    ticks = s1[3] - s0[3]
    return {
        "completed": completed,
        "window_s": window,
        "rps": completed / window,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "server_cpu_us_per_call": (s1[1] - s0[1]) * per_call,
        "client_cpu_us_per_call": (s1[2] - s0[2]) * per_call,
        "steal_pct": 100.0 * (s1[4] - s0[4]) / ticks if ticks else 0.0,
        "errors": errors,
    }


def load_worker(spec_text: str) -> int:
    spec = json.loads(spec_text)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    result = asyncio.run(
        drive(spec["target"], spec["server_pid"], spec["concurrency"], spec["warmup"], spec["duration"])
    )
    print(json.dumps(result))
    return 0


def probe(target: str) -> int:
    """One call; prints the answer as proto3 JSON, exit 1 if the server did not answer."""
    import grpc
    from envoy.service.ratelimit.v3 import rls_pb2
    from google.protobuf import json_format

    with grpc.insecure_channel(target) as channel:
        try:
            raw = channel.unary_unary(METHOD)(build_payloads()[0], timeout=1.0)
        except grpc.RpcError as exc:
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    answer = rls_pb2.RateLimitResponse.FromString(raw)
    print(json.dumps(json_format.MessageToDict(answer)))
    return 0


# -- the orchestrator --------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    target: str
    log: Path
    admin: str = ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hivemind_command() -> list[str]:
    script = Path(sys.executable).parent / "hivemind"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "hivemind_ratelimit.cli"]


def popen_logged(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start `command` in the repository, its stdout and stderr to `log`; the kernel stops
    it when this process dies. (bench/transport_bench.py starts its processes with it too.)
    """
    with open(log, "wb") as out:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )


def start(name: str, command: list[str], target: str, log: Path, admin: str = "") -> Server:
    return Server(name, popen_logged(command, log), target, log, admin)


def wait_ready(server: Server, deadline: float) -> dict[str, Any]:
    """Call the server (from a child process) until it answers; returns the first answer.

    This process never loads grpc itself: grpc starts threads, and the children are
    forked from here.
    """
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}: {tail(server.log)}")
        done = subprocess.run(
            [sys.executable, __file__, "--probe", server.target],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            preexec_fn=_die_with_parent,
            check=False,
        )
        if done.returncode == 0:
            answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
            return answer
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        time.sleep(0.2)
    raise RuntimeError(
        f"{server.name} did not answer within {START_TIMEOUT:.0f}s ({last}): {tail(server.log)}"
    )


def tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(server: Server) -> None:
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def measure(server: Server, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    spec = {
        "target": server.target,
        "server_pid": server.process.pid,
        "concurrency": concurrency,
        "warmup": warmup,
        "duration": duration,
    }
    done = subprocess.run(
        [sys.executable, __file__, "--load-worker", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=warmup + duration + 60,
        preexec_fn=_die_with_parent,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if server.process.poll() is not None:
        raise RuntimeError(f"{server.name} died during the run: {tail(server.log)}")
    return result


def scrape(admin: str) -> dict[str, float]:
    """The service-level counters from Hivemind's /metrics, to check what it answered."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = ("hivemind_requests_total", "hivemind_request_errors_total", "hivemind_counters_live")
    out = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def variants(
    concurrencies: Sequence[int], names: Sequence[str], round_index: int
) -> Iterator[tuple[str, int]]:
    order = [(name, c) for c in concurrencies for name in names]
    return iter(order if round_index % 2 == 0 else order[::-1])


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": importlib.metadata.version("grpcio"),
        "hivemind_commit": git_commit(),
        "loadavg_at_start": os.getloadavg(),
    }


def git_commit() -> str:
    """The checked-out commit (the working tree may differ from it)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


RATIO_KEYS = ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_call")


def summarise(runs: list[dict[str, Any]], concurrencies: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for c in concurrencies:
        row: dict[str, Any] = {"concurrency": c}
        for name in ("hivemind", "null"):
            mine = [r for r in runs if r["server"] == name and r["concurrency"] == c]
            row[name] = {
                key: median([r[key] for r in mine])
                for key in ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_call", "steal_pct")
            }
            row[name]["rounds"] = len(mine)
        row["ratio"] = {
            key: row["hivemind"][key] / row["null"][key] if row["null"][key] else float("nan")
            for key in RATIO_KEYS
        }
        # The same ratio taken within each round, then the median: less sensitive to drift.
        by_round = {(r["server"], r["round"]): r for r in runs if r["concurrency"] == c}
        rounds = sorted({n for _, n in by_round if ("hivemind", n) in by_round and ("null", n) in by_round})
        pairs = [(by_round[("hivemind", n)], by_round[("null", n)]) for n in rounds]
        row["ratio_within_rounds"] = {
            key: median([h[key] / z[key] for h, z in pairs if z[key]]) for key in RATIO_KEYS
        }
        rows.append(row)
    return rows


COLUMNS = (
    ("server", 16),
    ("in flight", 9),
    ("req/s", 7),
    ("p50 ms", 7),
    ("p99 ms", 7),
    ("server CPU µs/call", 18),
)


def _row(cells: Sequence[str]) -> str:
    padded = [
        cell.ljust(w) if i == 0 else cell.rjust(w)
        for i, (cell, (_, w)) in enumerate(zip(cells, COLUMNS, strict=True))
    ]
    return "| " + " | ".join(padded) + " |"


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: per concurrency, Hivemind, the null server and their ratio."""
    lines = [_row([name for name, _ in COLUMNS]), "|" + "|".join("-" * (w + 2) for _, w in COLUMNS) + "|"]
    for row in rows:
        c = str(row["concurrency"])
        for name, label in (("hivemind", "hivemind"), ("null", "null RLS")):
            m = row[name]
            lines.append(
                _row(
                    [
                        label,
                        c,
                        f"{m['rps']:.0f}",
                        f"{m['p50_ms']:.3f}",
                        f"{m['p99_ms']:.3f}",
                        f"{m['server_cpu_us_per_call']:.0f}",
                    ]
                )
            )
        r = row["ratio"]
        lines.append(
            _row(
                [
                    "hivemind / null",
                    c,
                    f"{r['rps']:.2f}",
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}",
                    f"{r['server_cpu_us_per_call']:.2f}",
                ]
            )
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    names = ("hivemind", "null")
    per_measurement = args.warmup + args.duration + 2.0
    budget_end = time.monotonic() + args.max_seconds
    info = machine()
    runs: list[dict[str, Any]] = []
    servers: dict[str, Server] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hivemind-bench-") as tmp:
        work = Path(tmp)
        rules = work / "rules.yaml"
        rules.write_text(rules_text(), encoding="utf-8")
        grpc_port, http_port, mesh_port, null_port = (free_port() for _ in range(4))
        config = work / "config.yaml"
        config.write_text(
            f"server: {{host: 127.0.0.1, grpc_port: {grpc_port}, http_port: {http_port}}}\n"
            f"mesh: {{host: 127.0.0.1, port: {mesh_port}}}\n"
            f"rate_limiting: {{config_path: {json.dumps(str(rules))}}}\n"
            "observability: {log_level: warning}\n",
            encoding="utf-8",
        )
        try:
            servers["hivemind"] = start(
                "hivemind",
                [*hivemind_command(), "serve", "--config", str(config)],
                f"127.0.0.1:{grpc_port}",
                work / "hivemind.log",
                admin=f"127.0.0.1:{http_port}",
            )
            servers["null"] = start(
                "null",
                [sys.executable, str(BENCH / "null_rls.py"), "--host", "127.0.0.1", "--port", str(null_port)],
                f"127.0.0.1:{null_port}",
                work / "null.log",
            )
            deadline = time.monotonic() + START_TIMEOUT
            first = wait_ready(servers["hivemind"], deadline)
            wait_ready(servers["null"], deadline)
            # The benchmark is only meaningful if both descriptors hit a rule and count.
            limited = [s for s in first.get("statuses", []) if "currentLimit" in s]
            if first.get("overallCode") != "OK" or len(limited) != 2:
                raise RuntimeError(f"hivemind did not match both descriptors: {first}")
            up = ", ".join(f"{s.name} pid {s.process.pid} on {s.target}" for s in servers.values())
            print(f"servers up: {up}", flush=True)
            for round_index in range(args.rounds):
                for name, concurrency in variants(concurrencies, names, round_index):
                    if time.monotonic() + per_measurement + 60 > budget_end:
                        notes.append(f"stopped early in round {round_index + 1}: time budget reached")
                        break
                    result = measure(servers[name], concurrency, args.warmup, args.duration)
                    result.update(server=name, concurrency=concurrency, round=round_index + 1)
                    runs.append(result)
                    print(
                        f"round {round_index + 1} {name:<8} c={concurrency:<3} {result['rps']:>7.0f} req/s  "
                        f"p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms  "
                        f"server {result['server_cpu_us_per_call']:.0f} µs/call  "
                        f"steal {result['steal_pct']:.1f}%  errors {result['errors']}",
                        flush=True,
                    )
                else:
                    continue
                break
            metrics = scrape(servers["hivemind"].admin)
        finally:
            for server in servers.values():
                stop(server)
    rows = summarise(runs, concurrencies)
    text = table(rows)
    print()
    print(
        f"ShouldRateLimit on 127.0.0.1, grpc.aio + uvloop, {args.rounds} rounds x {args.duration:g} s, "
        f"medians; {info['cpus']} CPUs ({info['cpu_model']})"
    )
    print(text)
    for row in rows:
        w = row["ratio_within_rounds"]
        print(
            f"hivemind / null taken within each round, median, {row['concurrency']} in flight: "
            f"req/s {w['rps']:.2f}, p50 {w['p50_ms']:.2f}, p99 {w['p99_ms']:.2f}, "
            f"server CPU/call {w['server_cpu_us_per_call']:.2f}"
        )
    errors = sum(r["errors"] for r in runs)
    if errors:
        notes.append(f"{errors} calls failed")
    for note in notes:
        print(f"note: {note}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"rls_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "rls_throughput",
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": info,
                "settings": {
                    "rounds": args.rounds,
                    "duration_s": args.duration,
                    "warmup_s": args.warmup,
                    "concurrency": concurrencies,
                    "distinct_clients": CLIENTS,
                    "descriptors_per_request": 2,
                },
                "summary": rows,
                "runs": runs,
                "hivemind_metrics_after": metrics,
                "notes": notes,
                "table": text,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"saved {out.relative_to(ROOT)}")
    return 1 if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--load-worker"]:
        return load_worker(argv[1])
    if argv[:1] == ["--probe"]:
        return probe(argv[1])
    parser = argparse.ArgumentParser(
        description="ShouldRateLimit throughput: Hivemind against a null RLS server."
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds measured per variant (default 5)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of load before measuring (default 1)"
    )
    parser.add_argument(
        "--concurrency", default="1,16", help="calls in flight, comma-separated (default 1,16)"
    )
    parser.add_argument("--max-seconds", type=float, default=900.0, help="time budget for the whole run")
    args = parser.parse_args(argv)
    if not Path("/proc/self/stat").exists():
        print("this benchmark reads /proc and runs on Linux only", file=sys.stderr)
        return 2
    # SIGTERM ends the run through the same clean-up as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
