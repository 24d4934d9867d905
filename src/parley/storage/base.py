"""The storage interface the services depend on, and the records it returns.

Contract for every implementation:
- A write completes only once its effect is durable (survives `kill -9`
  and, by default, power loss). Writes submitted in an order commit in that
  order, and their futures complete in that order, on the event loop; so
  callbacks added to the futures of logged writes (which return the future
  itself) run in commit order, which is how events are published in log order.
- Writes that create log entries (messages, receipts, conversation changes)
  append them to every affected user's event log in the same transaction, so
  the log and the data never disagree. Callers publish those events only
  after the write completes ("publish after commit").
- `seq` per conversation and `cursor` per user are assigned by the store:
  gapless, never reused, even across failed and retried commits.
- A write that cannot be committed is retried in order with backoff, never
  dropped; callers may stop waiting (and answer 503) while it is retried.
"""

from __future__ import annotations

import abc
import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from parley.protocol.models import Conversation, LoggedEvent, Member, Message

#: Messages kept in memory per cached conversation: a whole default page, so the
#: page a chat opens at never touches disk (the design says "the last 15"; a
#: page of 50 is what clients ask for).
RECENT_MESSAGES = 50


@dataclass(slots=True)
class UserRecord:
    user_id: str
    username: str
    display_name: str
    password_hash: str
    created_at: int


@dataclass(slots=True)
class SessionRecord:
    token_hash: str
    user_id: str
    device_id: str
    device_name: str
    created_at: int


@dataclass(slots=True)
class PushSubscriptionRecord:
    user_id: str
    endpoint: str
    p256dh: str
    auth: str
    created_at: int


@dataclass(slots=True)
class MemberRecord:
    user_id: str
    role: Literal["admin", "member"]
    delivered_seq: int = 0
    read_seq: int = 0
    unread: int = 0
    joined_at: int = 0

    def copy(self) -> MemberRecord:
        return MemberRecord(
            self.user_id,
            self.role,
            self.delivered_seq,
            self.read_seq,
            self.unread,
            self.joined_at,
        )


@dataclass(slots=True)
class ConversationRecord:
    conversation_id: str
    type: Literal["direct", "group"]
    title: str | None
    created_at: int
    last_seq: int
    last_activity: int
    #: Current members, in the order they joined.
    members: dict[str, MemberRecord] = field(default_factory=dict)
    #: Removed (or departed) members: user id → the last seq they may read.
    former: dict[str, int] = field(default_factory=dict)
    last_message: Message | None = None
    #: Bumped by every change that logs a `conversation` event (its snapshot key).
    version: int = 0
    #: The newest messages, ascending and contiguous up to `last_seq` (design
    #: section 7's cache of what a chat opens at).
    recent: deque[Message] = field(default_factory=lambda: deque(maxlen=RECENT_MESSAGES))
    #: Characters of the bodies in `recent`, which the cache's memory bound
    #: counts. Kept current by `remember` rather than summed at every install.
    recent_body_size: int = -1

    def __post_init__(self) -> None:
        if self.recent_body_size < 0:
            self.recent_body_size = sum(len(m.body) for m in self.recent)

    def remember(self, message: Message) -> None:
        """Append to `recent`, counting the body in and whatever the deque drops out."""
        recent = self.recent
        if len(recent) == recent.maxlen:
            self.recent_body_size -= len(recent[0].body)
        recent.append(message)
        self.recent_body_size += len(message.body)

    def snapshot(self) -> ConversationRecord:
        """A copy the caller may keep while the writer goes on changing the original.

        Positional constructors, not `dataclasses.replace`: the writer takes one
        of these per changed conversation per batch, and `replace` cost a third
        of the writer's time per message."""
        return ConversationRecord(
            self.conversation_id,
            self.type,
            self.title,
            self.created_at,
            self.last_seq,
            self.last_activity,
            {u: m.copy() for u, m in self.members.items()},
            dict(self.former),
            self.last_message,
            self.version,
            self.recent.copy(),
            self.recent_body_size,
        )

    def visible_seq(self, user_id: str) -> int | None:
        """The highest seq `user_id` may read: None for a member (no bound)."""
        return self.former.get(user_id) if user_id not in self.members else None

    def view_for(self, user_id: str) -> Conversation:
        """The contract's conversation object as `user_id` sees it: its own
        unread count, and for a former member nothing past its removal."""
        me = self.members.get(user_id)
        bound = self.visible_seq(user_id)
        last_seq, last_message = self.last_seq, self.last_message
        if bound is not None and last_seq > bound:
            last_seq = bound
            last_message = last_message if last_message and last_message.seq <= bound else None
        return Conversation(
            conversation_id=self.conversation_id,
            type=self.type,
            title=self.title,
            created_at=self.created_at,
            members=[
                Member(
                    user_id=m.user_id,
                    role=m.role,
                    delivered_seq=m.delivered_seq,
                    read_seq=m.read_seq,
                )
                for m in self.members.values()
            ],
            last_seq=last_seq,
            last_message=last_message,
            unread=me.unread if me else 0,
        )


#: One entry appended to one user's event log.
UserEvent = tuple[str, LoggedEvent]


@dataclass(slots=True)
class Committed:
    """What a logged write did: its events, to publish once the write has completed."""

    events: list[UserEvent]


@dataclass(slots=True)
class SendOutcome(Committed):
    message: Message
    #: True when the client_msg_id had been seen: nothing new was stored or logged.
    duplicate: bool
    conversation_type: str
    member_ids: list[str]


@dataclass(slots=True)
class DirectOutcome(Committed):
    conversation: ConversationRecord
    created: bool


@dataclass(slots=True)
class ConversationChange(Committed):
    """A group was created or changed; `events` tell every member (and a removed one)."""

    conversation: ConversationRecord


class Store(abc.ABC):
    """Durable state: accounts, sessions, conversations, messages, event logs."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish every submitted write, then release resources."""

    # accounts -------------------------------------------------------------
    @abc.abstractmethod
    async def create_user(self, user: UserRecord) -> None:
        """Raises `Conflict(code="username_taken")` if the username exists."""

    @abc.abstractmethod
    async def get_user(self, user_id: str) -> UserRecord | None: ...

    @abc.abstractmethod
    async def get_user_by_username(self, username: str) -> UserRecord | None: ...

    @abc.abstractmethod
    async def create_session(self, session: SessionRecord) -> None: ...

    @abc.abstractmethod
    async def get_session(self, token_hash: str) -> SessionRecord | None: ...

    @abc.abstractmethod
    async def delete_session(self, token_hash: str) -> None: ...

    # conversations ---------------------------------------------------------
    @abc.abstractmethod
    def open_direct(
        self, conversation_id: str, user_a: str, user_b: str, now: int
    ) -> asyncio.Future[DirectOutcome]:
        """Create the pair's direct conversation, or return the existing one.

        `conversation_id` is used only when creating. Creation logs a
        `conversation` event for both users.
        """

    @abc.abstractmethod
    def create_group(
        self,
        conversation_id: str,
        creator_id: str,
        title: str,
        member_ids: list[str],
        now: int,
        max_members: int,
    ) -> asyncio.Future[ConversationChange]:
        """Create a group whose admin is the creator. `NotFound` if a member id is
        no user; `InvalidRequest(code="too_many_members")` over `max_members`."""

    @abc.abstractmethod
    def add_member(
        self, conversation_id: str, actor_id: str, user_id: str, now: int, max_members: int
    ) -> asyncio.Future[ConversationChange]:
        """Admins only (`Forbidden`); idempotent. The newcomer reads the whole
        history and starts with nothing unread."""

    @abc.abstractmethod
    def remove_member(
        self, conversation_id: str, actor_id: str, user_id: str, now: int
    ) -> asyncio.Future[ConversationChange]:
        """Admins remove anyone; anyone removes itself (leaves). Idempotent. The
        removed user keeps read access up to the current last seq, nothing after.
        When the last admin leaves, the longest-standing member becomes admin."""

    @abc.abstractmethod
    def rename(
        self, conversation_id: str, actor_id: str, title: str, now: int
    ) -> asyncio.Future[ConversationChange]:
        """Admins only."""

    @abc.abstractmethod
    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None: ...

    @abc.abstractmethod
    async def list_conversations(
        self, user_id: str, limit: int, before: int | None
    ) -> list[ConversationRecord]:
        """The user's conversations, most recent activity first, activity < `before`."""

    # messages --------------------------------------------------------------
    @abc.abstractmethod
    def append_message(
        self,
        conversation_id: str,
        sender_id: str,
        client_msg_id: str,
        body: str,
        message_id: str,
        now: int,
    ) -> asyncio.Future[SendOutcome]:
        """Store a message with the next seq and log it for every member.

        Idempotent on (conversation, sender, client_msg_id): a repeat returns
        the original with `duplicate=True`. Raises `NotFound` if the sender is
        not a member (or the conversation does not exist).
        """

    @abc.abstractmethod
    async def get_messages(
        self,
        conversation_id: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        upto: int | None = None,
    ) -> tuple[list[Message], bool]:
        """One page in ascending seq and whether more lie beyond it (see the
        contract), never past `upto` when given."""

    @abc.abstractmethod
    def move_watermark(
        self,
        conversation_id: str,
        user_id: str,
        status: Literal["delivered", "read"],
        seq: int,
    ) -> asyncio.Future[Committed]:
        """Raise a member's watermark (never lower it) and log a receipt.

        In a direct conversation both members get the receipt. In a group only
        the member itself (its other devices) and the senders of the messages
        the watermark newly covers: receipts cost O(senders), not O(members²);
        everyone else reads watermarks from the conversation object.
        A seq above `last_seq` is clamped; one at or below the watermark logs nothing.
        """

    # event logs -------------------------------------------------------------
    @abc.abstractmethod
    async def read_events(self, user_id: str, after: int, limit: int) -> list[LoggedEvent]:
        """The user's logged events with cursor > `after`, ascending, at most `limit`."""

    @abc.abstractmethod
    async def current_cursor(self, user_id: str) -> int:
        """The cursor of the user's newest committed event (0 when none)."""

    # contacts and presence -------------------------------------------------------
    @abc.abstractmethod
    async def add_contact(self, owner_id: str, contact_id: str, now: int) -> None:
        """Idempotent."""

    @abc.abstractmethod
    async def remove_contact(self, owner_id: str, contact_id: str) -> None:
        """Idempotent."""

    @abc.abstractmethod
    async def list_contacts(self, owner_id: str) -> list[UserRecord]: ...

    @abc.abstractmethod
    async def presence_audience(self, user_id: str) -> set[str]:
        """Who may see `user_id`'s presence: its contacts and everyone sharing a
        conversation with it. Two index lookups, never a scan of all users."""

    @abc.abstractmethod
    async def visible_to(self, viewer_id: str, user_ids: list[str]) -> set[str]:
        """The subset of `user_ids` whose presence `viewer_id` may see (itself included)."""

    @abc.abstractmethod
    async def set_last_seen(self, user_id: str, last_seen: int) -> None: ...

    @abc.abstractmethod
    async def last_seen(self, user_ids: list[str]) -> dict[str, int]:
        """Durable last-seen times of those users that have one."""

    # push subscriptions -------------------------------------------------------------
    @abc.abstractmethod
    async def add_push_subscription(self, sub: PushSubscriptionRecord) -> None:
        """Idempotent on the endpoint: re-subscribing replaces keys and owner."""

    @abc.abstractmethod
    async def remove_push_subscription(self, endpoint: str, user_id: str | None = None) -> None:
        """Drop a subscription (only `user_id`'s, when given). Idempotent."""

    @abc.abstractmethod
    async def push_subscriptions(self, user_ids: list[str]) -> list[PushSubscriptionRecord]: ...
