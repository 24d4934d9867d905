"""Reading the parts of an HTTP request that are not the JSON body."""

from __future__ import annotations

from aiohttp import web

from parley.protocol.errors import InvalidRequest, Unauthorized


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
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise InvalidRequest(f"{name} must be {bound}")
    return value


def since_param(request: web.Request) -> int | None:
    return int_param(request, "since", lo=0)
