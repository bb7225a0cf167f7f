"""Shared rules and load generators for the simulation tests (mesh/simnet.py)."""

from __future__ import annotations

import random
from collections.abc import Callable

from hivemind_ratelimit.core.limiter import KEY_SEPARATOR, Code
from hivemind_ratelimit.mesh.protocol import Timing
from hivemind_ratelimit.mesh.simnet import START, SimNetwork

DOMAIN = "d"
PREFIX = DOMAIN + KEY_SEPARATOR
LIMIT = 100
WINDOW_END = START + 60  # the first minute window of every simulation
TIMING = Timing(sync_interval=0.02, probe_interval=1.0, suspect_timeout=5.0, grace=2.0)

# `bounded` is the service default; `eventual` and `big` say so per rule.
RULES = f"""
domain: {DOMAIN}
descriptors:
  - key: bounded
    rate_limit: {{unit: minute, requests_per_unit: {LIMIT}}}
  - key: eventual
    rate_limit: {{unit: minute, requests_per_unit: {LIMIT}, consistency: eventual}}
  - key: big
    rate_limit: {{unit: hour, requests_per_unit: 1000000, consistency: eventual}}
"""

Pick = Callable[[random.Random], int]


def uniform(n: int) -> Pick:
    return lambda rng: rng.randrange(n)


def skewed(n: int, busy_share: float) -> Pick:
    """Node 0 gets `busy_share` of the requests, the others share the rest evenly."""
    return lambda rng: 0 if rng.random() < busy_share else 1 + rng.randrange(n - 1)


def drive(net: SimNetwork, key: str, rate: float, until: float, pick: Pick, value: str = "v") -> int:
    """Requests at `rate` per second (evenly spaced) on the nodes `pick` chooses, until
    `until`; returns how many were admitted."""
    admitted = 0
    step = 1.0 / rate
    while net.clock.now() + step < until:
        node = pick(net.rng)
        admitted += net.request(node, DOMAIN, [(key, value)]).overall is Code.OK
        net.run(step)
    return admitted
