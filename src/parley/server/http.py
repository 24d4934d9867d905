"""The HTTP edge: one handler per endpoint of the contract, and the error shape."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware

from parley.metrics import Metrics
from parley.protocol import limits
from parley.protocol.errors import (
    InvalidRequest,
    NotFound,
    ParleyError,
    RateLimited,
    Unavailable,
)
from parley.protocol.models import (
    Contact,
    ContactList,
    Conversation,
    ConversationList,
    EventsPage,
    Health,
    MessagesPage,
    PresenceMap,
    PresenceStatus,
    SendResult,
    Session,
    User,
)
from parley.protocol.requests import (
    AddMember,
    CreateAccount,
    CreateConversation,
    CreateDirect,
    CreateGroup,
    CreateSession,
    MarkRead,
    SendMessage,
    UpdateConversation,
    check_body_size,
    decode_request,
)
from parley.server.config import ServerConfig
from parley.server.hub import Hub
from parley.server.openapi import Route, build_openapi
from parley.server.params import bearer_token, int_param, since_param
from parley.server.ws import WsEndpoint
from parley.services.accounts import AccountService, Principal
from parley.services.messaging import EVENTS_PAGE, MessagingService
from parley.services.presence import PresenceService, Status
from parley.services.ratelimit import KeyedLimiter

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode

#: How long a request waits for its write to become durable before answering
#: 503; the write itself is kept and retried, so a retry with the same
#: client_msg_id finds it.
WRITE_TIMEOUT = 10.0

#: Users per presence query: a screenful of avatars many times over (design 5c, 4th point).
MAX_PRESENCE_BATCH = 500

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(obj), status=status, content_type="application/json")


def _events_response(payloads: list[bytes], next_cursor: int) -> web.Response:
    """An `EventsPage` from events already encoded (as the bus carries them)."""
    body = b'{"events":[' + b",".join(payloads) + b'],"next":%d}' % next_cursor
    return web.Response(body=body, content_type="application/json")


def error_response(exc: ParleyError) -> web.Response:
    response = json_response(exc.to_dict(), exc.status)
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.5)))
    return response


def error_middleware(metrics: Metrics) -> Middleware:
    """Every failure leaves as `{"error": {"code", "message"}}`; never a bare 500."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ParleyError as exc:
            error = exc
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _STATUS_CODES.get(exc.status, "bad_request")
            error = ParleyError(exc.reason, code=code, status=exc.status)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            error = ParleyError("internal error", code="internal", status=500)
        metrics.errors.labels(error.code).inc()
        return error_response(error)

    return middleware


async def _wait_durable(future: asyncio.Future[Any]) -> Any:
    # Shielded: a client that hangs up must not cancel the write or its publication.
    try:
        return await asyncio.wait_for(asyncio.shield(future), WRITE_TIMEOUT)
    except TimeoutError:
        raise Unavailable("storage is slow to commit; retry with the same id") from None


class HttpApi:
    def __init__(
        self,
        config: ServerConfig,
        accounts: AccountService,
        messaging: MessagingService,
        presence: PresenceService,
        hub: Hub,
        ws: WsEndpoint,
        metrics: Metrics,
        push_routes: list[Route] | None = None,
    ) -> None:
        self.metrics = metrics
        self.config = config
        self.accounts = accounts
        self.messaging = messaging
        self.presence = presence
        self.hub = hub
        per_minute = config.auth_rate_limit
        self._auth_by_address = KeyedLimiter(per_minute / 60, max(1.0, per_minute))
        self.routes = [
            Route("GET", "/healthz", self.healthz, "Liveness", response=Health, auth=False),
            Route("GET", "/openapi.json", self.openapi, "This document", auth=False),
            Route(
                "GET",
                "/metrics",
                self.metrics_text,
                "Prometheus metrics (no user data; no auth, like /healthz)",
                auth=False,
            ),
            Route(
                "POST",
                "/v1/accounts",
                self.create_account,
                "Register",
                status=201,
                body=CreateAccount,
                response=User,
                auth=False,
                errors=(409, 429),
            ),
            Route(
                "POST",
                "/v1/sessions",
                self.create_session,
                "Log in (one device)",
                status=201,
                body=CreateSession,
                response=Session,
                auth=False,
                errors=(401, 429),
            ),
            Route(
                "DELETE",
                "/v1/sessions/current",
                self.delete_session,
                "Log out this device",
                status=204,
            ),
            Route(
                "GET",
                "/v1/users",
                self.find_user,
                "Find a user by username",
                response=User,
                query={"username": "exact username"},
                errors=(404,),
            ),
            Route(
                "GET",
                "/v1/users/{user_id}",
                self.get_user,
                "A user by id",
                response=User,
                errors=(404,),
            ),
            Route(
                "GET",
                "/v1/contacts",
                self.list_contacts,
                "Your contacts with their presence",
                response=ContactList,
            ),
            Route(
                "PUT",
                "/v1/contacts/{user_id}",
                self.add_contact,
                "Add a contact (idempotent)",
                status=204,
                errors=(404,),
            ),
            Route(
                "DELETE",
                "/v1/contacts/{user_id}",
                self.remove_contact,
                "Remove a contact (idempotent)",
                status=204,
            ),
            Route(
                "GET",
                "/v1/presence",
                self.get_presence,
                "Presence of many users at once",
                response=PresenceMap,
                query={"user_ids": f"comma-separated, at most {MAX_PRESENCE_BATCH}"},
            ),
            Route(
                "POST",
                "/v1/conversations",
                self.create_conversation,
                "Open a direct conversation (200 if it exists) or create a group",
                status=201,
                body=CreateConversation,
                response=Conversation,
                errors=(404,),
            ),
            Route(
                "GET",
                "/v1/conversations",
                self.list_conversations,
                "Conversations, most recent activity first",
                response=ConversationList,
                query={"limit": "1-200, default 50", "before": "activity time (ms) bound"},
            ),
            Route(
                "GET",
                "/v1/conversations/{conversation_id}",
                self.get_conversation,
                "One conversation",
                response=Conversation,
                errors=(404,),
            ),
            Route(
                "PATCH",
                "/v1/conversations/{conversation_id}",
                self.rename_conversation,
                "Rename a group (admin)",
                body=UpdateConversation,
                response=Conversation,
                errors=(403, 404),
            ),
            Route(
                "POST",
                "/v1/conversations/{conversation_id}/members",
                self.add_member,
                "Add a member to a group (admin; idempotent)",
                status=204,
                body=AddMember,
                errors=(403, 404),
            ),
            Route(
                "DELETE",
                "/v1/conversations/{conversation_id}/members/{user_id}",
                self.remove_member,
                "Remove a member (admin) or leave (yourself); idempotent",
                status=204,
                errors=(403, 404),
            ),
            Route(
                "POST",
                "/v1/conversations/{conversation_id}/messages",
                self.send_message,
                "Send a message (idempotent on client_msg_id)",
                status=201,
                body=SendMessage,
                response=SendResult,
                errors=(404, 413, 429, 503),
            ),
            Route(
                "GET",
                "/v1/conversations/{conversation_id}/messages",
                self.get_messages,
                "A page of history in ascending seq",
                response=MessagesPage,
                query={"before": "seq", "after": "seq", "limit": "1-200, default 50"},
                errors=(404,),
            ),
            Route(
                "POST",
                "/v1/conversations/{conversation_id}/read",
                self.mark_read,
                "Read up to seq",
                status=204,
                body=MarkRead,
                errors=(404,),
            ),
            Route(
                "GET",
                "/v1/events",
                self.poll_events,
                "Long-poll the event log",
                response=EventsPage,
                query={"since": "cursor", "timeout": "0-60 s, default 30"},
                errors=(410,),
            ),
            Route(
                "GET",
                "/v1/ws",
                ws.handle,
                "WebSocket (see the protocol document)",
                query={"since": "cursor to replay after"},
                errors=(403, 429),
            ),
        ]
        self.routes += push_routes or []
        self._openapi = _encode(build_openapi(self.routes))

    def install(self, app: web.Application) -> None:
        for route in self.routes:
            handler = self._authenticated(route.handler) if route.auth else route.handler
            if route.path == "/v1/ws":
                handler = route.handler  # the handshake authenticates (header or first frame)
            app.router.add_route(route.method, route.path, handler)

    def _authenticated(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            token = bearer_token(request.headers.get("Authorization"))
            request["principal"] = await self.accounts.authenticate(token)
            return await handler(request)

        return wrapper

    @staticmethod
    def principal(request: web.Request) -> Principal:
        principal: Principal = request["principal"]
        return principal

    def _limit_address(self, request: web.Request) -> None:
        bucket = self._auth_by_address.bucket(request.remote or "?")
        if not bucket.take():
            raise RateLimited(
                "too many attempts from this address", retry_after=bucket.retry_after()
            )

    # --- running --------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return json_response(Health(status="ok"))

    async def metrics_text(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._openapi, content_type="application/json")

    # --- accounts -----------------------------------------------------------------------
    async def create_account(self, request: web.Request) -> web.StreamResponse:
        req = decode_request(await request.read(), CreateAccount)
        self._limit_address(request)
        return json_response(await self.accounts.register(req), 201)

    async def create_session(self, request: web.Request) -> web.StreamResponse:
        req = decode_request(await request.read(), CreateSession)
        self._limit_address(request)
        return json_response(await self.accounts.login(req), 201)

    async def delete_session(self, request: web.Request) -> web.StreamResponse:
        await self.accounts.logout(self.principal(request))
        return web.Response(status=204)

    async def find_user(self, request: web.Request) -> web.StreamResponse:
        username = request.query.get("username")
        if not username:
            raise InvalidRequest("username is required")
        user = await self.accounts.user_by_username(username)
        if user is None:
            raise NotFound("no such user")
        return json_response(user)

    async def get_user(self, request: web.Request) -> web.StreamResponse:
        user = await self.accounts.user(request.match_info["user_id"])
        if user is None:
            raise NotFound("no such user")
        return json_response(user)

    # --- contacts and presence ------------------------------------------------------------
    async def list_contacts(self, request: web.Request) -> web.StreamResponse:
        me = self.principal(request).user_id
        users = await self.accounts.contacts(me)
        seen = await self.presence.query(me, [u.user_id for u in users])
        return json_response(
            ContactList(
                contacts=[
                    Contact(
                        user_id=u.user_id,
                        username=u.username,
                        display_name=u.display_name,
                        presence=_presence(seen[u.user_id]),
                    )
                    for u in users
                ]
            )
        )

    async def add_contact(self, request: web.Request) -> web.StreamResponse:
        me = self.principal(request).user_id
        await self.accounts.add_contact(me, request.match_info["user_id"])
        return web.Response(status=204)

    async def remove_contact(self, request: web.Request) -> web.StreamResponse:
        me = self.principal(request).user_id
        await self.accounts.remove_contact(me, request.match_info["user_id"])
        return web.Response(status=204)

    async def get_presence(self, request: web.Request) -> web.StreamResponse:
        me = self.principal(request).user_id
        raw = request.query.get("user_ids", "")
        user_ids = list(dict.fromkeys(u for u in raw.split(",") if u))
        if not user_ids:
            raise InvalidRequest("user_ids is required (comma-separated)")
        if len(user_ids) > MAX_PRESENCE_BATCH:
            raise InvalidRequest(f"at most {MAX_PRESENCE_BATCH} user_ids per call")
        seen = await self.presence.query(me, user_ids)
        return json_response(PresenceMap(presence={u: _presence(seen[u]) for u in user_ids}))

    # --- conversations -------------------------------------------------------------------
    async def create_conversation(self, request: web.Request) -> web.StreamResponse:
        me = self.principal(request).user_id
        req: CreateDirect | CreateGroup = decode_request(
            await request.read(),
            CreateConversation,  # type: ignore[arg-type]
        )
        if isinstance(req, CreateDirect):
            if await self.accounts.user(req.user_id) is None:
                raise NotFound("no such user")
            conversation, created = await self.messaging.open_direct(me, req.user_id)
            return json_response(conversation, 201 if created else 200)
        conversation = await self.messaging.create_group(
            me, req.title, req.member_ids, self.config.max_group_members
        )
        return json_response(conversation, 201)

    async def list_conversations(self, request: web.Request) -> web.StreamResponse:
        me = self.principal(request).user_id
        limit = int_param(request, "limit", lo=1, hi=limits.MAX_PAGE, default=limits.DEFAULT_PAGE)
        before = int_param(request, "before", lo=0)
        assert limit is not None
        items = await self.messaging.conversations(me, limit, before)
        return json_response(ConversationList(conversations=items))

    async def get_conversation(self, request: web.Request) -> web.StreamResponse:
        me = self.principal(request).user_id
        cid = request.match_info["conversation_id"]
        return json_response(await self.messaging.conversation(me, cid))

    async def rename_conversation(self, request: web.Request) -> web.StreamResponse:
        me = self.principal(request).user_id
        req = decode_request(await request.read(), UpdateConversation)
        cid = request.match_info["conversation_id"]
        return json_response(await self.messaging.rename(me, cid, req.title))

    async def add_member(self, request: web.Request) -> web.StreamResponse:
        me = self.principal(request).user_id
        req = decode_request(await request.read(), AddMember)
        cid = request.match_info["conversation_id"]
        await self.messaging.add_member(me, cid, req.user_id, self.config.max_group_members)
        return web.Response(status=204)

    async def remove_member(self, request: web.Request) -> web.StreamResponse:
        me = self.principal(request).user_id
        cid = request.match_info["conversation_id"]
        await self.messaging.remove_member(me, cid, request.match_info["user_id"])
        return web.Response(status=204)

    # --- messages ----------------------------------------------------------------------------
    async def send_message(self, request: web.Request) -> web.StreamResponse:
        me = self.principal(request)
        req = decode_request(await request.read(), SendMessage)
        check_body_size(req.body)
        cid = request.match_info["conversation_id"]
        outcome = await _wait_durable(
            self.messaging.send(me.user_id, me.device_id, cid, req.client_msg_id, req.body)
        )
        peer = self.presence.offline_peer(outcome.conversation_type, outcome.member_ids, me.user_id)
        result = SendResult(message=outcome.message, peer_presence=peer)
        return json_response(result, 200 if outcome.duplicate else 201)

    async def get_messages(self, request: web.Request) -> web.StreamResponse:
        me = self.principal(request).user_id
        limit = int_param(request, "limit", lo=1, hi=limits.MAX_PAGE, default=limits.DEFAULT_PAGE)
        assert limit is not None
        before = int_param(request, "before", lo=0)
        after = int_param(request, "after", lo=0)
        messages, has_more = await self.messaging.history(
            me, request.match_info["conversation_id"], before=before, after=after, limit=limit
        )
        return json_response(MessagesPage(messages=messages, has_more=has_more))

    async def mark_read(self, request: web.Request) -> web.StreamResponse:
        me = self.principal(request).user_id
        req = decode_request(await request.read(), MarkRead)
        await _wait_durable(
            self.messaging.mark(me, request.match_info["conversation_id"], "read", req.seq)
        )
        return web.Response(status=204)

    # --- events ---------------------------------------------------------------------------------
    async def poll_events(self, request: web.Request) -> web.StreamResponse:
        principal = self.principal(request)
        since = since_param(request)
        if since is None:
            # Only asking where the log stands (clients do this at start-up,
            # before opening a socket): not a poll, so not a sign of life.
            me = principal.user_id
            return json_response(EventsPage(events=[], next=await self.messaging.cursor(me)))
        self.presence.long_poll_started(principal.user_id, principal.device_id)
        try:
            return await self._poll(principal.user_id, request, since)
        finally:
            self.presence.long_poll_ended(principal.user_id, principal.device_id)

    async def _poll(self, me: str, request: web.Request, since: int) -> web.StreamResponse:
        timeout = int_param(
            request,
            "timeout",
            lo=0,
            hi=limits.MAX_POLL_TIMEOUT,
            default=limits.DEFAULT_POLL_TIMEOUT,
        )
        assert timeout is not None
        waiter = self.hub.waiter(me)
        try:
            events = await self.messaging.events_after(me, since)
            if not events and timeout > 0:
                try:
                    await asyncio.wait_for(asyncio.shield(waiter.woken), timeout)
                except TimeoutError:
                    pass
                else:
                    # Usually what woke the poll is all there is to send: answer
                    # with it, as published, rather than read it back from disk.
                    kept = waiter.events_after(since, EVENTS_PAGE)
                    if kept is not None:
                        return _events_response([p for _, p in kept], kept[-1][0])
                    events = await self.messaging.events_after(me, since)
        finally:
            self.hub.forget(me, waiter)
        next_cursor = events[-1].cursor if events else since
        return json_response(EventsPage(events=list(events), next=next_cursor))


def _presence(seen: tuple[Status, int | None]) -> PresenceStatus:
    return PresenceStatus(status=seen[0], last_seen=seen[1])
