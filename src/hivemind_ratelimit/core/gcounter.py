"""Grow-only counters (G-counters): a map slot -> count, merged by per-slot maximum.

A slot is one (node id, incarnation). Only the owner of a slot increments it; everyone
else learns it by merging. Merge is commutative, associative and idempotent, so
duplicated, lost-then-resent and reordered messages leave every replica with the same
state once each has seen the same messages. The global count is the sum over slots.
"""

from __future__ import annotations

from collections.abc import Mapping

Slot = str


def make_slot(node_id: str, incarnation: int) -> Slot:
    return f"{node_id}#{incarnation}"


def merge(a: Mapping[Slot, int], b: Mapping[Slot, int]) -> dict[Slot, int]:
    """The least upper bound of two slot maps."""
    out = dict(a)
    for slot, count in b.items():
        if count > out.get(slot, 0):
            out[slot] = count
    return out


def merge_into(target: dict[Slot, int], other: Mapping[Slot, int]) -> bool:
    """Merge `other` into `target` in place; True when `target` changed."""
    changed = False
    for slot, count in other.items():
        if count > target.get(slot, 0):
            target[slot] = count
            changed = True
    return changed


def total(slots: Mapping[Slot, int]) -> int:
    return sum(slots.values())
