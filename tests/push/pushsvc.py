"""A local Web Push service (RFC 8030) for tests, on 127.0.0.1.

Each test subscription gets its own P-256 key pair and auth secret, as a browser
would make; every POST is checked the way a real push service and user agent
would: the VAPID token (RFC 8292) must verify with the server's public key and
name this origin, and the body must decrypt (RFC 8291, aes128gcm) with the
subscription's private key. Anything wrong is recorded in `errors`; tests assert
that list stays empty.

A subscription's behaviour decides the answer: "ok" (201), "gone" (410), "fail"
(500), "hang" (no answer until the service closes), or a scripted list of
statuses (with optional Retry-After) followed by 201.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import http_ece  # type: ignore[import-untyped]
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64d(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Received:
    path: str
    at: float
    headers: dict[str, str]
    body: bytes
    payload: Any = None  # the decrypted JSON
    claims: dict[str, Any] | None = None  # the verified VAPID claims
    status: int = 201


@dataclass
class Subscription:
    service: PushService
    path: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    behaviour: str | list[tuple[int, str | None]]
    received: list[Received] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.service.url + self.path

    @property
    def p256dh(self) -> str:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64e(raw)

    def json(self) -> dict[str, Any]:
        """What a browser's `PushSubscription.toJSON()` gives."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.p256dh, "auth": b64e(self.auth)},
        }

    def payloads(self) -> list[Any]:
        return [r.payload for r in self.received]


class PushService:
    """Records, verifies and decrypts every push; tests wait on conditions over it."""

    def __init__(self, vapid_public_key: str) -> None:
        self.vapid_public_key = vapid_public_key
        self.subs: dict[str, Subscription] = {}
        self.errors: list[str] = []
        self.gateway: list[Any] = []  # JSON bodies POSTed to /gateway
        #: Answers for the gateway's first POSTs, in order; then 200.
        self.gateway_statuses: list[int] = []
        self._changed = asyncio.Condition()
        self._release = asyncio.Event()  # lets "hang" handlers finish at close
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> PushService:
        app = web.Application()
        app.router.add_post("/push/{id}", self._push)
        app.router.add_post("/gateway", self._gateway)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def subscription(self, behaviour: str | list[tuple[int, str | None]] = "ok") -> Subscription:
        path = f"/push/{uuid.uuid4().hex}"
        sub = Subscription(
            self, path, ec.generate_private_key(ec.SECP256R1()), os.urandom(16), behaviour
        )
        self.subs[path] = sub
        return sub

    @property
    def gateway_url(self) -> str:
        return self.url + "/gateway"

    async def wait_for(self, pred: Callable[[], bool], within: float = 10.0) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(pred), within)
            except TimeoutError:
                raise AssertionError(
                    f"condition not met in {within}s; received "
                    f"{ {p: len(s.received) for p, s in self.subs.items()} }, "
                    f"gateway {len(self.gateway)}, errors {self.errors}"
                ) from None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- handlers -------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        try:
            self.gateway.append(await request.json())
        except ValueError as exc:
            self.errors.append(f"gateway body is not JSON: {exc}")
        n = len(self.gateway) - 1
        status = self.gateway_statuses[n] if n < len(self.gateway_statuses) else 200
        await self._notify()
        return web.json_response({"rejected": []}, status=status)

    async def _push(self, request: web.Request) -> web.StreamResponse:
        sub = self.subs.get(request.path)
        body = await request.read()
        rec = Received(request.path, time.monotonic(), dict(request.headers), body)
        if sub is None:
            self.errors.append(f"push to unknown path {request.path}")
            await self._notify()
            return web.Response(status=404)
        self._check(sub, rec)
        status, retry_after = self._answer(sub)
        rec.status = status
        sub.received.append(rec)
        await self._notify()
        if status == 0:  # hang until the service closes
            await self._release.wait()
            return web.Response(status=503)
        headers = {"Retry-After": retry_after} if retry_after else {}
        return web.Response(status=status, headers=headers)

    def _answer(self, sub: Subscription) -> tuple[int, str | None]:
        b = sub.behaviour
        if isinstance(b, list):
            n = len(sub.received)
            return b[n] if n < len(b) else (201, None)
        return {"ok": (201, None), "gone": (410, None), "fail": (500, None), "hang": (0, None)}[b]

    def _check(self, sub: Subscription, rec: Received) -> None:
        where = f"push to {sub.path}"
        h = rec.headers
        if h.get("Content-Encoding") != "aes128gcm":
            self.errors.append(f"{where}: Content-Encoding {h.get('Content-Encoding')!r}")
        if not h.get("TTL", "").isdigit():
            self.errors.append(f"{where}: TTL {h.get('TTL')!r}")
        if h.get("Urgency") not in (None, "very-low", "low", "normal", "high"):
            self.errors.append(f"{where}: Urgency {h.get('Urgency')!r}")
        topic = h.get("Topic")
        if topic is not None and (
            len(topic) > 32 or not all(c.isalnum() or c in "-_" for c in topic)
        ):
            self.errors.append(f"{where}: Topic {topic!r}")
        try:
            rec.claims = self._verify_vapid(h.get("Authorization", ""))
        except (AssertionError, ValueError, InvalidSignature) as exc:
            self.errors.append(f"{where}: VAPID {exc!r}")
        try:
            plain = http_ece.decrypt(
                rec.body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm"
            )
            rec.payload = json.loads(plain)
        except Exception as exc:
            self.errors.append(f"{where}: does not decrypt: {exc!r}")

    def _verify_vapid(self, header: str) -> dict[str, Any]:
        """RFC 8292: `vapid t=<JWT>, k=<key>`; ES256 over the server's VAPID key."""
        scheme, _, rest = header.partition(" ")
        assert scheme.lower() == "vapid", f"scheme {scheme!r}"
        params = dict(p.strip().split("=", 1) for p in rest.split(","))
        assert params["k"] == self.vapid_public_key, "k is not the server's VAPID key"
        head_b64, claims_b64, sig_b64 = params["t"].split(".")
        head = json.loads(b64d(head_b64))
        assert head["alg"] == "ES256", head
        sig = b64d(sig_b64)
        assert len(sig) == 64, "ES256 signature is r||s, 64 bytes"
        der = encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(params["k"]))
        key.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        claims: dict[str, Any] = json.loads(b64d(claims_b64))
        assert claims["aud"] == self.url, f"aud {claims['aud']!r} is not {self.url!r}"
        now = time.time()
        assert now < claims["exp"] <= now + 24 * 3600 + 60, f"exp {claims['exp']}"
        assert str(claims.get("sub", "")).startswith(("mailto:", "https:")), claims
        return claims
