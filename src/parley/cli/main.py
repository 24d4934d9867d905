"""`parley`: serve, and a command-line client for demos and scripts.

The client commands keep one session per profile (a small JSON file holding the
token), so two users can chat from two terminals on one machine:

    parley --profile alice login alice
    parley --profile bob listen
    parley --profile alice send bob "hello"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parley.server.config import add_serve_arguments, config_from_args

if TYPE_CHECKING:
    from parley.client import Conversation, Message, ParleyClient

DEFAULT_SERVER = "http://127.0.0.1:8080"
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class CliError(Exception):
    """A problem on the user's side (no session, bad profile name): one line, exit 1."""


def _serve(args: argparse.Namespace) -> int:
    from parley.server.app import serve

    serve(config_from_args(args))
    return 0


# --- profiles ---------------------------------------------------------------


def profile_dir() -> Path:
    """`$PARLEY_HOME`, else `$XDG_CONFIG_HOME/parley`, else `~/.config/parley`."""
    home = os.environ.get("PARLEY_HOME")
    if home:
        return Path(home)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "parley"


def _profile_name(args: argparse.Namespace) -> str:
    name: str = getattr(args, "profile", None) or os.environ.get("PARLEY_PROFILE") or "default"
    if not _PROFILE_NAME.match(name):
        raise CliError(f"invalid profile name {name!r} (letters, digits, '_', '.', '-')")
    return name


def _profile_path(args: argparse.Namespace) -> Path:
    return profile_dir() / f"{_profile_name(args)}.json"


def load_profile(args: argparse.Namespace) -> dict[str, Any]:
    path = _profile_path(args)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read profile {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


def save_profile(args: argparse.Namespace, data: dict[str, Any]) -> Path:
    """Write the profile readable by its owner only: it holds a bearer token."""
    path = _profile_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    tmp.replace(path)
    return path


def _server(args: argparse.Namespace, profile: dict[str, Any] | None = None) -> str:
    """`--server`, else `$PARLEY_SERVER`, else the profile's, else the default."""
    explicit = getattr(args, "server", None) or os.environ.get("PARLEY_SERVER")
    if explicit:
        return str(explicit)
    if profile and isinstance(profile.get("server"), str):
        return str(profile["server"])
    return DEFAULT_SERVER


def _password(args: argparse.Namespace, prompt: str = "Password: ") -> str:
    given: str | None = args.password or os.environ.get("PARLEY_PASSWORD")
    return given if given else getpass.getpass(prompt)


def _client(args: argparse.Namespace) -> ParleyClient:
    """A client for the profile's session; a missing session is a clear error."""
    from parley.client import ParleyClient

    profile = load_profile(args)
    token = profile.get("token")
    if not isinstance(token, str) or not token:
        raise CliError(
            f"not logged in (profile {_profile_name(args)!r}): run `parley login USERNAME` first"
        )
    return ParleyClient(
        _server(args, profile),
        token,
        user_id=profile.get("user_id"),
        device_id=profile.get("device_id"),
        reconnect_max=5.0,
    )


# --- commands -----------------------------------------------------------------


async def _register(args: argparse.Namespace) -> int:
    from parley.client import ParleyClient

    password = _password(args)
    async with ParleyClient(_server(args)) as client:
        user = await client.register(args.username, password, args.display_name)
    print(f"registered {user.username} ({user.user_id})")
    return 0


async def _login(args: argparse.Namespace) -> int:
    from parley.client import ParleyClient

    password = _password(args)
    server = _server(args, load_profile(args))
    async with ParleyClient(server) as client:
        session = await client.login(args.username, password, args.device_name)
    path = save_profile(
        args,
        {
            "server": server,
            "username": args.username,
            "user_id": session.user_id,
            "device_id": session.device_id,
            "token": session.token,
        },
    )
    print(f"logged in as {args.username} (profile {_profile_name(args)}, {path})")
    return 0


async def _logout(args: argparse.Namespace) -> int:
    from parley.client import SessionRevoked

    profile = load_profile(args)
    async with _client(args) as client:
        # Already over on the server: forgetting it locally is all that is left.
        with contextlib.suppress(SessionRevoked):
            await client.logout()
    profile.pop("token", None)
    save_profile(args, profile)
    print("logged out")
    return 0


async def _whoami(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        assert client.user_id is not None
        user = await client.get_user(client.user_id)
    print(f"{user.username} ({user.user_id}) on {client.server}")
    return 0


async def _direct_with(client: ParleyClient, username: str) -> Conversation:
    peer = await client.find_user(username)
    return await client.create_direct(peer.user_id)


async def _send(args: argparse.Namespace) -> int:
    from parley.client import ParleyError

    async with _client(args) as client:
        conversation = await _direct_with(client, args.username)
        await client.connect()
        future = client.send(conversation.conversation_id, args.text)
        try:
            ack = await asyncio.wait_for(future, args.timeout)
        except TimeoutError:
            raise ParleyError(
                f"no acknowledgement within {args.timeout}s; the message may still arrive",
                code="timeout",
            ) from None
    print(ack.seq)
    return 0


async def _history(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        conversation = await _direct_with(client, args.username)
        names = _Names(client)
        messages: list[Message] = []
        async for page in client.history(
            conversation.conversation_id, page_size=min(max(args.limit, 1), 200)
        ):
            messages[:0] = page
            if len(messages) >= args.limit:
                break
        for msg in messages[-args.limit :] if args.limit > 0 else []:
            print(f"#{msg.seq} {await names.user(msg.sender_id)}: {msg.body}")
    return 0


class _Names:
    """Usernames and conversation labels, looked up once each."""

    def __init__(self, client: ParleyClient) -> None:
        self.client = client
        self._users: dict[str, str] = {}
        self._convs: dict[str, str] = {}

    async def user(self, user_id: str) -> str:
        if user_id not in self._users:
            try:
                self._users[user_id] = (await self.client.get_user(user_id)).username
            except Exception:
                return user_id
        return self._users[user_id]

    async def conversation(self, conversation_id: str) -> str:
        """A direct conversation is labelled by the other member, a group by its title."""
        if conversation_id not in self._convs:
            try:
                conv = await self.client.get_conversation(conversation_id)
            except Exception:
                return conversation_id
            if conv.type == "group":
                label = conv.title or conversation_id
            else:
                others = [m.user_id for m in conv.members if m.user_id != self.client.user_id]
                label = await self.user(others[0]) if others else "me"
            self._convs[conversation_id] = label
        return self._convs[conversation_id]

    def forget_conversation(self, conversation_id: str) -> None:
        self._convs.pop(conversation_id, None)


async def _listen(args: argparse.Namespace) -> int:
    from parley.client import (
        Connected,
        ConversationEvent,
        Disconnected,
        MessageEvent,
        PresenceEvent,
        ReceiptEvent,
        Resync,
    )

    async with _client(args) as client:
        names = _Names(client)
        await client.connect()
        me = await names.user(client.user_id or "")
        print(f"listening as {me} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        count = 0
        async for event in client.events():
            if isinstance(event, MessageEvent):
                msg = event.message
                label = await names.conversation(msg.conversation_id)
                print(f"[{label}] {await names.user(msg.sender_id)}: {msg.body}", flush=True)
                count += 1
                if args.count and count >= args.count:
                    break
            elif isinstance(event, ReceiptEvent):
                if event.user_id != client.user_id:
                    label = await names.conversation(event.conversation_id)
                    who = await names.user(event.user_id)
                    print(f"[{label}] ({who} {event.status} up to #{event.seq})", flush=True)
            elif isinstance(event, ConversationEvent):
                conv = event.conversation
                names.forget_conversation(conv.conversation_id)
                label = await names.conversation(conv.conversation_id)
                what = "new conversation" if conv.last_seq == 0 else "conversation updated"
                print(f"[{label}] ({what})", flush=True)
            elif isinstance(event, PresenceEvent):
                print(f"* {await names.user(event.user_id)} is {event.status}", flush=True)
            elif isinstance(event, Disconnected):
                print(f"connection lost ({event.reason}); reconnecting", file=sys.stderr)
            elif isinstance(event, Connected) and event.reconnect:
                print("reconnected", file=sys.stderr, flush=True)
            elif isinstance(event, Resync):
                print("missed events expired on the server; use `history`", file=sys.stderr)
    return 0


# --- wiring -------------------------------------------------------------------


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    """Run an async client command; server and network errors become one line, exit 1."""

    def runner(args: argparse.Namespace) -> int:
        import aiohttp

        from parley.client import ParleyError

        try:
            return asyncio.run(command(args))
        except ParleyError as exc:
            # The server's own words, and its code for scripts to match on.
            print(f"error: {exc.message} ({exc.code})", file=sys.stderr)
        except CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
        except aiohttp.ClientConnectionError as exc:
            print(f"error: cannot reach the server at {_server(args)}: {exc}", file=sys.stderr)
        except (aiohttp.ClientError, TimeoutError) as exc:
            print(f"error: request failed: {exc!r}", file=sys.stderr)
        except KeyboardInterrupt:
            return 130
        return 1

    return runner


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--server",
        default=default,
        help=f"server URL (env PARLEY_SERVER; default: the profile's, else {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--profile",
        default=default,
        help="session profile name (env PARLEY_PROFILE; default 'default')",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parley", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _global_options(parser, None)
    # The same options after the subcommand too (`parley send --profile bob ...`);
    # SUPPRESS keeps a value given before the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)

    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run a Parley node (embedded SQLite by default)")
    add_serve_arguments(serve_p)
    serve_p.set_defaults(func=_serve)

    def client_cmd(name: str, help_: str, func: Command) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, parents=[common])
        p.set_defaults(func=_run(func))
        return p

    p = client_cmd("register", "create an account", _register)
    p.add_argument("username")
    p.add_argument("--password", help="(env PARLEY_PASSWORD; prompted if absent)")
    p.add_argument("--display-name")

    p = client_cmd("login", "open a session and store it in the profile", _login)
    p.add_argument("username")
    p.add_argument("--password", help="(env PARLEY_PASSWORD; prompted if absent)")
    p.add_argument("--device-name", default="parley-cli")

    client_cmd("logout", "end the profile's session", _logout)
    client_cmd("whoami", "show the profile's user", _whoami)

    p = client_cmd("send", "send a direct message; prints its seq once acknowledged", _send)
    p.add_argument("username")
    p.add_argument("text")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the ack")

    p = client_cmd("listen", "print incoming messages and receipts live", _listen)
    p.add_argument("--count", type=int, default=0, help="exit after this many messages")

    p = client_cmd("history", "print a direct conversation's latest messages", _history)
    p.add_argument("username")
    p.add_argument("--limit", type=int, default=20)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
