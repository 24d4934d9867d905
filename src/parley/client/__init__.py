"""Async Python SDK for Parley: `ParleyClient` and the types it hands out."""

from parley.client.client import (
    DEFAULT_SERVER,
    ClientClosed,
    ClientEvent,
    Connected,
    Disconnected,
    ParleyClient,
    Resync,
    SessionRevoked,
    error_from_response,
    new_client_msg_id,
)
from parley.client.dedup import MessageDedup, SeqSet
from parley.protocol.errors import ParleyError
from parley.protocol.frames import AckFrame as Ack
from parley.protocol.models import (
    Conversation,
    ConversationEvent,
    Event,
    Member,
    Message,
    MessageEvent,
    MessagesPage,
    PresenceEvent,
    ReceiptEvent,
    Session,
    TypingEvent,
    User,
)

__all__ = [
    "DEFAULT_SERVER",
    "Ack",
    "ClientClosed",
    "ClientEvent",
    "Connected",
    "Conversation",
    "ConversationEvent",
    "Disconnected",
    "Event",
    "Member",
    "Message",
    "MessageDedup",
    "MessageEvent",
    "MessagesPage",
    "ParleyClient",
    "ParleyError",
    "PresenceEvent",
    "ReceiptEvent",
    "Resync",
    "SeqSet",
    "Session",
    "SessionRevoked",
    "TypingEvent",
    "User",
    "error_from_response",
    "new_client_msg_id",
]
