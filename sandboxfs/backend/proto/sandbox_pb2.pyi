from sandboxfs.backend.proto import remote_execution_pb2 as _remote_execution_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Retention(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETENTION_REUSE: _ClassVar[Retention]
    RETENTION_SINGLE_USE: _ClassVar[Retention]

class Version(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_1: _ClassVar[Version]
RETENTION_REUSE: Retention
RETENTION_SINGLE_USE: Retention
VERSION_1: Version

class Manifest(_message.Message):
    __slots__ = ("mnemonic", "exec_root", "hash_function", "input_root_digest", "outputs", "writable_dirs", "confinement_setting")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Output
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Output, _Mapping]] = ...) -> None: ...
    class WritableDirsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MNEMONIC_FIELD_NUMBER: _ClassVar[int]
    EXEC_ROOT_FIELD_NUMBER: _ClassVar[int]
    HASH_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_ROOT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    WRITABLE_DIRS_FIELD_NUMBER: _ClassVar[int]
    CONFINEMENT_SETTING_FIELD_NUMBER: _ClassVar[int]
    mnemonic: str
    exec_root: str
    hash_function: str
    input_root_digest: _remote_execution_pb2.Digest
    outputs: _containers.MessageMap[str, Output]
    writable_dirs: _containers.ScalarMap[str, str]
    confinement_setting: ConfinementSetting
    def __init__(self, mnemonic: _Optional[str] = ..., exec_root: _Optional[str] = ..., hash_function: _Optional[str] = ..., input_root_digest: _Optional[_Union[_remote_execution_pb2.Digest, _Mapping]] = ..., outputs: _Optional[_Mapping[str, Output]] = ..., writable_dirs: _Optional[_Mapping[str, str]] = ..., confinement_setting: _Optional[_Union[ConfinementSetting, _Mapping]] = ...) -> None: ...

class Output(_message.Message):
    __slots__ = ("type", "dest")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEST_FIELD_NUMBER: _ClassVar[int]
    type: str
    dest: str
    def __init__(self, type: _Optional[str] = ..., dest: _Optional[str] = ...) -> None: ...

class ConfinementSetting(_message.Message):
    __slots__ = ("writable_paths", "inaccessible_paths", "allow_network")
    WRITABLE_PATHS_FIELD_NUMBER: _ClassVar[int]
    INACCESSIBLE_PATHS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_NETWORK_FIELD_NUMBER: _ClassVar[int]
    writable_paths: _containers.RepeatedScalarFieldContainer[str]
    inaccessible_paths: _containers.RepeatedScalarFieldContainer[str]
    allow_network: bool
    def __init__(self, writable_paths: _Optional[_Iterable[str]] = ..., inaccessible_paths: _Optional[_Iterable[str]] = ..., allow_network: _Optional[bool] = ...) -> None: ...

class Create(_message.Message):
    __slots__ = ("manifest",)
    class Result(_message.Message):
        __slots__ = ("ok", "missing_content", "error")
        class Ok(_message.Message):
            __slots__ = ("path", "custom", "unconfined")
            PATH_FIELD_NUMBER: _ClassVar[int]
            CUSTOM_FIELD_NUMBER: _ClassVar[int]
            UNCONFINED_FIELD_NUMBER: _ClassVar[int]
            path: str
            custom: CustomConfinement
            unconfined: Unconfined
            def __init__(self, path: _Optional[str] = ..., custom: _Optional[_Union[CustomConfinement, _Mapping]] = ..., unconfined: _Optional[_Union[Unconfined, _Mapping]] = ...) -> None: ...
        class MissingContent(_message.Message):
            __slots__ = ("digest_hashes",)
            DIGEST_HASHES_FIELD_NUMBER: _ClassVar[int]
            digest_hashes: _containers.RepeatedScalarFieldContainer[str]
            def __init__(self, digest_hashes: _Optional[_Iterable[str]] = ...) -> None: ...
        OK_FIELD_NUMBER: _ClassVar[int]
        MISSING_CONTENT_FIELD_NUMBER: _ClassVar[int]
        ERROR_FIELD_NUMBER: _ClassVar[int]
        ok: Create.Result.Ok
        missing_content: Create.Result.MissingContent
        error: Error
        def __init__(self, ok: _Optional[_Union[Create.Result.Ok, _Mapping]] = ..., missing_content: _Optional[_Union[Create.Result.MissingContent, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    manifest: Manifest
    def __init__(self, manifest: _Optional[_Union[Manifest, _Mapping]] = ...) -> None: ...

class CustomConfinement(_message.Message):
    __slots__ = ("name", "wrapper", "env")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    WRAPPER_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    name: str
    wrapper: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., wrapper: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Unconfined(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Content(_message.Message):
    __slots__ = ("inline", "location", "retention")
    INLINE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    inline: bytes
    location: str
    retention: Retention
    def __init__(self, inline: _Optional[bytes] = ..., location: _Optional[str] = ..., retention: _Optional[_Union[Retention, str]] = ...) -> None: ...

class Push(_message.Message):
    __slots__ = ("blobs", "content")
    class BlobsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class ContentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Content
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Content, _Mapping]] = ...) -> None: ...
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    blobs: _containers.ScalarMap[str, bytes]
    content: _containers.MessageMap[str, Content]
    def __init__(self, blobs: _Optional[_Mapping[str, bytes]] = ..., content: _Optional[_Mapping[str, Content]] = ...) -> None: ...

class Destroy(_message.Message):
    __slots__ = ()
    class Result(_message.Message):
        __slots__ = ("ok", "error")
        class Ok(_message.Message):
            __slots__ = ()
            def __init__(self) -> None: ...
        OK_FIELD_NUMBER: _ClassVar[int]
        ERROR_FIELD_NUMBER: _ClassVar[int]
        ok: Destroy.Result.Ok
        error: Error
        def __init__(self, ok: _Optional[_Union[Destroy.Result.Ok, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
    def __init__(self) -> None: ...

class Collect(_message.Message):
    __slots__ = ("exec_root",)
    class Result(_message.Message):
        __slots__ = ("ok", "error")
        class Ok(_message.Message):
            __slots__ = ()
            def __init__(self) -> None: ...
        OK_FIELD_NUMBER: _ClassVar[int]
        ERROR_FIELD_NUMBER: _ClassVar[int]
        ok: Collect.Result.Ok
        error: Error
        def __init__(self, ok: _Optional[_Union[Collect.Result.Ok, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
    EXEC_ROOT_FIELD_NUMBER: _ClassVar[int]
    exec_root: str
    def __init__(self, exec_root: _Optional[str] = ...) -> None: ...

class Negotiate(_message.Message):
    __slots__ = ("options", "versions")
    class Result(_message.Message):
        __slots__ = ("ok", "error")
        class Ok(_message.Message):
            __slots__ = ("version",)
            VERSION_FIELD_NUMBER: _ClassVar[int]
            version: Version
            def __init__(self, version: _Optional[_Union[Version, str]] = ...) -> None: ...
        OK_FIELD_NUMBER: _ClassVar[int]
        ERROR_FIELD_NUMBER: _ClassVar[int]
        ok: Negotiate.Result.Ok
        error: Error
        def __init__(self, ok: _Optional[_Union[Negotiate.Result.Ok, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    options: _containers.RepeatedScalarFieldContainer[str]
    versions: _containers.RepeatedScalarFieldContainer[Version]
    def __init__(self, options: _Optional[_Iterable[str]] = ..., versions: _Optional[_Iterable[_Union[Version, str]]] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("rid", "sandbox_id", "create", "destroy", "collect", "negotiate", "push")
    RID_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_FIELD_NUMBER: _ClassVar[int]
    DESTROY_FIELD_NUMBER: _ClassVar[int]
    COLLECT_FIELD_NUMBER: _ClassVar[int]
    NEGOTIATE_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    rid: int
    sandbox_id: str
    create: Create
    destroy: Destroy
    collect: Collect
    negotiate: Negotiate
    push: Push
    def __init__(self, rid: _Optional[int] = ..., sandbox_id: _Optional[str] = ..., create: _Optional[_Union[Create, _Mapping]] = ..., destroy: _Optional[_Union[Destroy, _Mapping]] = ..., collect: _Optional[_Union[Collect, _Mapping]] = ..., negotiate: _Optional[_Union[Negotiate, _Mapping]] = ..., push: _Optional[_Union[Push, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("rid", "create", "destroy", "collect", "negotiate")
    RID_FIELD_NUMBER: _ClassVar[int]
    CREATE_FIELD_NUMBER: _ClassVar[int]
    DESTROY_FIELD_NUMBER: _ClassVar[int]
    COLLECT_FIELD_NUMBER: _ClassVar[int]
    NEGOTIATE_FIELD_NUMBER: _ClassVar[int]
    rid: int
    create: Create.Result
    destroy: Destroy.Result
    collect: Collect.Result
    negotiate: Negotiate.Result
    def __init__(self, rid: _Optional[int] = ..., create: _Optional[_Union[Create.Result, _Mapping]] = ..., destroy: _Optional[_Union[Destroy.Result, _Mapping]] = ..., collect: _Optional[_Union[Collect.Result, _Mapping]] = ..., negotiate: _Optional[_Union[Negotiate.Result, _Mapping]] = ...) -> None: ...
