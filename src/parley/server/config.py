"""`parley serve` settings: each flag also reads `PARLEY_<NAME>` from the environment."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    presence_online_delay: float = 2.0
    presence_offline_grace: float = 5.0
    #: Sustained messages per second per device; the bucket holds ten seconds'
    #: worth, so the default (100/s, bursts of 1000) never refuses 50/s with
    #: bursts of 500. 0 turns the limit off (benchmarks).
    send_rate_limit: float = 100.0
    #: Browser origins allowed on the WebSocket handshake; empty means the
    #: server's own origin only. Non-browser clients send no Origin at all.
    allowed_origins: tuple[str, ...] = ()
    allow_insecure_push: bool = False
    #: A generic push gateway (relay to APNs/FCM) that gets a JSON POST per notification.
    push_gateway: str | None = None
    #: Include a preview of the message text in notifications (off: privacy).
    push_preview: bool = True
    #: Open WebSockets per user (all devices together).
    max_connections_per_user: int = 64
    #: Account creations and logins per client address per minute (burst the same).
    auth_rate_limit: float = 600.0
    #: Failed logins per account before it is throttled (one more every 10 s).
    login_failures_burst: int = 10
    max_group_members: int = 256
    #: Argon2id parameters (OWASP: 19 MiB, 2 iterations, 1 lane).
    argon2_memory_kib: int = 19 * 1024
    argon2_time_cost: int = 2


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("PARLEY_" + name.upper().replace("-", "_"), default)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the contract's `parley serve` flags, defaulting from `PARLEY_*` variables."""
    d = ServerConfig()

    def opt(flag: str, type_: type, default: object, help_: str) -> None:
        env = _env(flag.lstrip("-"))
        parser.add_argument(flag, type=type_, default=type_(env) if env else default, help=help_)

    opt("--host", str, d.host, "address to listen on")
    opt("--port", int, d.port, "port to listen on")
    opt("--data-dir", Path, d.data_dir, "where the embedded database lives")
    opt("--presence-online-delay", float, d.presence_online_delay, "seconds before 'online'")
    opt("--presence-offline-grace", float, d.presence_offline_grace, "seconds before 'offline'")
    opt("--send-rate-limit", float, d.send_rate_limit, "messages/s per device (0: off)")
    opt("--allowed-origins", str, "", "comma-separated browser origins for the WebSocket")
    opt("--max-connections-per-user", int, d.max_connections_per_user, "open sockets per user")
    opt("--auth-rate-limit", float, d.auth_rate_limit, "logins+signups per address per minute")
    opt("--max-group-members", int, d.max_group_members, "largest group allowed")
    opt("--push-gateway", str, None, "URL of a push gateway relaying to APNs/FCM")
    no_preview = _env("no-push-preview", "")
    parser.add_argument(
        "--no-push-preview",
        action="store_true",
        default=no_preview not in ("", "0", "false", None),
        help="leave message text out of push notifications",
    )
    insecure = _env("allow-insecure-push", "")
    parser.add_argument(
        "--allow-insecure-push",
        action="store_true",
        default=insecure not in ("", "0", "false", None),
        help="allow http and private-address push endpoints (tests, local development)",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    origins = tuple(o.strip().rstrip("/") for o in args.allowed_origins.split(",") if o.strip())
    return ServerConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        presence_online_delay=args.presence_online_delay,
        presence_offline_grace=args.presence_offline_grace,
        send_rate_limit=args.send_rate_limit,
        allowed_origins=origins,
        allow_insecure_push=args.allow_insecure_push,
        max_connections_per_user=args.max_connections_per_user,
        auth_rate_limit=args.auth_rate_limit,
        max_group_members=args.max_group_members,
        push_gateway=args.push_gateway or None,
        push_preview=not args.no_push_preview,
    )
