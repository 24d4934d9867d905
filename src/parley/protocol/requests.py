"""Request bodies of the HTTP API, with the contract's bounds, and their decoding."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec

from parley.protocol import limits
from parley.protocol.errors import InvalidRequest, MalformedJSON, TooLarge

# \Z, not $: `$` also matches before a trailing newline.
Username = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_.\-]{3,32}\Z")]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=256)]
DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_DISPLAY_NAME_CHARS)]
DeviceName = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_DEVICE_NAME_CHARS)]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_TITLE_CHARS)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ClientMsgId = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_CLIENT_MSG_ID)]
# Bytes are checked after decoding (413), characters here: a body is never empty.
Body = Annotated[str, msgspec.Meta(min_length=1)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=limits.MAX_INT)]


class CreateAccount(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    username: Username
    password: Password
    display_name: DisplayName | None = None


class CreateSession(msgspec.Struct, kw_only=True):
    username: Annotated[str, msgspec.Meta(max_length=256)]
    password: Annotated[str, msgspec.Meta(max_length=256)]
    device_name: DeviceName | None = None


class CreateDirect(msgspec.Struct, kw_only=True, tag="direct", tag_field="type"):
    user_id: Id


class CreateGroup(msgspec.Struct, kw_only=True, tag="group", tag_field="type"):
    title: Title
    # Bounded here only against absurd bodies; the group size limit is the server's flag.
    member_ids: Annotated[list[Id], msgspec.Meta(max_length=10_000)] = []


CreateConversation = CreateDirect | CreateGroup


class SendMessage(msgspec.Struct, kw_only=True):
    client_msg_id: ClientMsgId
    body: Body


class MarkRead(msgspec.Struct, kw_only=True):
    seq: Seq


class AddMember(msgspec.Struct, kw_only=True):
    user_id: Id


class UpdateConversation(msgspec.Struct, kw_only=True):
    title: Title


T = TypeVar("T")


def decode_json(data: bytes | str) -> Any:
    """Parse JSON or raise `MalformedJSON` (400)."""
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedJSON(f"malformed JSON: {exc}") from exc
    except RecursionError:
        raise MalformedJSON("JSON nested too deeply") from None


def convert(raw: Any, type_: type[T]) -> T:
    """Validate parsed JSON against a request type or raise `InvalidRequest` (422)."""
    if not isinstance(raw, dict):
        raise InvalidRequest("expected a JSON object")
    try:
        return msgspec.convert(raw, type_)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc)) from exc


def decode_request(data: bytes, type_: type[T]) -> T:
    """Parse and validate one HTTP request body."""
    return convert(decode_json(data), type_)


def check_body_size(body: str) -> None:
    """Enforce the contract's 16 KiB limit on an encoded message body (413)."""
    # Cheap bound first: a str of n characters encodes to at most 4n bytes.
    if len(body) * 4 > limits.MAX_BODY_BYTES and len(body.encode()) > limits.MAX_BODY_BYTES:
        raise TooLarge(f"message body exceeds {limits.MAX_BODY_BYTES} bytes", code="body_too_large")
