"""The baseline: a bare in-memory relay that speaks just enough of the contract
for the bench's load generator to drive it exactly as it drives Parley.

On a `send` it parses the frame, looks the members up in a dict, acks the
sender and forwards the message to the other members; a `delivered` is
forwarded as a `receipt` to the other members. No auth (a token is the user
id), no storage (history and the per-user event log are Python lists, so the
history and catch-up scenarios have something to compare with), no echo to
the sender, no idempotency, no limits. It is the ceiling this machine and
aiohttp put on any server, not a server.

Run: `python -m parley.bench.relay --port N` (uvloop, as `parley serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import time
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

_encode = msgspec.json.encode
_json = "application/json"


class _In(msgspec.Struct):
    type: str
    conversation_id: str = ""
    client_msg_id: str = ""
    body: str = ""
    seq: int = 0
    since: int | None = None


_decode_in = msgspec.json.Decoder(_In).decode


class _Conv:
    __slots__ = ("conversation_id", "created_at", "delivered", "members", "messages", "type")

    def __init__(self, conversation_id: str, type_: str, members: list[str]) -> None:
        self.conversation_id = conversation_id
        self.type = type_
        self.members = members
        self.created_at = int(time.time() * 1000)
        #: encoded message objects, seq = index + 1
        self.messages: list[bytes] = []
        self.delivered: dict[str, int] = {}

    def view(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "type": self.type,
            "title": None,
            "created_at": self.created_at,
            "members": [
                {"user_id": u, "role": "member", "delivered_seq": 0, "read_seq": 0}
                for u in self.members
            ],
            "last_seq": len(self.messages),
            "last_message": None,
            "unread": 0,
        }


class Relay:
    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.usernames: dict[str, str] = {}
        self.convs: dict[str, _Conv] = {}
        self.direct: dict[tuple[str, str], str] = {}
        self.sockets: dict[str, list[web.WebSocketResponse]] = {}
        #: per-user event log: cursor = index + 1
        self.logs: dict[str, list[bytes]] = {}

    # http -------------------------------------------------------------------------
    @staticmethod
    def _reply(obj: Any, status: int = 200) -> web.Response:
        return web.Response(body=_encode(obj), status=status, content_type=_json)

    @staticmethod
    def _user(request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        user = auth[7:] if auth.startswith("Bearer ") else ""
        if not user:
            raise web.HTTPUnauthorized()
        return user

    async def healthz(self, request: web.Request) -> web.Response:
        return self._reply({"status": "ok"})

    async def accounts(self, request: web.Request) -> web.Response:
        body = msgspec.json.decode(await request.read())
        user_id = f"u{next(self.ids)}"
        self.usernames[body["username"]] = user_id
        self.logs[user_id] = []
        return self._reply(
            {"user_id": user_id, "username": body["username"], "display_name": body["username"]},
            201,
        )

    async def sessions(self, request: web.Request) -> web.Response:
        body = msgspec.json.decode(await request.read())
        user_id = self.usernames[body["username"]]
        device_id = f"d{next(self.ids)}"
        return self._reply({"token": user_id, "user_id": user_id, "device_id": device_id}, 201)

    async def events(self, request: web.Request) -> web.Response:
        return self._reply({"events": [], "next": len(self.logs[self._user(request)])})

    async def conversations(self, request: web.Request) -> web.Response:
        me = self._user(request)
        body = msgspec.json.decode(await request.read())
        if body["type"] == "direct":
            a, b = sorted((me, body["user_id"]))
            cid = self.direct.get((a, b))
            if cid is not None:
                return self._reply(self.convs[cid].view())
            cid = self.direct[(a, b)] = f"c{next(self.ids)}"
            conv = self.convs[cid] = _Conv(cid, "direct", [a, b])
        else:
            cid = f"c{next(self.ids)}"
            members = [me, *(m for m in body["member_ids"] if m != me)]
            conv = self.convs[cid] = _Conv(cid, "group", members)
        return self._reply(conv.view(), 201)

    async def messages(self, request: web.Request) -> web.Response:
        self._user(request)
        conv = self.convs[request.match_info["cid"]]
        q = request.query
        limit = int(q.get("limit", "50"))
        msgs = conv.messages
        if "before" in q:
            end = min(int(q["before"]) - 1, len(msgs))
            start = max(0, end - limit)
        elif "after" in q:
            start = int(q["after"])
            end = min(len(msgs), start + limit)
        else:
            end = len(msgs)
            start = max(0, end - limit)
        more = b"true" if (start > 0 if "after" not in q else end < len(msgs)) else b"false"
        body = b'{"messages":[' + b",".join(msgs[start:end]) + b'],"has_more":' + more + b"}"
        return web.Response(body=body, content_type=_json)

    # websocket --------------------------------------------------------------------
    def _log(self, user_id: str, head: bytes, tail: bytes) -> bytes:
        log = self.logs[user_id]
        payload = head + str(len(log) + 1).encode() + tail
        log.append(payload)
        return payload

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        me = self._user(request)
        ws = web.WebSocketResponse(max_msg_size=1 << 16)
        await ws.prepare(request)
        log = self.logs[me]
        ready = {"type": "ready", "user_id": me, "device_id": me, "cursor": len(log)}
        await ws.send_frame(_encode(ready), WSMsgType.TEXT)
        if "since" in request.query:
            for payload in log[int(request.query["since"]) :]:
                await ws.send_frame(payload, WSMsgType.TEXT)
        self.sockets.setdefault(me, []).append(ws)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self.frame(me, ws, _decode_in(msg.data))
        finally:
            self.sockets[me].remove(ws)
        return ws

    async def _fan_out(self, members: list[str], me: str, head: bytes, tail: bytes) -> None:
        sockets = self.sockets
        for user in members:
            if user != me:
                payload = self._log(user, head, tail)
                for sock in sockets.get(user, ()):
                    await sock.send_frame(payload, WSMsgType.TEXT)

    async def frame(self, me: str, ws: web.WebSocketResponse, f: _In) -> None:
        if f.type == "send":
            conv = self.convs[f.conversation_id]
            seq = len(conv.messages) + 1
            now = int(time.time() * 1000)
            cid = _encode(f.conversation_id)
            message = b"".join(
                (
                    b'{"conversation_id":%s,"seq":%d,"message_id":"m%d","sender_id":"%s",'
                    % (cid, seq, seq, me.encode()),
                    b'"client_msg_id":%s,"body":%s,"sent_at":%d}'
                    % (_encode(f.client_msg_id), _encode(f.body), now),
                )
            )
            conv.messages.append(message)
            ack = b'{"type":"ack","client_msg_id":%s,"conversation_id":%s,"seq":%d,' % (
                _encode(f.client_msg_id),
                cid,
                seq,
            ) + b'"message_id":"m%d","sent_at":%d}' % (seq, now)
            await ws.send_frame(ack, WSMsgType.TEXT)
            await self._fan_out(
                conv.members, me, b'{"type":"message","cursor":', b',"message":' + message + b"}"
            )
        elif f.type == "delivered" or f.type == "read":
            conv = self.convs[f.conversation_id]
            seq = min(f.seq, len(conv.messages))
            if seq <= conv.delivered.get(me, 0):
                return
            conv.delivered[me] = seq
            tail = b',"conversation_id":%s,"user_id":"%s","status":"delivered","seq":%d}' % (
                _encode(f.conversation_id),
                me.encode(),
                seq,
            )
            await self._fan_out(conv.members, me, b'{"type":"receipt","cursor":', tail)
        elif f.type == "ping":
            await ws.send_frame(b'{"type":"pong"}', WSMsgType.TEXT)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 17)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/v1/accounts", self.accounts)
        app.router.add_post("/v1/sessions", self.sessions)
        app.router.add_get("/v1/events", self.events)
        app.router.add_post("/v1/conversations", self.conversations)
        app.router.add_get("/v1/conversations/{cid}/messages", self.messages)
        app.router.add_get("/v1/ws", self.ws)
        return app


async def run(host: str, port: int) -> None:
    runner = web.AppRunner(Relay().app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parley.bench.relay")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(run(args.host, args.port))
    else:
        uvloop.run(run(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
