"""HTTP endpoints of the contract's Push section, as routes for `HttpApi`."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from parley.protocol.requests import decode_request
from parley.server.http import HttpApi, json_response
from parley.server.openapi import Route
from parley.services.push import MAX_ENDPOINT_CHARS, PushService

# Generous bounds: the exact checks (URL, point on the curve, 16 bytes) follow decoding.
Endpoint = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ENDPOINT_CHARS)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class VapidPublicKey(msgspec.Struct, kw_only=True):
    #: The server's VAPID public key: the uncompressed P-256 point, URL-safe
    #: base64 without padding (the browser's `applicationServerKey`).
    key: str


class PushKeys(msgspec.Struct, kw_only=True):
    p256dh: Key
    auth: Key


class CreatePushSubscription(msgspec.Struct, kw_only=True):
    """A browser's `PushSubscription.toJSON()` (`expirationTime` and the like are ignored)."""

    endpoint: Endpoint
    keys: PushKeys


class DeletePushSubscription(msgspec.Struct, kw_only=True):
    endpoint: Endpoint


def push_routes(push: PushService) -> list[Route]:
    """`GET /v1/push/vapid-public-key`, `POST` and `DELETE /v1/push/subscriptions`."""

    async def vapid_public_key(request: web.Request) -> web.StreamResponse:
        return json_response(VapidPublicKey(key=push.public_key))

    async def subscribe(request: web.Request) -> web.StreamResponse:
        me = HttpApi.principal(request).user_id
        req = decode_request(await request.read(), CreatePushSubscription)
        await push.subscribe(me, req.endpoint, req.keys.p256dh, req.keys.auth)
        return web.Response(status=201)

    async def unsubscribe(request: web.Request) -> web.StreamResponse:
        me = HttpApi.principal(request).user_id
        req = decode_request(await request.read(), DeletePushSubscription)
        await push.unsubscribe(me, req.endpoint)
        return web.Response(status=204)

    return [
        Route(
            "GET",
            "/v1/push/vapid-public-key",
            vapid_public_key,
            "The VAPID public key for PushManager.subscribe",
            response=VapidPublicKey,
            auth=False,
        ),
        Route(
            "POST",
            "/v1/push/subscriptions",
            subscribe,
            "Register a Web Push subscription (idempotent on the endpoint)",
            status=201,
            body=CreatePushSubscription,
        ),
        Route(
            "DELETE",
            "/v1/push/subscriptions",
            unsubscribe,
            "Drop a Web Push subscription (idempotent)",
            status=204,
            body=DeletePushSubscription,
        ),
    ]
