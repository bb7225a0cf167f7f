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

from hivemind_ratelimit.core.clock import Clock
from hivemind_ratelimit.core.store import Counter

DEMAND_EPSILON = 0.01  # hits/s below which demand counts as none


def _tiebreak(key: str, node: str) -> bytes:
    return hashlib.blake2b(f"{key}\0{node}".encode(), digest_size=8).digest()


def split(remaining: int, demands: Mapping[str, float], key: str) -> dict[str, int]:
    """Whole-hit shares of `remaining` for each member in `demands` (member -> demand).

    Every member gets one hit while `remaining` allows it, the rest in proportion to
    demand; the shares always add up to exactly `remaining` (or 0 when it is spent).
    """
    members = sorted(demands)
    if not members:
        return {}
    if remaining <= 0:
        return dict.fromkeys(members, 0)
    # A floor of one hit each while the budget allows: demand estimated from sparse
    # traffic is noise, and a member with a tiny share would refuse hits the budget
    # still has room for. The rest is split by demand.
    base = 1 if remaining >= len(members) else 0
    rest = remaining - base * len(members)
    weights = {m: max(demands[m], 0.0) for m in members}
    total = sum(weights.values())
    if total <= 0.0:
        weights = dict.fromkeys(members, 1.0)
        total = float(len(members))
    raw = {m: rest * weights[m] / total for m in members}
    shares = {m: base + math.floor(raw[m]) for m in members}
    leftover = remaining - sum(shares.values())
    if leftover > 0:
        order = sorted(members, key=lambda m: (-(raw[m] - math.floor(raw[m])), _tiebreak(key, m)))
        for m in order[:leftover]:
            shares[m] += 1
    return shares


class ClusterView:
    """What the limiter knows of the cluster for bounded counters: who is live and
    how much demand each member has for each counter key.

    Demand is an exponentially decaying rate (hits per second): every report is a
    value and the time it was true, and every reader decays it by the time since, with
    the same half-life. So a node that stops seeing traffic need not send anything for
    its demand to fade, and the mesh only works on keys that saw traffic. With no live
    peers a node is alone and every budget is its own.
    """

    def __init__(self, node_id: str, clock: Clock, half_life: float = 0.04, lease: float = 0.06) -> None:
        self.node_id = node_id
        self.clock = clock
        self.half_life = half_life
        self.lease = lease  # how long an allowance may be spent before it is recomputed
        self.members: set[str] = set()  # live peers (alive or suspect), never this node
        # Live members we cannot hear from (suspect, or no stream): their demand is frozen
        # and their shares stay reserved until they are back or declared dead.
        self.unreachable: frozenset[str] = frozenset()
        self.unreachable_gen = 0
        self.own_demand: dict[str, tuple[float, float]] = {}  # key -> (hits/s, as of)
        self.peer_demand: dict[str, dict[str, tuple[float, float]]] = {}  # key -> peer -> (hits/s, as of)

    @property
    def active(self) -> bool:
        return bool(self.members)

    def _decayed(self, entry: tuple[float, float] | None, now: float) -> float:
        if entry is None:
            return 0.0
        rate, since = entry
        return float(rate * 0.5 ** (max(0.0, now - since) / self.half_life))

    def set_unreachable(self, members: frozenset[str]) -> None:
        if members != self.unreachable:
            self.unreachable = members
            self.unreachable_gen += 1

    def own(self, key: str) -> float:
        return self._decayed(self.own_demand.get(key), self.clock.now())

    def record(self, key: str, hits: int) -> float:
        """This node saw `hits` on `key` just now; returns its demand to report."""
        now = self.clock.now()
        # Each hit adds ln2/half_life to the rate, so a steady r hits/s settles at r.
        rate = self._decayed(self.own_demand.get(key), now) + hits * math.log(2) / self.half_life
        self.own_demand[key] = (rate, now)
        return rate

    def reported(self, key: str, peer: str, rate: float) -> None:
        """`peer` reported its demand for `key` (as of now, in our clock)."""
        table = self.peer_demand.get(key)
        if rate > DEMAND_EPSILON:
            if table is None:
                table = self.peer_demand[key] = {}
            table[peer] = (rate, self.clock.now())
        elif table is not None:
            table.pop(peer, None)
            if not table:
                del self.peer_demand[key]

    def demands(self, key: str) -> dict[str, float]:
        now = self.clock.now()
        out = {self.node_id: self._decayed(self.own_demand.get(key), now)}
        reported = self.peer_demand.get(key, {})
        unreachable = self.unreachable
        for member in self.members:
            entry = reported.get(member)
            if member in unreachable:
                out[member] = entry[0] if entry is not None else 0.0  # frozen, not faded
            else:
                out[member] = self._decayed(entry, now)
        return out

    def is_new(self, key: str) -> bool:
        """No live member has demand for this key (it has been idle a long while)."""
        return all(d <= DEMAND_EPSILON for d in self.demands(key).values())

    def allowance(self, key: str, remaining: int) -> int:
        return split(remaining, self.demands(key), key)[self.node_id]

    def allowance_for(self, counter: Counter, remaining: int) -> int:
        """This node's allowance on `counter`: its share, within the budget nobody holds.

        The share is this node's part of the split of everything left (so the shares of
        nodes that share a view add up to at most the remainder). An allowance is also a
        lease: its holder may spend it for `lease` seconds and reports what is left of
        it with its deltas, and peers keep that much aside for as long (`counter.leases`).
        The share is capped by the budget that no peer holds, so a node never takes hits
        another node may still be spending — which re-splitting the whole remainder at
        every merge, on views a sync interval apart, would do.

        While some members are unreachable, their shares of the budget as it stood when
        this counter first noticed are set aside once (`counter.reserved`), and only the
        rest is split among the members we hear from.
        """
        now = self.clock.now()
        mesh = counter.mesh_state()
        mesh.lease_until = now + self.lease
        held = 0
        leases = mesh.leases
        if leases:
            for slot, (unspent, until) in list(leases.items()):
                if until > now:
                    held += unspent
                else:
                    del leases[slot]
        if not self.unreachable:
            share = self.allowance(counter.key, remaining)
        else:
            demands = self.demands(counter.key)
            if mesh.reserve_gen != self.unreachable_gen:
                shares = split(remaining, demands, counter.key)
                mesh.reserved = sum(shares[m] for m in self.unreachable if m in shares)
                mesh.reserve_gen = self.unreachable_gen
            reachable = {m: d for m, d in demands.items() if m not in self.unreachable}
            share = split(remaining - mesh.reserved, reachable, counter.key)[self.node_id]
        return max(0, min(share, remaining - held))

    def forget_idle(self) -> int:
        """Drop demand that has faded; returns how many entries went."""
        now = self.clock.now()
        dropped = 0
        for key in [k for k, e in self.own_demand.items() if self._decayed(e, now) <= DEMAND_EPSILON]:
            del self.own_demand[key]
            dropped += 1
        for key, table in list(self.peer_demand.items()):
            for peer in [p for p, e in table.items() if self._decayed(e, now) <= DEMAND_EPSILON]:
                del table[peer]
                dropped += 1
            if not table:
                del self.peer_demand[key]
        return dropped
