"""SWIM member states (mesh/membership.py): transitions and the precedence of news."""

from __future__ import annotations

import itertools

import pytest

from hivemind_ratelimit.mesh.membership import Change, Membership, State

ALIVE, SUSPECT, DEAD, LEFT = State.ALIVE, State.SUSPECT, State.DEAD, State.LEFT
TIMEOUT = 5.0


def view(node_id: str = "me", incarnation: int = 10) -> Membership:
    return Membership(node_id, incarnation, f"{node_id}:7946", TIMEOUT)


def test_a_new_member_joins_alive_and_is_gossiped() -> None:
    m = view()
    change = m.apply("b", 3, "b:7946", ALIVE, now=1.0)
    assert change == Change("b", 3, "b:7946", ALIVE, None)
    assert m.live() == ["b"]
    assert m.members["b"].state_since == 1.0
    assert m.drain_gossip() == [change]
    assert m.drain_gossip() == []


def test_heard_from_refreshes_last_heard_and_address_without_news() -> None:
    m = view()
    m.apply("b", 3, "old:1", ALIVE, now=1.0)
    m.drain_gossip()
    assert m.heard_from("b", 3, "new:2", now=7.0) is None
    member = m.members["b"]
    assert (member.last_heard, member.address, member.state) == (7.0, "new:2", ALIVE)
    assert m.drain_gossip() == []


def test_a_failed_probe_suspects_only_alive_members() -> None:
    m = view()
    m.apply("b", 3, "b", ALIVE, 0.0)
    change = m.suspect("b", now=2.0)
    assert change is not None and (change.state, change.previous) == (SUSPECT, ALIVE)
    assert m.live() == ["b"]  # a suspect still counts as live (keeps its share)
    assert m.suspect("b", now=3.0) is None  # already suspect
    assert m.suspect("nobody", now=3.0) is None


def test_a_suspect_is_declared_dead_after_the_suspect_timeout() -> None:
    m = view()
    m.apply("b", 3, "b", ALIVE, 0.0)
    m.suspect("b", now=2.0)
    assert m.tick(2.0 + TIMEOUT - 0.001) == []
    [change] = m.tick(2.0 + TIMEOUT)
    assert (change.node_id, change.state, change.previous, change.incarnation) == ("b", DEAD, SUSPECT, 3)
    assert m.live() == []
    assert m.tick(100.0) == []  # once


def test_the_suspected_node_refutes_with_a_higher_incarnation() -> None:
    b = view("b", incarnation=3)
    other = view("other")
    other.apply("b", 3, "b", ALIVE, 0.0)
    rumour = other.suspect("b", now=1.0)
    assert rumour is not None
    # b hears the rumour about itself and refutes it.
    refutation = b.apply(rumour.node_id, rumour.incarnation, "", rumour.state, now=1.1)
    assert refutation is not None
    assert (refutation.state, refutation.incarnation, refutation.previous) == (ALIVE, 4, SUSPECT)
    assert b.incarnation == 4
    assert b.drain_gossip() == [refutation]
    # The refutation overrides the suspicion everywhere, and the timeout no longer applies.
    change = other.apply("b", 4, "", ALIVE, now=1.2)
    assert change is not None and (change.state, change.previous) == (ALIVE, SUSPECT)
    assert other.tick(1.0 + TIMEOUT) == []
    assert other.live() == ["b"]


def test_a_node_declared_dead_refutes_too_but_old_rumours_about_it_are_ignored() -> None:
    b = view("b", incarnation=3)
    change = b.apply("b", 3, "", DEAD, now=1.0)
    assert change is not None and b.incarnation == 4
    assert b.apply("b", 3, "", SUSPECT, now=1.1) is None  # about an older incarnation
    assert b.apply("b", 4, "", ALIVE, now=1.1) is None  # alive news about itself: nothing to do
    assert b.incarnation == 4


def test_leave_is_announced_and_overrides_the_same_incarnation() -> None:
    b = view("b", incarnation=3)
    announcement = b.leave()
    assert (announcement.state, announcement.incarnation) == (LEFT, 3)
    assert b.drain_gossip() == [announcement]
    other = view("other")
    other.apply("b", 3, "b", ALIVE, 0.0)
    change = other.apply("b", 3, "", LEFT, now=1.0)
    assert change is not None and (change.state, change.previous) == (LEFT, ALIVE)
    assert other.live() == []
    assert other.apply("b", 3, "", ALIVE, now=2.0) is None  # a late message from before it left
    assert other.tick(100.0) == []  # a member that left is never "declared dead"


@pytest.mark.parametrize("gone", [DEAD, LEFT])
def test_a_restarted_member_rejoins_with_a_higher_incarnation(gone: State) -> None:
    m = view()
    m.apply("b", 3, "b", ALIVE, 0.0)
    m.apply("b", 3, "", gone, 1.0)
    change = m.apply("b", 4, "b2", ALIVE, now=9.0)
    assert change is not None and (change.state, change.previous, change.incarnation) == (ALIVE, gone, 4)
    assert (m.members["b"].address, m.members["b"].state_since) == ("b2", 9.0)
    assert m.live() == ["b"]


def test_stale_news_is_ignored() -> None:
    m = view()
    m.apply("b", 5, "b", ALIVE, 0.0)
    m.drain_gossip()
    for state in State:
        assert m.apply("b", 4, "", state, now=1.0) is None
    assert (m.members["b"].state, m.members["b"].incarnation) == (ALIVE, 5)
    assert m.drain_gossip() == []


def test_a_snapshot_carries_this_node_and_everything_it_knows() -> None:
    m = view()
    m.apply("b", 3, "b", ALIVE, 0.0)
    m.apply("c", 1, "c", ALIVE, 0.0)
    m.suspect("c", 1.0)
    snapshot = {(c.node_id, c.incarnation, c.state) for c in m.snapshot()}
    assert snapshot == {("me", 10, ALIVE), ("b", 3, ALIVE), ("c", 1, SUSPECT)}


# The precedence table from the module's docstring, written out independently:
# news (state, incarnation i) about a member known as (state, j) wins when i > j, or
# when i == j and the news is worse.
WORSE_AT_SAME_INCARNATION = {
    (SUSPECT, ALIVE),
    (DEAD, ALIVE),
    (DEAD, SUSPECT),
    (LEFT, ALIVE),
    (LEFT, SUSPECT),
    (LEFT, DEAD),
}


@pytest.mark.parametrize(("news", "known", "delta"), list(itertools.product(State, State, (-1, 0, 1))))
def test_precedence_table(news: State, known: State, delta: int) -> None:
    m = view()
    m.apply("b", 5, "b", ALIVE, 0.0)
    if known is not ALIVE:
        m.apply("b", 5, "", known, 0.0)
    assert (m.members["b"].state, m.members["b"].incarnation) == (known, 5)
    m.drain_gossip()
    change = m.apply("b", 5 + delta, "", news, now=1.0)
    wins = delta > 0 or (delta == 0 and (news, known) in WORSE_AT_SAME_INCARNATION)
    member = m.members["b"]
    if wins:
        assert (member.state, member.incarnation) == (news, 5 + delta)
        assert (change is not None) == (news is not known)  # same state: nothing to tell
        if change is not None:
            assert m.drain_gossip() == [change]
    else:
        assert change is None
        assert (member.state, member.incarnation) == (known, 5)
        assert m.drain_gossip() == []


def test_dead_and_departed_members_are_forgotten_after_a_while() -> None:
    m = Membership("me", 1, "me:1", suspect_timeout=5.0, forget_after=60.0)
    m.apply("dead", 1, "d:1", State.ALIVE, 0.0)
    m.apply("gone", 1, "g:1", State.ALIVE, 0.0)
    m.suspect("dead", 1.0)
    m.tick(6.0)
    m.apply("gone", 1, "", State.LEFT, 6.0)
    assert m.state_of("dead") is State.DEAD and m.state_of("gone") is State.LEFT
    m.tick(65.0)
    assert m.state_of("dead") is State.DEAD  # 59 s after it died
    m.tick(66.0)
    assert m.state_of("dead") is None and m.state_of("gone") is None
    # A restart comes back as a new member.
    m.heard_from("dead", 2, "d:1", 70.0)
    assert m.state_of("dead") is State.ALIVE
