from protos import auth_pb2 as _auth_pb2
from protos import kv_pb2 as _kv_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SnapshotHeader(_message.Message):
    __slots__ = ("revision", "compacted", "history_limit", "keys", "leases", "events", "users", "roles", "auth_enabled")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    COMPACTED_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    AUTH_ENABLED_FIELD_NUMBER: _ClassVar[int]
    revision: int
    compacted: int
    history_limit: int
    keys: int
    leases: int
    events: int
    users: int
    roles: int
    auth_enabled: bool
    def __init__(self, revision: _Optional[int] = ..., compacted: _Optional[int] = ..., history_limit: _Optional[int] = ..., keys: _Optional[int] = ..., leases: _Optional[int] = ..., events: _Optional[int] = ..., users: _Optional[int] = ..., roles: _Optional[int] = ..., auth_enabled: _Optional[bool] = ...) -> None: ...

class SnapshotLease(_message.Message):
    __slots__ = ("id", "ttl")
    ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    id: int
    ttl: int
    def __init__(self, id: _Optional[int] = ..., ttl: _Optional[int] = ...) -> None: ...

class SnapshotRecord(_message.Message):
    __slots__ = ("header", "kv", "lease", "event", "user", "role")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    header: SnapshotHeader
    kv: _kv_pb2.KeyValue
    lease: SnapshotLease
    event: _kv_pb2.Event
    user: _auth_pb2.User
    role: _auth_pb2.Role
    def __init__(self, header: _Optional[_Union[SnapshotHeader, _Mapping]] = ..., kv: _Optional[_Union[_kv_pb2.KeyValue, _Mapping]] = ..., lease: _Optional[_Union[SnapshotLease, _Mapping]] = ..., event: _Optional[_Union[_kv_pb2.Event, _Mapping]] = ..., user: _Optional[_Union[_auth_pb2.User, _Mapping]] = ..., role: _Optional[_Union[_auth_pb2.Role, _Mapping]] = ...) -> None: ...
