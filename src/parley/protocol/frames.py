"""WebSocket frames: what a client may send, what the server answers.

`parse_client_frame` turns the bytes of one text message into a typed frame or
raises a `ParleyError` whose code goes into the `error` frame; the connection
stays open either way.
"""

from __future__ import annotations

from typing import Any

import msgspec

from parley.protocol.errors import InvalidRequest, UnknownFrameType
from parley.protocol.models import PresenceEvent
from parley.protocol.requests import (
    Body,
    ClientMsgId,
    Id,
    Seq,
    check_body_size,
    convert,
    decode_json,
)

# --- client -> server -------------------------------------------------------


class AuthFrame(msgspec.Struct, kw_only=True, tag="auth", tag_field="type"):
    token: str


class SyncFrame(msgspec.Struct, kw_only=True, tag="sync", tag_field="type"):
    since: Seq


class SendFrame(msgspec.Struct, kw_only=True, tag="send", tag_field="type"):
    conversation_id: Id
    client_msg_id: ClientMsgId
    body: Body


class DeliveredFrame(msgspec.Struct, kw_only=True, tag="delivered", tag_field="type"):
    conversation_id: Id
    seq: Seq


class ReadFrame(msgspec.Struct, kw_only=True, tag="read", tag_field="type"):
    conversation_id: Id
    seq: Seq


class TypingFrame(msgspec.Struct, kw_only=True, tag="typing", tag_field="type"):
    conversation_id: Id


class PingFrame(msgspec.Struct, kw_only=True, tag="ping", tag_field="type"):
    pass


ClientFrame = (
    AuthFrame | SyncFrame | SendFrame | DeliveredFrame | ReadFrame | TypingFrame | PingFrame
)

_FRAME_TYPES: dict[str, type[Any]] = {
    "auth": AuthFrame,
    "sync": SyncFrame,
    "send": SendFrame,
    "delivered": DeliveredFrame,
    "read": ReadFrame,
    "typing": TypingFrame,
    "ping": PingFrame,
}


def frame_ref(raw: Any) -> str | None:
    """The `client_msg_id` of a parsed frame, echoed as `ref` in an error frame."""
    if isinstance(raw, dict):
        ref = raw.get("client_msg_id")
        if isinstance(ref, str):
            return ref
    return None


def parse_client_frame(raw: Any) -> ClientFrame:
    """Validate one decoded client frame; raises `ParleyError` with the reason."""
    if not isinstance(raw, dict):
        raise InvalidRequest("a frame must be a JSON object")
    kind = raw.get("type")
    frame_type = _FRAME_TYPES.get(kind) if isinstance(kind, str) else None
    if frame_type is None:
        raise UnknownFrameType(f"unknown frame type: {kind!r}")
    frame: ClientFrame = convert(raw, frame_type)
    if isinstance(frame, SendFrame):
        check_body_size(frame.body)
    return frame


# --- server -> client -------------------------------------------------------


class ReadyFrame(msgspec.Struct, kw_only=True, tag="ready", tag_field="type"):
    user_id: str
    device_id: str
    cursor: int


class AckFrame(msgspec.Struct, kw_only=True, tag="ack", tag_field="type", omit_defaults=True):
    client_msg_id: str
    conversation_id: str
    seq: int
    message_id: str
    sent_at: int
    #: Addition to the contract: present when the conversation is direct and the
    #: peer has no device online, so the client can show "sent, not delivered".
    peer_presence: PresenceEvent | None = None


class ErrorFrame(msgspec.Struct, kw_only=True, tag="error", tag_field="type"):
    code: str
    message: str
    ref: str | None = None


class PongFrame(msgspec.Struct, kw_only=True, tag="pong", tag_field="type"):
    pass


# Close codes used by the server (contract: 4401, 4408, 4429, 1009).
CLOSE_UNAUTHORIZED = 4401
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_RATE_LIMITED = 4429
#: The client reads too slowly and its outbound queue overflowed; it should
#: reconnect with `?since=` and lose nothing.
CLOSE_TOO_SLOW = 4008
#: The server is shutting down; reconnect (to this node or another).
CLOSE_GOING_AWAY = 1001

__all__ = [
    "AckFrame",
    "AuthFrame",
    "Body",
    "ClientFrame",
    "DeliveredFrame",
    "ErrorFrame",
    "PingFrame",
    "PongFrame",
    "ReadFrame",
    "ReadyFrame",
    "SendFrame",
    "SyncFrame",
    "TypingFrame",
    "decode_json",
    "frame_ref",
    "parse_client_frame",
]
