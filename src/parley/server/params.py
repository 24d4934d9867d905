"""Reading the parts of an HTTP request that are not the JSON body."""

from __future__ import annotations

from aiohttp import web

from parley.protocol.errors import InvalidRequest, Unauthorized
from parley.protocol.limits import MAX_INT


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or `Unauthorized`."""
    if not header:
        raise Unauthorized("missing 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("expected 'Authorization: Bearer <token>'")
    return token.strip()


def int_param(
    request: web.Request, name: str, *, lo: int, hi: int | None = None, default: int | None = None
) -> int | None:
    """An integer query parameter within [lo, hi], else `InvalidRequest` (422)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer") from None
    top = MAX_INT if hi is None else hi
    if not lo <= value <= top:
        raise InvalidRequest(f"{name} must be between {lo} and {top}")
    return value


def since_param(request: web.Request) -> int | None:
    return int_param(request, "since", lo=0)
