"""The route table, and the OpenAPI document generated from it.

Each route names its request and response types; the same msgspec Structs
validate requests, encode responses and produce the schema, so the document
cannot drift from what the server does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from parley import __version__
from parley.protocol.models import ErrorResponse

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    status: int = 200
    body: Any = None
    response: Any = None
    auth: bool = True
    query: dict[str, str] = field(default_factory=dict)
    errors: tuple[int, ...] = ()


def build_openapi(routes: list[Route]) -> dict[str, Any]:
    types = [ErrorResponse]
    for r in routes:
        types += [t for t in (r.body, r.response) if t is not None]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    schema_of = dict(zip(map(id, types), schemas, strict=True))
    error_schema = schema_of[id(ErrorResponse)]
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"summary": r.summary, "responses": {}}
        if r.response is not None:
            op["responses"][str(r.status)] = {
                "description": "success",
                "content": {"application/json": {"schema": schema_of[id(r.response)]}},
            }
        else:
            op["responses"][str(r.status)] = {"description": "success"}
        for status in sorted({*r.errors, 400, 422, *([401] if r.auth else [])}):
            op["responses"][str(status)] = {
                "description": "error",
                "content": {"application/json": {"schema": error_schema}},
            }
        if r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_of[id(r.body)]}},
            }
        params = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in _path_params(r.path)
        ]
        params += [
            {"name": n, "in": "query", "required": False, "description": d, "schema": {}}
            for n, d in r.query.items()
        ]
        if params:
            op["parameters"] = params
        if r.auth:
            op["security"] = [{"bearer": []}]
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Parley", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]
