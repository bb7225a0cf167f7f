"""Spec §5.5: the real membership and counter code at 100 nodes, with message loss,
delay, duplication and a partition, deterministic and bounded in CPU (a few seconds:
the sync interval is 50 ms, the transport's tick, and the load is 150 requests/s)."""

from __future__ import annotations

import time

from hivemind_ratelimit.core.limiter import Code
from hivemind_ratelimit.mesh.protocol import Timing
from hivemind_ratelimit.mesh.simnet import Faults, SimNetwork
from simulation.workload import DOMAIN, PREFIX, RULES

N = 100
TIMING = Timing(sync_interval=0.05, probe_interval=1.0, suspect_timeout=5.0, grace=2.0)


def test_a_hundred_nodes_converge_after_loss_and_a_partition() -> None:
    started = time.process_time()
    net = SimNetwork(
        N, 7, TIMING, RULES, faults=Faults(delay=0.002, jitter=0.004, loss=0.0005, duplicate=0.05)
    )
    rng = net.rng
    sent = 0

    def load(seconds: float, rate: float) -> None:
        nonlocal sent
        end = net.clock.now() + seconds
        while net.clock.now() < end:
            node = rng.choice([n.index for n in net.nodes if n.running])
            decision = net.request(node, DOMAIN, [("big", f"v{rng.randrange(5)}")])
            assert decision.overall is Code.OK
            sent += 1
            net.run(1.0 / rate)

    load(0.8, 150)
    net.partition([range(5)])  # five nodes cut off from the other ninety-five
    load(0.4, 150)
    net.heal()
    load(0.8, 150)
    net.set_faults(Faults(delay=0.002))
    net.run(1.0)
    first, *others = net.views(PREFIX)
    assert first is not None and all(view == first for view in others)
    assert sum(sum(slots.values()) for slots in first.values()) == sent
    assert all(len(node.core.links) == len(node.cluster.members) == N - 1 for node in net.nodes)
    assert net.lost > 0
    print(
        f"{N} nodes, {sent} requests, {net.delivered} messages delivered, {net.lost} lost, "
        f"{sum(n.core.stats.bytes_sent for n in net.nodes) / 1e6:.1f} MB sent, "
        f"{time.process_time() - started:.1f} s CPU"
    )
