"""A peer whose clock is more than a second off is logged as a warning, once a minute."""

from __future__ import annotations

import logging
import random

import pytest

from hivemind_ratelimit.core.allowance import ClusterView
from hivemind_ratelimit.core.clock import ManualClock
from hivemind_ratelimit.core.store import CounterStore
from hivemind_ratelimit.mesh.membership import State
from hivemind_ratelimit.mesh.protocol import MeshCore, Timing
from hivemind_ratelimit.mesh.transport import MeshTransport
from hivemind_ratelimit.settings import MeshSettings


def test_a_peer_clock_off_by_more_than_a_second_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    core = MeshCore(
        node_id="me",
        boot=1,
        address="127.0.0.1:1",
        store=CounterStore(100),
        cluster=ClusterView("me", clock),
        timing=Timing(),
        rng=random.Random(0),
    )
    for peer, offset in (("fast", 2.5), ("fine", 0.2)):
        core.membership.apply(peer, 1, f"{peer}:1", State.ALIVE, clock.now())
        core.membership.members[peer].clock_offset = offset
    transport = MeshTransport(core, MeshSettings(), clock)
    with caplog.at_level(logging.WARNING, logger="hivemind.mesh"):
        transport._check_clocks(clock.now())
        transport._check_clocks(clock.now() + 30)  # within the minute: said once
        transport._check_clocks(clock.now() + 61)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert all("fast" in w and "+2.500 s" in w for w in warnings)
