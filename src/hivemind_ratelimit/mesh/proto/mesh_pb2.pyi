from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MemberState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMBER_STATE_ALIVE: _ClassVar[MemberState]
    MEMBER_STATE_SUSPECT: _ClassVar[MemberState]
    MEMBER_STATE_DEAD: _ClassVar[MemberState]
    MEMBER_STATE_LEFT: _ClassVar[MemberState]
MEMBER_STATE_ALIVE: MemberState
MEMBER_STATE_SUSPECT: MemberState
MEMBER_STATE_DEAD: MemberState
MEMBER_STATE_LEFT: MemberState

class Member(_message.Message):
    __slots__ = ("node_id", "incarnation", "address", "state")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    incarnation: int
    address: str
    state: MemberState
    def __init__(self, node_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., address: _Optional[str] = ..., state: _Optional[_Union[MemberState, str]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node_id", "incarnation", "address", "protocol_version", "nonce", "proof", "secret_set", "members")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    SECRET_SET_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    incarnation: int
    address: str
    protocol_version: int
    nonce: bytes
    proof: bytes
    secret_set: bool
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, node_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., address: _Optional[str] = ..., protocol_version: _Optional[int] = ..., nonce: _Optional[bytes] = ..., proof: _Optional[bytes] = ..., secret_set: _Optional[bool] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class Auth(_message.Message):
    __slots__ = ("proof",)
    PROOF_FIELD_NUMBER: _ClassVar[int]
    proof: bytes
    def __init__(self, proof: _Optional[bytes] = ...) -> None: ...

class Slot(_message.Message):
    __slots__ = ("id", "count")
    ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    id: str
    count: int
    def __init__(self, id: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class CounterState(_message.Message):
    __slots__ = ("key", "window_start", "length", "slots", "demand", "retain_windows", "admitted", "limit")
    KEY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    RETAIN_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    key: str
    window_start: int
    length: int
    slots: _containers.RepeatedCompositeFieldContainer[Slot]
    demand: float
    retain_windows: int
    admitted: _containers.RepeatedCompositeFieldContainer[Slot]
    limit: int
    def __init__(self, key: _Optional[str] = ..., window_start: _Optional[int] = ..., length: _Optional[int] = ..., slots: _Optional[_Iterable[_Union[Slot, _Mapping]]] = ..., demand: _Optional[float] = ..., retain_windows: _Optional[int] = ..., admitted: _Optional[_Iterable[_Union[Slot, _Mapping]]] = ..., limit: _Optional[int] = ...) -> None: ...

class Deltas(_message.Message):
    __slots__ = ("slot", "keys", "window_starts", "lengths", "counts", "admitted", "demands", "limits", "retain_windows", "unspent")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_STARTS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    DEMANDS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    RETAIN_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    UNSPENT_FIELD_NUMBER: _ClassVar[int]
    slot: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    window_starts: _containers.RepeatedScalarFieldContainer[int]
    lengths: _containers.RepeatedScalarFieldContainer[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    admitted: _containers.RepeatedScalarFieldContainer[int]
    demands: _containers.RepeatedScalarFieldContainer[float]
    limits: _containers.RepeatedScalarFieldContainer[int]
    retain_windows: _containers.RepeatedScalarFieldContainer[int]
    unspent: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, slot: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., window_starts: _Optional[_Iterable[int]] = ..., lengths: _Optional[_Iterable[int]] = ..., counts: _Optional[_Iterable[int]] = ..., admitted: _Optional[_Iterable[int]] = ..., demands: _Optional[_Iterable[float]] = ..., limits: _Optional[_Iterable[int]] = ..., retain_windows: _Optional[_Iterable[int]] = ..., unspent: _Optional[_Iterable[int]] = ...) -> None: ...

class Sync(_message.Message):
    __slots__ = ("counters", "members", "sent_unix_ns", "deltas")
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    counters: _containers.RepeatedCompositeFieldContainer[CounterState]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    sent_unix_ns: int
    deltas: Deltas
    def __init__(self, counters: _Optional[_Iterable[_Union[CounterState, _Mapping]]] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., sent_unix_ns: _Optional[int] = ..., deltas: _Optional[_Union[Deltas, _Mapping]] = ...) -> None: ...

class FullState(_message.Message):
    __slots__ = ("counters", "members", "last")
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    counters: _containers.RepeatedCompositeFieldContainer[CounterState]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    last: bool
    def __init__(self, counters: _Optional[_Iterable[_Union[CounterState, _Mapping]]] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., last: _Optional[bool] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("seq", "sent_unix_ns", "origin")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    seq: int
    sent_unix_ns: int
    origin: str
    def __init__(self, seq: _Optional[int] = ..., sent_unix_ns: _Optional[int] = ..., origin: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq", "ping_sent_unix_ns", "acker_unix_ns", "acker", "origin")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PING_SENT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    ACKER_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    ACKER_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ping_sent_unix_ns: int
    acker_unix_ns: int
    acker: str
    origin: str
    def __init__(self, seq: _Optional[int] = ..., ping_sent_unix_ns: _Optional[int] = ..., acker_unix_ns: _Optional[int] = ..., acker: _Optional[str] = ..., origin: _Optional[str] = ...) -> None: ...

class PingReq(_message.Message):
    __slots__ = ("seq", "target")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    seq: int
    target: str
    def __init__(self, seq: _Optional[int] = ..., target: _Optional[str] = ...) -> None: ...

class Leave(_message.Message):
    __slots__ = ("node_id", "incarnation")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    incarnation: int
    def __init__(self, node_id: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("hello", "auth", "sync", "full_state", "ping", "ack", "ping_req", "leave")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    FULL_STATE_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    PING_REQ_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    auth: Auth
    sync: Sync
    full_state: FullState
    ping: Ping
    ack: Ack
    ping_req: PingReq
    leave: Leave
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ..., sync: _Optional[_Union[Sync, _Mapping]] = ..., full_state: _Optional[_Union[FullState, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., ping_req: _Optional[_Union[PingReq, _Mapping]] = ..., leave: _Optional[_Union[Leave, _Mapping]] = ...) -> None: ...
