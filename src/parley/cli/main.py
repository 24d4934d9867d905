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
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parley.server.config import add_serve_arguments, config_from_args

if TYPE_CHECKING:
    from parley.client import Conversation, Message, ParleyClient, PresenceStatus, User

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


async def _user_named(client: ParleyClient, username: str) -> User:
    from parley.protocol.errors import NotFound

    try:
        return await client.find_user(username)
    except NotFound:
        raise CliError(f"no user named {username!r}") from None


async def _direct_with(client: ParleyClient, username: str) -> Conversation:
    peer = await _user_named(client, username)
    return await client.create_direct(peer.user_id)


#: What a group id may look like when asked for directly (ids are opaque, but
#: never contain what would change the URL they go into).
_ID_LIKE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


async def _group(client: ParleyClient, ref: str) -> Conversation:
    """The group `ref` names: a conversation id, else a unique title among this user's
    conversations (exact, else ignoring case)."""
    from parley.client import ParleyError

    conversations = await client.all_conversations()
    for conv in conversations:
        if conv.conversation_id == ref:
            if conv.type != "group":
                raise CliError(f"{ref} is a direct conversation, not a group")
            return conv
    groups = [c for c in conversations if c.type == "group"]
    matches = [c for c in groups if c.title == ref] or [
        c for c in groups if (c.title or "").casefold() == ref.casefold()
    ]
    if len(matches) > 1:
        ids = ", ".join(c.conversation_id for c in matches)
        raise CliError(f"{len(matches)} groups are titled {ref!r}; name one by id: {ids}")
    if matches:
        return matches[0]
    # Not a current conversation: perhaps a group this user was removed from,
    # whose history stays readable up to the removal.
    if _ID_LIKE.match(ref):
        try:
            conv = await client.get_conversation(ref)
        except ParleyError as exc:
            if exc.status not in (404, 405, 422):
                raise
        else:
            if conv.type == "group":
                return conv
    raise CliError(f"no group {ref!r} among your conversations (see `parley group list`)")


def _target(args: argparse.Namespace, *, with_text: bool) -> tuple[str | None, str | None]:
    """`USERNAME [TEXT]`, or with `--group GROUP` just `[TEXT]`: (username, text)."""
    given = [a for a in (args.username, getattr(args, "text", None)) if a is not None]
    wanted = (1 if with_text else 0) + (0 if args.group else 1)
    if len(given) != wanted:
        usage = "USERNAME TEXT | --group GROUP TEXT" if with_text else "USERNAME | --group GROUP"
        raise CliError(f"usage: parley {args.command} {usage}")
    if args.group:
        return None, given[0] if with_text else None
    return given[0], given[1] if with_text else None


async def _conversation_for(client: ParleyClient, args: argparse.Namespace) -> Conversation:
    if args.group:
        return await _group(client, args.group)
    return await _direct_with(client, args.username)


async def _send(args: argparse.Namespace) -> int:
    from parley.client import ParleyError

    username, text = _target(args, with_text=True)
    assert text is not None
    async with _client(args) as client:
        conversation = await _conversation_for(client, args)
        await client.connect()
        future = client.send(conversation.conversation_id, text)
        try:
            ack = await asyncio.wait_for(future, args.timeout)
        except TimeoutError:
            raise ParleyError(
                f"no acknowledgement within {args.timeout}s; the message may still arrive",
                code="timeout",
            ) from None
    print(ack.seq)
    if ack.peer_presence is not None:
        # On stderr: stdout stays the seq alone, for scripts.
        print(
            f"({username} is offline; will be delivered when they reconnect)",
            file=sys.stderr,
        )
    return 0


async def _history(args: argparse.Namespace) -> int:
    _target(args, with_text=False)
    async with _client(args) as client:
        conversation = await _conversation_for(client, args)
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


# --- contacts and presence ------------------------------------------------------


def _ago(ms: int, now_ms: int | None = None) -> str:
    """`just now`, `5 min ago`, `3 h ago`, `2 days ago`."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    seconds = max(0, now - ms) // 1000
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 48 * 3600:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def _presence_text(presence: PresenceStatus) -> str:
    """`online`, `offline, last seen 5 min ago`, or `unknown` (not shared with you)."""
    if presence.status == "offline" and presence.last_seen is not None:
        return f"offline, last seen {_ago(presence.last_seen)}"
    return presence.status


def _table(rows: list[tuple[str, str]]) -> None:
    width = max((len(name) for name, _ in rows), default=0)
    for name, text in rows:
        print(f"{name.ljust(width)}  {text}")


async def _contacts(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        if args.action in ("add", "remove"):
            user = await _user_named(client, args.username)
            if args.action == "add":
                await client.add_contact(user.user_id)
                print(f"added {user.username} to contacts")
            else:
                await client.remove_contact(user.user_id)
                print(f"removed {user.username} from contacts")
            return 0
        contacts = sorted(await client.contacts(), key=lambda c: c.username)
    if not contacts:
        print("no contacts yet: `parley contacts add USERNAME`", file=sys.stderr)
    _table([(c.username, _presence_text(c.presence)) for c in contacts])
    return 0


async def _presence(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        wanted = list(dict.fromkeys(args.usernames))
        users = await asyncio.gather(*(_user_named(client, name) for name in wanted))
        seen = await client.presence(u.user_id for u in users)
    _table([(u.username, _presence_text(seen[u.user_id])) for u in users])
    return 0


# --- groups -------------------------------------------------------------------------


async def _group_create(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        users = await asyncio.gather(*(_user_named(client, n) for n in args.usernames))
        group = await client.create_group(args.title, [u.user_id for u in users])
    print(group.conversation_id)
    return 0


async def _group_add(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        group = await _group(client, args.group)
        user = await _user_named(client, args.username)
        await client.add_member(group.conversation_id, user.user_id)
    print(f"added {user.username} to {group.title}")
    return 0


async def _group_remove(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        group = await _group(client, args.group)
        user = await _user_named(client, args.username)
        await client.remove_member(group.conversation_id, user.user_id)
    print(f"removed {user.username} from {group.title}")
    return 0


async def _group_leave(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        group = await _group(client, args.group)
        await client.leave(group.conversation_id)
    print(f"left {group.title}")
    return 0


async def _group_rename(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        group = await _group(client, args.group)
        renamed = await client.rename_group(group.conversation_id, args.title)
    print(f"renamed {group.title} to {renamed.title}")
    return 0


async def _group_list(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        groups = [c for c in await client.all_conversations() if c.type == "group"]
    if not groups:
        print("no groups yet: `parley group create TITLE USERNAME...`", file=sys.stderr)
    for g in groups:
        if client.user_id not in [m.user_id for m in g.members]:
            # The server keeps groups one was removed from (or left) listed:
            # their history stays readable up to that point.
            note = "no longer a member"
        else:
            note = f"{len(g.members)} members" + (f", {g.unread} unread" if g.unread else "")
        print(f"{g.conversation_id}  {g.title}  ({note})")
    return 0


async def _group_members(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        group = await _group(client, args.group)
        names = _Names(client)
        members = await client.members(group.conversation_id)
        seen = await client.presence(m.user_id for m in members if m.user_id != client.user_id)
        rows = []
        for m in members:
            status = "(you)" if m.user_id == client.user_id else _presence_text(seen[m.user_id])
            rows.append((await names.user(m.user_id), f"{m.role:<6}  {status}"))
    _table(rows)
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
        TypingEvent,
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
                if client.user_id not in [m.user_id for m in conv.members]:
                    what = "you are no longer a member"
                elif conv.last_seq == 0:
                    what = "new conversation"
                else:
                    what = "conversation updated"
                print(f"[{label}] ({what})", flush=True)
            elif isinstance(event, PresenceEvent):
                who = await names.user(event.user_id)
                if event.status == "online":
                    print(f"* {who} is online", flush=True)
                elif event.status == "offline":
                    print(f"* {who} went offline", flush=True)
            elif isinstance(event, TypingEvent):
                if args.typing:
                    label = await names.conversation(event.conversation_id)
                    print(f"[{label}] ({await names.user(event.user_id)} is typing)", flush=True)
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
    # Listed for --help only: `main` hands `parley bench ...` to the bench's own parser.
    sub.add_parser("bench", help="benchmark a server against a bare relay (see bench --help)")

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

    group_help = "a group: its id, or its title if unique among your conversations"
    p = client_cmd(
        "send",
        "send a message (USERNAME TEXT, or --group GROUP TEXT); prints its seq once acknowledged",
        _send,
    )
    p.add_argument("username", nargs="?", metavar="USERNAME")
    p.add_argument("text", nargs="?", metavar="TEXT")
    p.add_argument("--group", help=group_help)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the ack")

    p = client_cmd("listen", "print incoming messages, receipts and presence live", _listen)
    p.add_argument("--count", type=int, default=0, help="exit after this many messages")
    p.add_argument("--typing", action="store_true", help="also print who is typing")

    p = client_cmd(
        "history", "print a conversation's latest messages (USERNAME, or --group GROUP)", _history
    )
    p.add_argument("username", nargs="?", metavar="USERNAME")
    p.add_argument("--group", help=group_help)
    p.add_argument("--limit", type=int, default=20)

    p = client_cmd("contacts", "list contacts with presence; add or remove one", _contacts)
    p.set_defaults(action=None)
    actions = p.add_subparsers(dest="action", metavar="{add,remove}")
    for action, help_ in (("add", "add a contact"), ("remove", "remove a contact")):
        a = actions.add_parser(action, help=help_, parents=[common])
        a.add_argument("username")

    p = client_cmd("presence", "show whether users are online", _presence)
    p.add_argument("usernames", nargs="+", metavar="USERNAME")

    group_p = sub.add_parser("group", help="create, change and list groups", parents=[common])
    group_sub = group_p.add_subparsers(dest="group_command", required=True)

    def group_cmd(name: str, help_: str, func: Command) -> argparse.ArgumentParser:
        g = group_sub.add_parser(name, help=help_, parents=[common])
        g.set_defaults(func=_run(func))
        return g

    g = group_cmd("create", "create a group with you as admin; prints its id", _group_create)
    g.add_argument("title")
    g.add_argument("usernames", nargs="*", metavar="USERNAME")
    g = group_cmd("add", "add a member (admins only)", _group_add)
    g.add_argument("group", help=group_help)
    g.add_argument("username")
    g = group_cmd("remove", "remove a member (admins only)", _group_remove)
    g.add_argument("group", help=group_help)
    g.add_argument("username")
    g = group_cmd("leave", "leave a group", _group_leave)
    g.add_argument("group", help=group_help)
    g = group_cmd("rename", "change a group's title (admins only)", _group_rename)
    g.add_argument("group", help=group_help)
    g.add_argument("title")
    group_cmd("list", "list your groups: id, title, members", _group_list)
    g = group_cmd("members", "list a group's members with role and presence", _group_members)
    g.add_argument("group", help=group_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from parley.bench import main as bench

        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
