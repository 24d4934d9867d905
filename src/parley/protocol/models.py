"""Objects the server sends: users, messages, conversations and events.

They are msgspec Structs so that encoding is fast and the OpenAPI schema is
generated from the same definitions the server encodes.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class User(msgspec.Struct, kw_only=True):
    user_id: str
    username: str
    display_name: str


class Session(msgspec.Struct, kw_only=True):
    token: str
    user_id: str
    device_id: str


class Message(msgspec.Struct, kw_only=True):
    conversation_id: str
    seq: int
    message_id: str
    sender_id: str
    client_msg_id: str
    body: str
    sent_at: int


class Member(msgspec.Struct, kw_only=True):
    user_id: str
    role: Literal["admin", "member"]
    delivered_seq: int
    read_seq: int


class Conversation(msgspec.Struct, kw_only=True):
    conversation_id: str
    type: Literal["direct", "group"]
    title: str | None
    created_at: int
    members: list[Member]
    last_seq: int
    last_message: Message | None
    unread: int


class MessageEvent(msgspec.Struct, kw_only=True, tag="message", tag_field="type"):
    cursor: int
    message: Message


class ReceiptEvent(msgspec.Struct, kw_only=True, tag="receipt", tag_field="type"):
    cursor: int
    conversation_id: str
    user_id: str
    status: Literal["delivered", "read"]
    seq: int


class ConversationEvent(msgspec.Struct, kw_only=True, tag="conversation", tag_field="type"):
    cursor: int
    conversation: Conversation


class PresenceEvent(msgspec.Struct, kw_only=True, tag="presence", tag_field="type"):
    user_id: str
    status: Literal["online", "offline", "unknown"]
    last_seen: int | None


class TypingEvent(msgspec.Struct, kw_only=True, tag="typing", tag_field="type"):
    conversation_id: str
    user_id: str


#: Events that carry a cursor and are replayed from the durable log.
LoggedEvent = MessageEvent | ReceiptEvent | ConversationEvent
#: Everything a client may receive as an event.
Event = LoggedEvent | PresenceEvent | TypingEvent


class EventsPage(msgspec.Struct, kw_only=True):
    events: list[Event]
    next: int


class MessagesPage(msgspec.Struct, kw_only=True):
    messages: list[Message]
    has_more: bool


class ConversationList(msgspec.Struct, kw_only=True):
    conversations: list[Conversation]


class SendResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    message: Message
    #: As in the WebSocket ack: the offline peer of a direct conversation.
    peer_presence: PresenceEvent | None = None


class PresenceStatus(msgspec.Struct, kw_only=True):
    status: Literal["online", "offline", "unknown"]
    last_seen: int | None


class PresenceMap(msgspec.Struct, kw_only=True):
    presence: dict[str, PresenceStatus]


class Contact(msgspec.Struct, kw_only=True):
    user_id: str
    username: str
    display_name: str
    presence: PresenceStatus


class ContactList(msgspec.Struct, kw_only=True):
    contacts: list[Contact]


class ErrorBody(msgspec.Struct, kw_only=True):
    code: str
    message: str


class ErrorResponse(msgspec.Struct, kw_only=True):
    error: ErrorBody


class Health(msgspec.Struct, kw_only=True):
    status: str
