"""Accounts and sessions: registration, login, token authentication, logout."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from parley.protocol.errors import InvalidRequest, NotFound, RateLimited, Unauthorized
from parley.protocol.models import Session, User
from parley.protocol.requests import CreateAccount, CreateSession
from parley.services.clock import now_ms
from parley.services.ids import new_id
from parley.services.ratelimit import KeyedLimiter
from parley.storage.base import SessionRecord, Store, UserRecord

#: Failed logins per account: a burst, then one more every this many seconds.
LOGIN_FAILURE_REFILL_SECONDS = 10.0
#: Password hashes computed at once: one per core.
HASHING_THREADS = os.cpu_count() or 2
#: Authenticated tokens kept in memory, so a request does not read the disk to authenticate.
TOKEN_CACHE_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: one device of one user."""

    user_id: str
    device_id: str
    token_hash: str


def hash_token(token: str) -> str:
    """Tokens are 256 random bits, so a fast hash is enough: nothing to brute-force."""
    return hashlib.sha256(token.encode()).hexdigest()


def make_hasher(memory_kib: int, time_cost: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1, type=Type.ID)


class AccountService:
    def __init__(
        self, store: Store, hasher: PasswordHasher, *, login_failures_burst: int = 10
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._hashing = ThreadPoolExecutor(HASHING_THREADS, thread_name_prefix="argon2")
        self._tokens: dict[str, Principal | None] = {}
        self._failures = KeyedLimiter(1 / LOGIN_FAILURE_REFILL_SECONDS, login_failures_burst)
        # Verified against when the username is unknown, so both paths cost the same.
        self._dummy_hash = hasher.hash(secrets.token_hex(16))
        #: Called with a principal whose session ended (to close its sockets).
        self.on_logout: Callable[[Principal], None] | None = None

    async def _run(self, fn: Callable[..., object], *args: object) -> object:
        # Argon2 costs tens of milliseconds of CPU and 19 MiB: keep it off the
        # event loop, on a pool as small as the machine, so a burst of logins
        # neither starves other work nor leaves a 19 MiB arena in many threads.
        return await asyncio.get_running_loop().run_in_executor(self._hashing, fn, *args)

    async def register(self, req: CreateAccount) -> User:
        password_hash = await self._run(self._hasher.hash, req.password)
        assert isinstance(password_hash, str)
        user = UserRecord(
            user_id=new_id("u"),
            username=req.username,
            display_name=req.display_name or req.username,
            password_hash=password_hash,
            created_at=now_ms(),
        )
        await self._store.create_user(user)
        return User(user_id=user.user_id, username=user.username, display_name=user.display_name)

    async def login(self, req: CreateSession) -> Session:
        bucket = self._failures.bucket(req.username)
        if bucket.level() < 1:
            raise RateLimited(
                "too many failed logins for this account; wait and retry",
                retry_after=bucket.retry_after(),
            )
        user = await self._store.get_user_by_username(req.username)
        if not await self._verify(user.password_hash if user else None, req.password) or not user:
            bucket.take()
            raise Unauthorized("wrong username or password")
        token = secrets.token_urlsafe(32)
        record = SessionRecord(
            token_hash=hash_token(token),
            user_id=user.user_id,
            device_id=new_id("d"),
            device_name=req.device_name or "device",
            created_at=now_ms(),
        )
        await self._store.create_session(record)
        return Session(token=token, user_id=user.user_id, device_id=record.device_id)

    async def _verify(self, password_hash: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(password_hash or self._dummy_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        ok = await self._run(check)
        return bool(ok) and password_hash is not None

    async def authenticate(self, token: str | None) -> Principal:
        """The principal behind a bearer token, or `Unauthorized`."""
        if not token:
            raise Unauthorized("missing bearer token")
        token_hash = hash_token(token)
        if token_hash in self._tokens:
            principal = self._tokens[token_hash]
        else:
            record = await self._store.get_session(token_hash)
            principal = Principal(record.user_id, record.device_id, token_hash) if record else None
            if principal is not None:
                if len(self._tokens) >= TOKEN_CACHE_SIZE:
                    self._tokens.pop(next(iter(self._tokens)))
                self._tokens[token_hash] = principal
        if principal is None:
            raise Unauthorized("invalid or expired token")
        return principal

    async def logout(self, principal: Principal) -> None:
        """End the session: the token stops working at once, everywhere."""
        self._tokens.pop(principal.token_hash, None)
        await self._store.delete_session(principal.token_hash)
        if self.on_logout is not None:
            self.on_logout(principal)

    async def user(self, user_id: str) -> User | None:
        record = await self._store.get_user(user_id)
        return _public(record) if record else None

    async def contacts(self, user_id: str) -> list[User]:
        return [_public(r) for r in await self._store.list_contacts(user_id)]

    async def add_contact(self, user_id: str, contact_id: str) -> None:
        if contact_id == user_id:
            raise InvalidRequest("you cannot add yourself as a contact")
        if await self._store.get_user(contact_id) is None:
            raise NotFound("no such user")
        await self._store.add_contact(user_id, contact_id, now_ms())

    async def remove_contact(self, user_id: str, contact_id: str) -> None:
        await self._store.remove_contact(user_id, contact_id)

    async def user_by_username(self, username: str) -> User | None:
        record = await self._store.get_user_by_username(username)
        return _public(record) if record else None


def _public(record: UserRecord) -> User:
    return User(user_id=record.user_id, username=record.username, display_name=record.display_name)
