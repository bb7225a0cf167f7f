"""Bounded consistency: how the remaining budget of a counter is split among nodes.

At each merge a node computes R = limit - global count and gives every live member a
share of R proportional to the demand it reported for that counter (equal shares when
nobody has reported demand yet). Shares are whole hits: floors first, then the units
left over go one each to the members with the largest fractional parts, ties broken
by a hash of (counter key, node id). Every node that holds the same view computes
the same split, so the shares never add up to more than R.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping


def _tiebreak(key: str, node: str) -> bytes:
    return hashlib.blake2b(f"{key}\0{node}".encode(), digest_size=8).digest()


def split(remaining: int, demands: Mapping[str, float], key: str) -> dict[str, int]:
    """Whole-hit shares of `remaining` for each member in `demands` (member -> demand)."""
    members = sorted(demands)
    if not members:
        return {}
    if remaining <= 0:
        return dict.fromkeys(members, 0)
    weights = {m: max(demands[m], 0.0) for m in members}
    total = sum(weights.values())
    if total <= 0.0:
        weights = dict.fromkeys(members, 1.0)
        total = float(len(members))
    raw = {m: remaining * weights[m] / total for m in members}
    shares = {m: math.floor(raw[m]) for m in members}
    leftover = remaining - sum(shares.values())
    if leftover > 0:
        order = sorted(members, key=lambda m: (-(raw[m] - shares[m]), _tiebreak(key, m)))
        for m in order[:leftover]:
            shares[m] += 1
    return shares


class ClusterView:
    """What the limiter knows of the cluster for bounded counters: who is live and
    how much demand each member reported per counter key.

    The mesh keeps it up to date; the limiter only reads it. With no live peers a
    node is alone and every budget is its own.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.members: set[str] = set()  # live peers (alive or suspect), never this node
        self.own_demand: dict[str, float] = {}  # key -> smoothed hits/s seen here
        self.peer_demand: dict[str, dict[str, float]] = {}  # key -> peer -> reported hits/s

    @property
    def active(self) -> bool:
        return bool(self.members)

    def demands(self, key: str) -> dict[str, float]:
        out = {self.node_id: self.own_demand.get(key, 0.0)}
        reported = self.peer_demand.get(key, {})
        for member in self.members:
            out[member] = reported.get(member, 0.0)
        return out

    def is_new(self, key: str) -> bool:
        """No member has reported demand for this key (it was idle for a whole window)."""
        if self.own_demand.get(key, 0.0) > 0.0:
            return False
        reported = self.peer_demand.get(key)
        return not reported or not any(reported.get(m, 0.0) > 0.0 for m in self.members)

    def allowance(self, key: str, remaining: int) -> int:
        return split(remaining, self.demands(key), key)[self.node_id]
