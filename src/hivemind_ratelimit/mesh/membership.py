"""Member states, in the style of SWIM: alive -> suspect -> dead, or left.

Every member has an incarnation number. News about a member wins over what we know
when it is about a newer incarnation, or about the same incarnation and is worse:

    alive   i  overrides  alive j<i, suspect j<i, dead j<i, left j<i   (a restart or a refutation)
    suspect i  overrides  alive j<=i, suspect j<i
    dead    i  overrides  alive j<=i, suspect j<=i
    left    i  overrides  anything with j<=i

A node that hears it is suspected (or declared dead) refutes by raising its own
incarnation above the rumour's and announcing itself alive. A suspect that nobody
refutes within `suspect_timeout` is declared dead. Transitions are returned as
Change values and queued as gossip; the protocol core sends them to every peer.
Nothing here reads a clock or opens a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class State(IntEnum):
    """Values match hivemind.mesh.v1.MemberState."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


# (new state, known state) -> does news with incarnation i win over known j when i == j?
_SAME_INCARNATION_WINS: dict[tuple[State, State], bool] = {
    (State.SUSPECT, State.ALIVE): True,
    (State.DEAD, State.ALIVE): True,
    (State.DEAD, State.SUSPECT): True,
    (State.LEFT, State.ALIVE): True,
    (State.LEFT, State.SUSPECT): True,
    (State.LEFT, State.DEAD): True,
}

LIVE = (State.ALIVE, State.SUSPECT)


@dataclass(slots=True)
class Member:
    node_id: str
    incarnation: int
    address: str
    state: State = State.ALIVE
    state_since: float = 0.0
    last_heard: float = 0.0
    rtt: float | None = None  # seconds, from the last answered probe
    clock_offset: float | None = None  # seconds the peer's clock is ahead of ours


@dataclass(frozen=True, slots=True)
class Change:
    node_id: str
    incarnation: int
    address: str
    state: State
    previous: State | None  # None: a member we did not know


@dataclass
class Membership:
    node_id: str
    incarnation: int
    address: str
    suspect_timeout: float
    # Dead and departed members are forgotten this long after they went, so a cluster
    # whose pods restart with new ids does not keep (and redial) every one it ever saw.
    forget_after: float = 600.0
    members: dict[str, Member] = field(default_factory=dict)
    gossip: list[Change] = field(default_factory=list)  # to be sent to every peer

    # -- reading ---------------------------------------------------------------------

    def live(self) -> list[str]:
        return sorted(m.node_id for m in self.members.values() if m.state in LIVE)

    def state_of(self, node_id: str) -> State | None:
        member = self.members.get(node_id)
        return member.state if member else None

    def me(self) -> Change:
        return Change(self.node_id, self.incarnation, self.address, State.ALIVE, State.ALIVE)

    def snapshot(self) -> list[Change]:
        """Everything we know, ourselves included, for a new peer."""
        out = [self.me()]
        out.extend(
            Change(m.node_id, m.incarnation, m.address, m.state, m.state) for m in self.members.values()
        )
        return out

    def drain_gossip(self) -> list[Change]:
        out, self.gossip = self.gossip, []
        return out

    # -- events ----------------------------------------------------------------------

    def heard_from(self, node_id: str, incarnation: int, address: str, now: float) -> Change | None:
        """Direct contact (a handshake or any message on its stream): it is alive."""
        member = self.members.get(node_id)
        if member is not None and incarnation >= member.incarnation:
            member.last_heard = now
            if address:
                member.address = address
        return self.apply(node_id, incarnation, address, State.ALIVE, now)

    def apply(self, node_id: str, incarnation: int, address: str, state: State, now: float) -> Change | None:
        """News about a member (gossip or our own observation); returns the change, if any."""
        if node_id == self.node_id:
            return self._about_me(incarnation, state)
        member = self.members.get(node_id)
        if member is None:
            member = Member(node_id, incarnation, address, state, state_since=now, last_heard=now)
            self.members[node_id] = member
            return self._changed(member, None)
        wins = incarnation > member.incarnation or (
            incarnation == member.incarnation and _SAME_INCARNATION_WINS.get((state, member.state), False)
        )
        if not wins:
            return None
        previous = member.state
        member.incarnation = incarnation
        if address:
            member.address = address
        if state == previous:
            return None  # a newer incarnation in the same state: nothing to tell
        member.state = state
        member.state_since = now
        return self._changed(member, previous)

    def suspect(self, node_id: str, now: float) -> Change | None:
        """Our probe of `node_id` failed, directly and indirectly."""
        member = self.members.get(node_id)
        if member is None or member.state is not State.ALIVE:
            return None
        return self.apply(node_id, member.incarnation, "", State.SUSPECT, now)

    def tick(self, now: float) -> list[Change]:
        """Suspects nobody refuted within suspect_timeout are declared dead; members dead
        or gone for `forget_after` are forgotten."""
        out = []
        for member in list(self.members.values()):
            if member.state is State.SUSPECT and now - member.state_since >= self.suspect_timeout:
                change = self.apply(member.node_id, member.incarnation, "", State.DEAD, now)
                if change is not None:
                    out.append(change)
            elif member.state in (State.DEAD, State.LEFT) and now - member.state_since >= self.forget_after:
                del self.members[member.node_id]
        return out

    def leave(self) -> Change:
        change = Change(self.node_id, self.incarnation, self.address, State.LEFT, State.ALIVE)
        self.gossip.append(change)
        return change

    # -- helpers -----------------------------------------------------------------------

    def _about_me(self, incarnation: int, state: State) -> Change | None:
        if state in (State.SUSPECT, State.DEAD) and incarnation >= self.incarnation:
            self.incarnation = incarnation + 1  # refute
            change = Change(self.node_id, self.incarnation, self.address, State.ALIVE, state)
            self.gossip.append(change)
            return change
        return None

    def _changed(self, member: Member, previous: State | None) -> Change:
        change = Change(member.node_id, member.incarnation, member.address, member.state, previous)
        self.gossip.append(change)
        return change
