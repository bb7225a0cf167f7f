"""Mesh sync cost: CPU and bytes per second of sync traffic per node.

Runs the real mesh core of three nodes in one process (no sockets; messages are
serialised and parsed as on the wire). Every node holds N live counters and changes
`--updates` of them per second (spread round-robin, so all N stay active); a node only
sends counters that changed, so this rate, not N, sets the cost. The default, 5,000
updates per second per node, is more than one node's RLS serves on grpcio. The
`worst case` rows change every counter in every interval.

Reports, per node, the CPU share of one core spent building, serialising, parsing and
merging sync messages, and the bytes it sends per second.

    .venv/bin/python bench/mesh_cost.py [--counters 1000 10000] [--intervals 0.02] [--updates 5000]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from hivemind_ratelimit.core.allowance import ClusterView
from hivemind_ratelimit.core.clock import ManualClock
from hivemind_ratelimit.core.store import CounterStore
from hivemind_ratelimit.mesh.proto import mesh_pb2 as pb
from hivemind_ratelimit.mesh.protocol import MeshCore, Timing

NODES = 3


def build(n: int, timing: Timing, clock: ManualClock) -> list[MeshCore]:
    cores = []
    for i in range(n):
        node = f"node-{i}"
        cores.append(
            MeshCore(
                node_id=node,
                boot=1,
                address=f"127.0.0.1:{7946 + i}",
                store=CounterStore(2_000_000),
                cluster=ClusterView(node, clock),
                timing=timing,
                rng=random.Random(i),
            )
        )
    now = clock.now()
    for a in cores:
        for b in cores:
            if a is not b:
                a.link_up(b.node_id, 1, b.membership.address, now)
    return cores


def run(counters: int, interval: float, rounds: int, updates: int | None) -> dict[str, float]:
    clock = ManualClock(1_800_000_000.0)
    timing = Timing(sync_interval=interval, probe_interval=3600.0, suspect_timeout=3600.0)
    cores = build(NODES, timing, clock)
    window = int(clock.now() // 3600) * 3600
    keys = [f"bench\x1fuser={i}\x1f3600" for i in range(counters)]
    per_node = [
        [c.store.get_or_create(k, window, 3600, window + 7200, clock.now()) for k in keys] for c in cores
    ]
    cpu = [0.0] * NODES
    sent_bytes = [0] * NODES
    per_tick = counters if updates is None else max(1, min(counters, round(updates * interval)))
    cursor = 0
    for _ in range(rounds):
        clock.advance(interval)
        now = clock.now()
        for counter_list, core in zip(per_node, cores, strict=True):
            for step in range(per_tick):
                counter = counter_list[(cursor + step) % counters]
                assert counter is not None
                counter.own += 1
                counter.seen += 1
                core.store.dirty.add(counter)
        cursor += per_tick
        wires: list[tuple[int, str, bytes]] = []
        for index, core in enumerate(cores):
            started = time.process_time()
            outs = core.tick(now)
            encoded = [(peer, env.SerializeToString()) for peer, env in outs]
            cpu[index] += time.process_time() - started
            for peer, data in encoded:
                sent_bytes[index] += len(data)
                wires.append((index, peer, data))
        by_id = {c.node_id: i for i, c in enumerate(cores)}
        for sender, peer, data in wires:
            target = by_id[peer]
            started = time.process_time()
            cores[target].receive(cores[sender].node_id, pb.Envelope.FromString(data), now)
            cpu[target] += time.process_time() - started
    elapsed = rounds * interval  # simulated seconds of traffic
    return {
        "counters": counters,
        "updates_per_second": per_tick / interval,
        "sync_interval_ms": interval * 1000,
        "cpu_percent_of_one_core": 100 * (sum(cpu) / NODES) / elapsed,
        "bytes_sent_per_second": (sum(sent_bytes) / NODES) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counters", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--intervals", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--seconds", type=float, default=2.0, help="simulated seconds per case")
    parser.add_argument("--updates", type=int, default=5000, help="counter updates per second per node")
    parser.add_argument("--no-worst-case", action="store_true", help="skip the every-counter-changes rows")
    args = parser.parse_args()
    rows = []
    print(
        f"{'counters':>9} {'updates/s':>10} {'sync':>7} {'CPU % of a core':>16} {'bytes/s sent':>14}"
        f"   (per node, {NODES} nodes)"
    )
    cases: list[tuple[int, float, int | None]] = [
        (c, i, args.updates) for c in args.counters for i in args.intervals
    ]
    if not args.no_worst_case:
        cases += [(c, i, None) for c in args.counters for i in args.intervals]
    for counters, interval, updates in cases:
        row = run(counters, interval, max(1, int(args.seconds / interval)), updates)
        rows.append(row)
        rate = f"{row['updates_per_second']:,.0f}"
        label = rate if updates else f"all {rate}"
        print(
            f"{counters:>9} {label:>10} {interval * 1000:>5.0f}ms {row['cpu_percent_of_one_core']:>15.1f}% "
            f"{row['bytes_sent_per_second']:>14,.0f}"
        )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "mesh_cost.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
