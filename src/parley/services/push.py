"""Web Push (RFC 8030 / 8291 / 8292) and a generic push gateway, off the message path.

`PushService.on_message` runs inside the store's commit callback, so it only
looks at presence (in memory) and enqueues; everything else happens on
background tasks:

    on_message ──► intake queue (bounded) ──► dispatcher ──► slots ──► workers ──► HTTP POST

A *slot* is one notification target for one conversation: a Web Push
subscription (endpoint) or, with `--push-gateway`, a user at the gateway. A
slot holds at most one pending notification (the latest message wins, with a
count of the messages it stands for) and sends at most one every
`min_interval` seconds, so a burst of 50 messages becomes two notifications,
not fifty. The `Topic` header lets the push service replace an undelivered
notification of the same conversation as well.

Failures: 429 and 5xx (and network errors, timeouts) are retried with
exponential backoff, honouring `Retry-After`; 404/410 drop the subscription;
other answers drop the notification. Nothing here is durable: a restart loses
pending notifications, never messages.

Safety: an endpoint must be https and every address its host resolves to must
be public (no loopback, private, link-local, multicast, reserved or
unspecified address), checked at subscribe time and again at connect time by
the resolver the HTTP client uses (no DNS-rebinding window), unless
`--allow-insecure-push`. Redirects are not followed, bodies and timeouts are
bounded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import email.utils
import hashlib
import ipaddress
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import http_ece  # type: ignore[import-untyped]
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid.jwt import sign as vapid_sign  # type: ignore[import-untyped]

from parley.protocol.errors import InvalidRequest, ParleyError
from parley.services.clock import now_ms
from parley.storage.base import PushSubscriptionRecord, SendOutcome, Store

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode

#: Longest endpoint URL accepted (real ones are 150–500 characters).
MAX_ENDPOINT_CHARS = 2048
#: Subscriptions kept per user; subscribing past it drops that user's oldest.
MAX_SUBSCRIPTIONS_PER_USER = 20
#: Plaintext of one notification. RFC 8291 payloads fit in one 4096-byte record
#: (at most 3993 bytes of plaintext); this leaves room to spare.
MAX_PAYLOAD_BYTES = 3072
#: Characters of message text in a preview.
PREVIEW_CHARS = 200
#: How long a push service may keep an undelivered notification (RFC 8030 TTL), seconds.
TTL_SECONDS = 24 * 3600
#: VAPID tokens live this long (RFC 8292: at most 24 h) and are reused for half of it.
VAPID_TOKEN_SECONDS = 12 * 3600
#: Subject (contact) claim of VAPID tokens; PARLEY_VAPID_SUBJECT overrides it.
DEFAULT_VAPID_SUBJECT = "mailto:push@parley.invalid"
VAPID_KEY_FILE = "vapid_private.pem"


# --- errors -----------------------------------------------------------------------------------


class EndpointRefused(ParleyError):
    """A push endpoint that is not https or points at a non-public address."""

    status, code = 422, "push_endpoint_refused"


class _RefusedAddress(OSError):
    """Raised by the guarded resolver; an OSError so aiohttp wraps it as a connect error."""


# --- endpoint and key validation -----------------------------------------------------------------


def b64url_decode(value: str) -> bytes:
    """URL-safe base64, padding optional; anything else raises `ValueError`."""
    if not value or any(c not in _B64URL for c in value.rstrip("=")):
        raise ValueError("not URL-safe base64")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except binascii.Error as exc:
        raise ValueError("not URL-safe base64") from exc


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def validate_keys(p256dh: str, auth: str) -> tuple[bytes, bytes]:
    """The subscription's public key (an uncompressed P-256 point) and auth secret (16 bytes)."""
    try:
        point = b64url_decode(p256dh)
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise InvalidRequest("keys.p256dh must be a URL-safe base64 P-256 public key") from None
    if len(point) != 65 or point[0] != 4:
        raise InvalidRequest("keys.p256dh must be an uncompressed P-256 point (65 bytes)")
    try:
        secret = b64url_decode(auth)
    except ValueError:
        raise InvalidRequest("keys.auth must be URL-safe base64") from None
    if len(secret) != 16:
        raise InvalidRequest("keys.auth must be 16 bytes")
    return point, secret


def address_allowed(address: str) -> bool:
    """Whether a push may be sent to this IP address: public unicast only."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None and not address_allowed(str(mapped)):
            return False
    return not (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _parse_endpoint(endpoint: str, allow_insecure: bool) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable endpoint URL, else `EndpointRefused`."""
    if len(endpoint) > MAX_ENDPOINT_CHARS:
        raise InvalidRequest(f"endpoint is longer than {MAX_ENDPOINT_CHARS} characters")
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise EndpointRefused("endpoint is not a valid URL") from None
    schemes = ("https", "http") if allow_insecure else ("https",)
    if parts.scheme not in schemes:
        raise EndpointRefused("push endpoints must use https")
    if not host or parts.username is not None or parts.password is not None:
        raise EndpointRefused("endpoint must name a host (and no credentials)")
    if any(ord(c) < 33 or ord(c) > 126 for c in endpoint):
        raise EndpointRefused("endpoint must be plain ASCII without spaces")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


async def check_endpoint(endpoint: str, allow_insecure: bool) -> None:
    """Refuse (422 `push_endpoint_refused`) an endpoint that is not https or whose host
    resolves to any non-public address; with `allow_insecure`, only the URL shape counts."""
    _, host, port = _parse_endpoint(endpoint, allow_insecure)
    if allow_insecure:
        return
    if _is_ip_literal(host):
        addresses = [host]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), 5.0
            )
        except (OSError, TimeoutError):
            raise EndpointRefused("endpoint host does not resolve") from None
        addresses = [str(info[4][0]) for info in infos]
    if not addresses or not all(address_allowed(a) for a in addresses):
        raise EndpointRefused("endpoint resolves to a private or reserved address")


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default, then refuses if any address is not public,
    so the connection goes exactly where the check looked."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not results or not all(address_allowed(r["host"]) for r in results):
            raise _RefusedAddress(f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self._inner.close()


# --- VAPID and payload encryption ---------------------------------------------------------------


def load_or_create_vapid_key(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The server's VAPID key pair: made at first start, kept (0600) in the data dir."""
    path = data_dir / VAPID_KEY_FILE
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{VAPID_KEY_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # never replaces a key another process wrote first
        except FileExistsError:
            pem = path.read_bytes()
        finally:
            tmp.unlink()
        log.info("created a VAPID key pair in %s", path)
    key_ = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key_, ec.EllipticCurvePrivateKey) or key_.curve.name != "secp256r1":
        raise RuntimeError(f"{path} is not a P-256 private key")
    return key_


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The uncompressed public point, URL-safe base64 without padding (applicationServerKey)."""
    raw = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url_encode(raw)


def encrypt_payload(plaintext: bytes, p256dh: bytes, auth: bytes) -> bytes:
    """RFC 8291 aes128gcm, one record, a fresh ephemeral key and salt each time."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    body: bytes = http_ece.encrypt(
        plaintext,
        salt=os.urandom(16),
        private_key=ephemeral,
        dh=p256dh,
        auth_secret=auth,
        version="aes128gcm",
        rs=4096,
    )
    return body


def topic_for(conversation_id: str) -> str:
    """RFC 8030 Topic: at most 32 characters of the URL-safe base64 alphabet."""
    return b64url_encode(hashlib.sha256(conversation_id.encode()).digest())[:32]


class Vapid:
    """Signs RFC 8292 tokens (ES256 JWT) per audience, reusing each for half its life."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        self.key = key
        self.public_key = public_key_b64(key)
        self.subject = subject
        self._tokens: dict[str, tuple[float, str]] = {}

    def header(self, endpoint: str) -> str:
        parts = urlsplit(endpoint)
        audience = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}".lower()
        now = time.time()
        cached = self._tokens.get(audience)
        if cached is None or cached[0] < now:
            claims = {"aud": audience, "exp": int(now) + VAPID_TOKEN_SECONDS, "sub": self.subject}
            token: str = vapid_sign(claims, self.key)
            if len(self._tokens) > 1000:
                self._tokens.clear()
            cached = (now + VAPID_TOKEN_SECONDS / 2, token)
            self._tokens[audience] = cached
        return f"vapid t={cached[1]}, k={self.public_key}"


# --- what a notification says ------------------------------------------------------------------


@dataclass(slots=True)
class Note:
    """One message as one recipient should hear of it."""

    user_id: str
    conversation_id: str
    conversation_type: str
    conversation_name: str
    sender_id: str
    sender_name: str
    message_id: str
    seq: int
    sent_at: int
    preview: str | None
    unread: int


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def webpush_payload(note: Note, count: int) -> bytes:
    """The JSON a service worker receives (documented in docs/push.md)."""
    if note.conversation_type == "group":
        title = f"{note.sender_name} in {note.conversation_name}"
    else:
        title = note.sender_name
    if note.preview is None:
        body = "New message" if count == 1 else f"{count} new messages"
    else:
        body = note.preview if count == 1 else f"{note.preview}\n({count} new messages)"
    payload: dict[str, Any] = {
        "type": "message",
        "title": _clip(title, 200),
        "body": body,
        "tag": note.conversation_id,
        "conversation_id": note.conversation_id,
        "conversation": {
            "conversation_id": note.conversation_id,
            "type": note.conversation_type,
            "title": note.conversation_name,
        },
        "sender": {"user_id": note.sender_id, "display_name": note.sender_name},
        "message": {
            "message_id": note.message_id,
            "conversation_id": note.conversation_id,
            "seq": note.seq,
            "sent_at": note.sent_at,
        },
        "count": count,
        "unread": note.unread,
    }
    data = _encode(payload)
    if len(data) > MAX_PAYLOAD_BYTES:  # only absurd names get here: drop the text
        payload["body"] = "New message" if count == 1 else f"{count} new messages"
        payload["title"] = _clip(title, 64)
        payload["conversation"]["title"] = _clip(note.conversation_name, 64)
        payload["sender"]["display_name"] = _clip(note.sender_name, 64)
        data = _encode(payload)
    return data


def gateway_payload(note: Note, count: int, devices: list[PushSubscriptionRecord]) -> bytes:
    """The gateway's JSON, shaped like a Matrix push gateway notification."""
    notification: dict[str, Any] = {
        "event_id": note.message_id,
        "conversation_id": note.conversation_id,
        "conversation_type": note.conversation_type,
        "conversation_name": note.conversation_name,
        "type": "parley.message",
        "sender": note.sender_id,
        "sender_display_name": note.sender_name,
        "user_id": note.user_id,
        "seq": note.seq,
        "sent_at": note.sent_at,
        "prio": "high" if note.conversation_type == "direct" else "low",
        "counts": {"unread": note.unread, "coalesced": count},
        "devices": [
            {
                "app_id": "parley.webpush",
                "pushkey": d.endpoint,
                "pushkey_ts": d.created_at // 1000,
                "data": {},
            }
            for d in devices
        ],
    }
    if note.preview is not None:
        notification["content"] = {"body": note.preview}
    return _encode({"notification": notification})


# --- the service ----------------------------------------------------------------------------------


SlotKey = tuple[Literal["webpush", "gateway"], str, str]  # (kind, endpoint|user_id, conversation)


@dataclass(slots=True)
class _Slot:
    key: SlotKey
    sub: PushSubscriptionRecord | None = None
    devices: list[PushSubscriptionRecord] = field(default_factory=list)
    latest: Note | None = None
    count: int = 0
    scheduled: bool = False
    inflight: bool = False
    last_sent: float = -math.inf
    attempt: int = 0
    first_pending: float = 0.0


@dataclass(slots=True)
class PushStats:
    """What became of the notifications offered (`/metrics`: parley_push_notifications)."""

    enqueued: int = 0
    dropped: int = 0
    sent: int = 0
    coalesced: int = 0
    retried: int = 0
    failed: int = 0
    removed: int = 0


class _Retry(Exception):
    def __init__(self, delay: float | None) -> None:
        super().__init__(delay)
        self.delay = delay


class PushService:
    """Web Push and gateway notifications for members with no device online."""

    def __init__(
        self,
        store: Store,
        is_connected: Callable[[str], bool],
        data_dir: Path,
        *,
        allow_insecure: bool = False,
        gateway: str | None = None,
        preview: bool = True,
        min_interval: float = 5.0,
        workers: int = 16,
        per_origin: int = 8,
        per_user: int = 4,
        intake_size: int = 10_000,
        max_slots: int = 50_000,
        timeout: float = 10.0,
        max_attempts: int = 6,
        max_backoff: float = 300.0,
    ) -> None:
        self._store = store
        self._is_connected = is_connected
        self.vapid = Vapid(
            load_or_create_vapid_key(data_dir),
            os.environ.get("PARLEY_VAPID_SUBJECT") or DEFAULT_VAPID_SUBJECT,
        )
        self.allow_insecure = allow_insecure
        self.gateway = gateway
        self.preview = preview
        self.min_interval = min_interval
        self._n_workers = workers
        self._per_origin = per_origin
        self._per_user = per_user
        self._busy: dict[str, int] = {}
        self._waiting: dict[str, collections.deque[SlotKey]] = {}
        self._max_slots = max_slots
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0))
        self._max_attempts = max_attempts
        self._max_backoff = max_backoff
        self._intake: asyncio.Queue[tuple[SendOutcome, list[str]]] = asyncio.Queue(intake_size)
        self._ready: asyncio.Queue[SlotKey] = asyncio.Queue()
        self._slots: dict[SlotKey, _Slot] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._session: aiohttp.ClientSession | None = None
        self._gateway_session: aiohttp.ClientSession | None = None
        self.stats = PushStats()

    @property
    def public_key(self) -> str:
        return self.vapid.public_key

    # lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=100,
            limit_per_host=16,
            resolver=None if self.allow_insecure else GuardedResolver(),
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, trust_env=False, cookie_jar=_NoCookies()
        )
        if self.gateway:
            self._gateway_session = aiohttp.ClientSession(
                timeout=self._timeout, trust_env=False, cookie_jar=_NoCookies()
            )
        self._tasks.append(asyncio.create_task(self._dispatcher(), name="push-dispatch"))
        for i in range(self._n_workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"push-worker-{i}"))

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for session in (self._session, self._gateway_session):
            if session is not None:
                await session.close()
        self._session = self._gateway_session = None

    # subscriptions ----------------------------------------------------------------------------
    async def subscribe(self, user_id: str, endpoint: str, p256dh: str, auth: str) -> None:
        validate_keys(p256dh, auth)
        await check_endpoint(endpoint, self.allow_insecure)
        existing = await self._store.push_subscriptions([user_id])
        others = sorted((s for s in existing if s.endpoint != endpoint), key=lambda s: s.created_at)
        for old in others[: max(0, len(others) - MAX_SUBSCRIPTIONS_PER_USER + 1)]:
            await self._store.remove_push_subscription(old.endpoint, user_id)
        await self._store.add_push_subscription(
            PushSubscriptionRecord(user_id, endpoint, p256dh, auth, now_ms())
        )

    async def unsubscribe(self, user_id: str, endpoint: str) -> None:
        await self._store.remove_push_subscription(endpoint, user_id)
        self._forget_endpoint(endpoint)

    # intake (runs in the store's commit callback: no I/O, no awaiting) -----------------------
    def on_message(self, outcome: SendOutcome) -> None:
        sender = outcome.message.sender_id
        away = [u for u in outcome.member_ids if u != sender and not self._is_connected(u)]
        if not away:
            return
        try:
            self._intake.put_nowait((outcome, away))
        except asyncio.QueueFull:
            self.stats.dropped += 1
            if self.stats.dropped % 1000 == 1:
                log.warning("push intake full: %d notifications dropped", self.stats.dropped)

    # dispatch: message → notes → slots ---------------------------------------------------------
    async def _dispatcher(self) -> None:
        while True:
            outcome, away = await self._intake.get()
            try:
                await self._dispatch(outcome, away)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("push dispatch failed")

    async def _dispatch(self, outcome: SendOutcome, away: list[str]) -> None:
        message = outcome.message
        # Subscriptions first: for the common case (nobody subscribed) one read is all.
        subs = await self._store.push_subscriptions(away)
        if not subs and not self.gateway:
            return
        record = await self._store.get_conversation(message.conversation_id)
        if record is None:
            return
        sender = await self._store.get_user(message.sender_id)
        sender_name = sender.display_name if sender else "Someone"
        name = sender_name if record.type == "direct" else (record.title or "Group")
        preview = _clip(message.body, PREVIEW_CHARS) if self.preview else None
        notes: dict[str, Note] = {}
        for user_id in away:
            member = record.members.get(user_id)
            if member is None:
                continue  # left the conversation since
            notes[user_id] = Note(
                user_id=user_id,
                conversation_id=message.conversation_id,
                conversation_type=record.type,
                conversation_name=name,
                sender_id=message.sender_id,
                sender_name=sender_name,
                message_id=message.message_id,
                seq=message.seq,
                sent_at=message.sent_at,
                preview=preview,
                unread=max(member.unread, 1),
            )
        by_user: dict[str, list[PushSubscriptionRecord]] = {}
        for sub in subs:
            note = notes.get(sub.user_id)
            if note is not None:
                by_user.setdefault(sub.user_id, []).append(sub)
                self._offer(("webpush", sub.endpoint, note.conversation_id), note, sub=sub)
        if self.gateway:
            for user_id, note in notes.items():
                self._offer(
                    ("gateway", user_id, note.conversation_id),
                    note,
                    devices=by_user.get(user_id, []),
                )

    def _offer(
        self,
        key: SlotKey,
        note: Note,
        *,
        sub: PushSubscriptionRecord | None = None,
        devices: list[PushSubscriptionRecord] | None = None,
    ) -> None:
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= self._max_slots:
                self.stats.dropped += 1
                if self.stats.dropped % 1000 == 1:
                    log.warning("push slots full: %d notifications dropped", self.stats.dropped)
                return
            slot = self._slots[key] = _Slot(key)
        if sub is not None:
            slot.sub = sub
        if devices is not None:
            slot.devices = devices
        if slot.latest is None:
            slot.first_pending = time.monotonic()
        else:
            self.stats.coalesced += 1
        slot.latest = note
        slot.count += 1
        self.stats.enqueued += 1
        if not slot.scheduled and not slot.inflight:
            self._schedule(slot, max(0.0, slot.last_sent + self.min_interval - time.monotonic()))

    def _schedule(self, slot: _Slot, delay: float) -> None:
        slot.scheduled = True
        if delay <= 0:
            self._ready.put_nowait(slot.key)
            return
        loop = asyncio.get_running_loop()
        key = slot.key

        def fire() -> None:
            self._timers.discard(handle)
            self._ready.put_nowait(key)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def _forget_endpoint(self, endpoint: str) -> None:
        for key in [k for k in self._slots if k[0] == "webpush" and k[1] == endpoint]:
            slot = self._slots.pop(key)
            slot.latest = None

    def _forget_later(self, key: SlotKey) -> None:
        loop = asyncio.get_running_loop()

        def check() -> None:
            self._timers.discard(handle)
            slot = self._slots.get(key)
            if (
                slot is not None
                and slot.latest is None
                and not slot.scheduled
                and not slot.inflight
                and time.monotonic() - slot.last_sent >= self.min_interval
            ):
                del self._slots[key]

        handle = loop.call_later(self.min_interval + 0.5, check)
        self._timers.add(handle)

    # delivery ------------------------------------------------------------------------------------
    def _lanes(self, slot: _Slot) -> list[tuple[str, int]]:
        """Concurrency lanes a send occupies, with their limits: one slow or hanging
        push service (or one user's many subscriptions) cannot hold every worker."""
        if slot.key[0] == "gateway":
            return [("gateway", self._per_origin)]
        assert slot.sub is not None
        return [
            ("origin " + _origin(slot.sub.endpoint, port=True), self._per_origin),
            ("user " + slot.sub.user_id, self._per_user),
        ]

    async def _worker(self) -> None:
        while True:
            key = await self._ready.get()
            slot = self._slots.get(key)
            if slot is None or slot.latest is None:
                if slot is not None:
                    slot.scheduled = False
                continue
            lanes = self._lanes(slot)
            full = next((lane for lane, cap in lanes if self._busy.get(lane, 0) >= cap), None)
            if full is not None:
                self._waiting.setdefault(full, collections.deque()).append(key)
                continue  # still `scheduled`: it runs when that lane frees up
            for lane, _ in lanes:
                self._busy[lane] = self._busy.get(lane, 0) + 1
            try:
                await self._send_slot(slot)
            finally:
                for lane, _ in lanes:
                    self._release_lane(lane)

    def _release_lane(self, lane: str) -> None:
        left = self._busy[lane] - 1
        if left:
            self._busy[lane] = left
        else:
            del self._busy[lane]
        queue = self._waiting.get(lane)
        if queue:
            self._ready.put_nowait(queue.popleft())
            if not queue:
                del self._waiting[lane]

    async def _send_slot(self, slot: _Slot) -> None:
        assert slot.latest is not None
        key = slot.key
        slot.scheduled = False
        slot.inflight = True
        note, count = slot.latest, slot.count
        slot.latest, slot.count = None, 0
        try:
            await self._deliver(slot, note, count)
        except _Retry as retry:
            self._retry(slot, note, count, retry.delay)
        except Exception:
            log.exception("push delivery failed")
            slot.attempt = 0
            self.stats.failed += 1
        else:
            slot.attempt = 0
            slot.last_sent = time.monotonic()
        finally:
            slot.inflight = False
        if self._slots.get(key) is not slot:
            return  # removed meanwhile (410, unsubscribe)
        if slot.latest is not None and not slot.scheduled:
            self._schedule(slot, slot.last_sent + self.min_interval - time.monotonic())
        elif slot.latest is None:
            self._forget_later(key)

    def _retry(self, slot: _Slot, note: Note, count: int, delay: float | None) -> None:
        slot.attempt += 1
        if slot.attempt >= self._max_attempts or (
            time.monotonic() - slot.first_pending > TTL_SECONDS
        ):
            log.warning("push to %s given up after %d attempts", _where(slot), slot.attempt)
            slot.attempt = 0
            self.stats.failed += 1
            return
        backoff = min(self._max_backoff, 2.0 ** (slot.attempt - 1))
        backoff *= random.uniform(0.8, 1.2)
        wait = min(self._max_backoff, max(backoff, delay or 0.0))
        if slot.latest is None:
            slot.latest = note  # newer messages (if any) win, and the count adds up
        slot.count += count
        self.stats.retried += 1
        self._schedule(slot, wait)

    async def _deliver(self, slot: _Slot, note: Note, count: int) -> None:
        if self._is_connected(note.user_id):
            return  # came back online: the app shows it
        if slot.key[0] == "gateway":
            await self._post_gateway(note, count, slot.devices)
        else:
            assert slot.sub is not None
            await self._post_webpush(slot.sub, note, count)

    async def _post_webpush(self, sub: PushSubscriptionRecord, note: Note, count: int) -> None:
        assert self._session is not None
        try:
            _, host, _ = _parse_endpoint(sub.endpoint, self.allow_insecure)
            if not self.allow_insecure and _is_ip_literal(host) and not address_allowed(host):
                raise EndpointRefused("endpoint is a non-public address")
            p256dh, auth = validate_keys(sub.p256dh, sub.auth)
        except ParleyError as exc:
            log.warning("push to %s refused at send time: %s", _origin(sub.endpoint), exc)
            self.stats.failed += 1
            return
        body = encrypt_payload(webpush_payload(note, count), p256dh, auth)
        headers = {
            "Authorization": self.vapid.header(sub.endpoint),
            "TTL": str(TTL_SECONDS),
            "Urgency": "high" if note.conversation_type == "direct" else "normal",
            "Topic": topic_for(note.conversation_id),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        status, retry_after = await self._post(self._session, sub.endpoint, body, headers)
        if status is None:
            return  # refused address: logged
        if 200 <= status < 300:
            self.stats.sent += 1
        elif status in (404, 410):
            log.info("push subscription at %s is gone (%d): removed", _origin(sub.endpoint), status)
            await self._store.remove_push_subscription(sub.endpoint, sub.user_id)
            self._forget_endpoint(sub.endpoint)
            self.stats.removed += 1
        elif status == 429 or status >= 500:
            raise _Retry(retry_after)
        else:
            log.warning("push to %s answered %d: dropped", _origin(sub.endpoint), status)
            self.stats.failed += 1

    async def _post_gateway(
        self, note: Note, count: int, devices: list[PushSubscriptionRecord]
    ) -> None:
        assert self._gateway_session is not None and self.gateway is not None
        body = gateway_payload(note, count, devices)
        headers = {"Content-Type": "application/json"}
        status, retry_after = await self._post(self._gateway_session, self.gateway, body, headers)
        if status is None:
            return
        if 200 <= status < 300:
            self.stats.sent += 1
        elif status == 429 or status >= 500:
            raise _Retry(retry_after)
        else:
            log.warning("push gateway answered %d: dropped", status)
            self.stats.failed += 1

    async def _post(
        self, session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, float | None]:
        """(status, Retry-After seconds); network trouble raises `_Retry`."""
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await resp.content.read(4096)  # bounded; the answer is not used
                return resp.status, _retry_after(resp.headers.get("Retry-After"))
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _RefusedAddress):
                log.warning("push to %s refused: %s", _origin(url), exc.os_error)
                self.stats.failed += 1
                return None, None
            raise _Retry(None) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # The exception's text may carry the URL: log its kind only.
            log.info("push to %s failed: %s", _origin(url), type(exc).__name__)
            raise _Retry(None) from exc


class _NoCookies(aiohttp.DummyCookieJar):
    pass


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _origin(url: str, *, port: bool = False) -> str:
    """Where a push went, for logs: endpoints are capabilities and stay out of them."""
    try:
        parts = urlsplit(url)
        where = f"{parts.scheme}://{parts.hostname}"
        return f"{where}:{parts.port}" if port and parts.port else where
    except ValueError:
        return "?"


def _where(slot: _Slot) -> str:
    return "the gateway" if slot.key[0] == "gateway" else _origin(slot.key[1])
