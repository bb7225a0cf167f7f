"""Mesh accuracy: what a cluster admits against a shared limit, by consistency mode and sync interval.

For N = 3 and 5 `hivemind serve` processes on 127.0.0.1, consistency `bounded` and
`eventual` (rate_limiting.consistency) and sync intervals of 10, 20, 50 and 100 ms
(mesh.sync_interval), a cluster is started, and trials offer single-hit requests
against one limit (LIMIT per hour) at a fixed rate, three times the limit in all:

- uniform: every node gets the same share of the load;
- skewed: one node gets 90 %, the others share the rest.

Load comes from one client process per node (grpc.aio on uvloop, requests paced on a
common schedule, bounded in time); admitted requests are counted from the responses.
Each trial counts on a descriptor value of its own in an hour-long window, so it
starts from zero, is never cut by a window boundary, and the counter is new to the
cluster (the cold start of bounded mode is part of what is measured).

Reported per cell: the median admitted over the trials, over-admission (admitted above
the limit, % of the limit) and, for bounded, under-admission (admitted below the limit
although demand was three times the limit, % of the limit), and the range. Clusters
are restarted for every (N, mode, sync interval) and every round; within a cluster the
uniform and skewed trials alternate; rounds visit the clusters in different orders.
Results also go to bench/results/mesh_accuracy-<time>.json.

    .venv/bin/python bench/mesh_accuracy.py [--rounds 3] [--trials 1] [--rate 600] [--limit 200]

The machine is shared and noisy: compare cells of one run, not runs of different days.
Every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(ROOT / "tests"))  # the process harness of the cluster tests

from cluster.cluster_harness import Cluster  # noqa: E402

DOMAIN = "bench"
SKEW = 0.9
SETTLE = 0.3  # seconds after a trial's load before the next one
DEADLINE_SLACK = 5.0  # a client stops sending this long after its schedule should have ended
WORKER_TIMEOUT = 60.0
METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


def rules(limit: int) -> str:
    # No `consistency` in the rule: the service default (rate_limiting.consistency) applies.
    return f"""
domain: {DOMAIN}
descriptors:
  - key: k
    rate_limit: {{unit: hour, requests_per_unit: {limit}}}
"""


# -- client processes --------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    target: str
    value: str  # the descriptor value of the trial
    count: int  # requests to send
    start_at: float  # wall-clock time of the common schedule's start
    duration: float  # the schedule spreads `count` requests over this many seconds
    phase: float  # 0..1: where in its slot each request goes, so clients interleave


@dataclass
class Outcome:
    sent: int = 0
    admitted: int = 0
    errors: int = 0
    late: float = 0.0  # how far the schedule slipped (seconds)


def _request_bytes(value: str) -> bytes:
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2

    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="k", value=value)
    message = rls_pb2.RateLimitRequest(
        domain=DOMAIN, descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
    )
    return message.SerializeToString()


async def _run_job(job: Job, channels: dict[str, Any]) -> Outcome:
    import grpc
    from envoy.service.ratelimit.v3 import rls_pb2

    channel = channels.get(job.target)
    if channel is None:
        channel = channels[job.target] = grpc.aio.insecure_channel(
            job.target, options=[("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
        )
    call = channel.unary_unary(METHOD, response_deserializer=rls_pb2.RateLimitResponse.FromString)
    body = _request_bytes(job.value)
    outcome = Outcome()
    ok = rls_pb2.RateLimitResponse.OK
    in_flight: set[asyncio.Task[None]] = set()
    limit = asyncio.Semaphore(64)

    async def one() -> None:
        try:
            response = await call(body, timeout=5.0)
            if response.overall_code == ok:
                outcome.admitted += 1
        except grpc.RpcError:
            outcome.errors += 1
        finally:
            limit.release()

    step = job.duration / max(job.count, 1)
    base = job.start_at + job.phase * step
    deadline = job.start_at + job.duration + DEADLINE_SLACK
    for k in range(job.count):
        due = base + k * step
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.02:  # behind: slip the schedule rather than burst to catch up
            base -= delay
            outcome.late -= delay
        if time.time() > deadline:
            break
        await limit.acquire()
        task = asyncio.create_task(one())
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        outcome.sent += 1
    if in_flight:
        await asyncio.wait(in_flight, timeout=10.0)
    return outcome


def _worker(conn: Connection) -> None:
    """A client process: runs the jobs it is sent, one at a time, until told to stop."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def serve() -> None:
        channels: dict[str, Any] = {}
        loop = asyncio.get_running_loop()
        while True:
            job = await loop.run_in_executor(None, conn.recv)
            if job is None:
                break
            if job == "ping":
                conn.send("pong")
                continue
            outcome = await _run_job(job, channels)
            conn.send(asdict(outcome))
        for channel in channels.values():
            await channel.close()

    asyncio.run(serve())


class Clients:
    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")  # no gRPC state inherited
        self.pipes: list[Connection] = []
        self.processes = []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(child,), daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        for pipe in self.pipes:
            pipe.send("ping")
        for pipe in self.pipes:
            if not pipe.poll(WORKER_TIMEOUT) or pipe.recv() != "pong":
                raise RuntimeError("a client process did not start")

    def run(self, jobs: list[Job]) -> list[Outcome]:
        for pipe, job in zip(self.pipes, jobs, strict=False):
            pipe.send(job)
        outcomes = []
        for pipe in self.pipes[: len(jobs)]:
            if not pipe.poll(WORKER_TIMEOUT):
                raise RuntimeError("a client process did not finish its job")
            outcomes.append(Outcome(**pipe.recv()))
        return outcomes

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self.processes:
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)


# -- trials ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    nodes: int
    mode: str
    sync_ms: int


@dataclass
class Trial:
    nodes: int
    mode: str
    sync_ms: int
    dist: str
    round: int
    admitted: int
    per_node: list[int]
    sent: int
    errors: int
    late: float
    seconds: float


def shares(nodes: int, total: int, dist: str) -> list[int]:
    if dist == "uniform":
        counts = [total // nodes] * nodes
        counts[0] += total - sum(counts)
        return counts
    busy = round(total * SKEW)
    rest = total - busy
    counts = [busy] + [rest // (nodes - 1)] * (nodes - 1)
    counts[1] += total - sum(counts)
    return counts


def ensure_window_room(needed: float) -> None:
    left = 3600 - time.time() % 3600
    if left < needed:
        time.sleep(left + 0.1)


def run_trial(
    cluster: Cluster, clients: Clients, config: Config, dist: str, rnd: int, args: argparse.Namespace
) -> Trial:
    offered = args.limit * args.offered
    duration = offered / args.rate
    ensure_window_room(duration + DEADLINE_SLACK + 10)
    value = f"{config.nodes}-{config.mode}-{config.sync_ms}-{dist}-{rnd}-{random.getrandbits(48):x}"
    start_at = time.time() + 0.2
    rng = random.Random(value)
    jobs = [
        Job(node.grpc_target, value, count, start_at, duration, rng.random())
        for node, count in zip(cluster.nodes, shares(config.nodes, offered, dist), strict=True)
    ]
    started = time.monotonic()
    outcomes = clients.run(jobs)
    seconds = time.monotonic() - started
    time.sleep(SETTLE)
    return Trial(
        nodes=config.nodes,
        mode=config.mode,
        sync_ms=config.sync_ms,
        dist=dist,
        round=rnd,
        admitted=sum(o.admitted for o in outcomes),
        per_node=[o.admitted for o in outcomes],
        sent=sum(o.sent for o in outcomes),
        errors=sum(o.errors for o in outcomes),
        late=max(o.late for o in outcomes),
        seconds=round(seconds, 3),
    )


def start_cluster(workdir: Path, config: Config, args: argparse.Namespace) -> Cluster:
    settings = {
        "rate_limiting.consistency": config.mode,
        "mesh.sync_interval": f"{config.sync_ms}ms",
        # Default failure detection: nothing fails here; 1 s probes cost less than 200 ms ones.
        "mesh.probe_interval": "1s",
        "mesh.suspect_timeout": "5s",
        "mesh.warmup_timeout": "2s",
        "observability.log_level": "warning",
    }
    cluster = Cluster(workdir, rules(args.limit), config.nodes, settings=settings)
    try:
        cluster.start()
        cluster.wait_linked(timeout=20.0)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    """SIGTERM every node at once, then wait (and SIGKILL what does not exit)."""
    for node in cluster.nodes:
        with contextlib.suppress(Exception):
            if node.running:
                node.proc.terminate()  # type: ignore[union-attr]
    cluster.stop()


# -- report ------------------------------------------------------------------------------


@dataclass
class Cell:
    nodes: int
    dist: str
    mode: str
    sync_ms: int
    admitted: list[int] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.admitted)


def summarise(trials: list[Trial], limit: int) -> list[dict[str, Any]]:
    cells: dict[tuple[int, str, str, int], Cell] = {}
    for t in trials:
        key = (t.nodes, t.dist, t.mode, t.sync_ms)
        cells.setdefault(key, Cell(*key)).admitted.append(t.admitted)
    out = []
    for key in sorted(cells, key=lambda k: (k[0], k[1] != "uniform", k[2], k[3])):
        cell = cells[key]
        median = cell.median()
        out.append(
            {
                "nodes": cell.nodes,
                "dist": cell.dist,
                "mode": cell.mode,
                "sync_ms": cell.sync_ms,
                "trials": len(cell.admitted),
                "admitted": sorted(cell.admitted),
                "median": median,
                "over_pct": round(max(0.0, median - limit) * 100 / limit, 2),
                "under_pct": round(max(0.0, limit - median) * 100 / limit, 2),
                "worst_over_pct": round(max(0, max(cell.admitted) - limit) * 100 / limit, 2),
            }
        )
    return out


def print_table(cells: list[dict[str, Any]], args: argparse.Namespace) -> None:
    syncs = sorted({c["sync_ms"] for c in cells})
    print()
    print(
        f"admitted against a limit of {args.limit}/hour; {args.offered}x the limit offered at "
        f"{args.rate:g} requests/s; median of the trials (over % / under % of the limit)"
    )
    header = f"{'nodes':>5}  {'load':<8} {'mode':<9}" + "".join(f"{f'{s} ms':>20}" for s in syncs)
    print(header)
    print("-" * len(header))
    rows: dict[tuple[int, str, str], dict[int, dict[str, Any]]] = {}
    for c in cells:
        rows.setdefault((c["nodes"], c["dist"], c["mode"]), {})[c["sync_ms"]] = c
    for (nodes, dist, mode), by_sync in rows.items():
        line = f"{nodes:>5}  {dist:<8} {mode:<9}"
        for s in syncs:
            c = by_sync.get(s)
            if c is None:
                line += f"{'-':>20}"
                continue
            text = f"{c['median']:g} (+{c['over_pct']:g}/-{c['under_pct']:g})"
            line += f"{text:>20}"
        print(line)
    print()
    print("ranges (min..max admitted per cell):")
    for (nodes, dist, mode), by_sync in rows.items():
        ranges = "  ".join(
            f"{s}ms {min(c['admitted'])}..{max(c['admitted'])}" for s, c in sorted(by_sync.items())
        )
        print(f"  {nodes} {dist:<8} {mode:<9} {ranges}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--modes", nargs="+", default=["bounded", "eventual"])
    parser.add_argument("--sync-ms", type=int, nargs="+", default=[10, 20, 50, 100])
    parser.add_argument("--rounds", type=int, default=3, help="times every cluster is started")
    parser.add_argument("--trials", type=int, default=1, help="trials per load shape per round")
    parser.add_argument("--limit", type=int, default=200, help="requests per hour")
    parser.add_argument("--offered", type=int, default=3, help="load offered, in multiples of the limit")
    parser.add_argument("--rate", type=float, default=600.0, help="requests per second, cluster-wide")
    args = parser.parse_args()

    configs = [Config(n, m, s) for n in args.nodes for m in args.modes for s in args.sync_ms]
    started = time.monotonic()
    load_before = os.getloadavg()
    trials: list[Trial] = []
    clients = Clients(max(args.nodes))
    try:
        with tempfile.TemporaryDirectory(prefix="hivemind-mesh-accuracy-") as tmp:
            for rnd in range(args.rounds):
                order = list(configs)
                random.Random(rnd).shuffle(order)
                for index, config in enumerate(order):
                    workdir = Path(tmp) / f"r{rnd}-{index}"
                    cluster = start_cluster(workdir, config, args)
                    try:
                        dists = ["uniform", "skewed"] if (index + rnd) % 2 == 0 else ["skewed", "uniform"]
                        for _ in range(args.trials):
                            for dist in dists:
                                trial = run_trial(cluster, clients, config, dist, rnd, args)
                                trials.append(trial)
                                print(
                                    f"[{time.monotonic() - started:6.1f}s] N={config.nodes} {config.mode:<8} "
                                    f"sync={config.sync_ms:>3}ms {dist:<7} admitted {trial.admitted:>4} "
                                    f"{trial.per_node} sent {trial.sent} errors {trial.errors} "
                                    f"slip {trial.late:.2f}s",
                                    flush=True,
                                )
                    finally:
                        stop_cluster(cluster)
    finally:
        clients.close()

    cells = summarise(trials, args.limit)
    print_table(cells, args)
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()
    print(
        f"\n{len(trials)} trials in {elapsed:.0f}s on {os.cpu_count()} cores; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after. A shared, noisy machine: "
        "compare cells of one run."
    )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"mesh_accuracy-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "benchmark": "mesh_accuracy",
                "args": vars(args),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_before": load_before,
                    "load_after": load_after,
                },
                "seconds": round(elapsed, 1),
                "cells": cells,
                "trials": [asdict(t) for t in trials],
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
