"""Running: /healthz answers, /openapi.json describes every endpoint of the contract."""

from __future__ import annotations

import re

import aiohttp

from tests.e2e.wire import call
from tests.harness import ServerProcess

#: (method, path) of the core HTTP endpoints, path parameters as {}.
CORE_ENDPOINTS = [
    ("post", "/v1/accounts"),
    ("post", "/v1/sessions"),
    ("delete", "/v1/sessions/current"),
    ("get", "/v1/users/{}"),
    ("get", "/v1/users"),
    ("post", "/v1/conversations"),
    ("get", "/v1/conversations"),
    ("get", "/v1/conversations/{}"),
    ("post", "/v1/conversations/{}/messages"),
    ("get", "/v1/conversations/{}/messages"),
    ("post", "/v1/conversations/{}/read"),
    ("get", "/v1/events"),
]

#: (method, path) of every HTTP endpoint in protocol-v1, path parameters as {}.
CONTRACT_ENDPOINTS = [
    ("post", "/v1/accounts"),
    ("post", "/v1/sessions"),
    ("delete", "/v1/sessions/current"),
    ("get", "/v1/users/{}"),
    ("get", "/v1/users"),
    ("put", "/v1/contacts/{}"),
    ("delete", "/v1/contacts/{}"),
    ("get", "/v1/contacts"),
    ("get", "/v1/presence"),
    ("post", "/v1/conversations"),
    ("get", "/v1/conversations"),
    ("get", "/v1/conversations/{}"),
    ("patch", "/v1/conversations/{}"),
    ("post", "/v1/conversations/{}/members"),
    ("delete", "/v1/conversations/{}/members/{}"),
    ("post", "/v1/conversations/{}/messages"),
    ("get", "/v1/conversations/{}/messages"),
    ("post", "/v1/conversations/{}/read"),
    ("get", "/v1/events"),
    ("get", "/v1/push/vapid-public-key"),
    ("post", "/v1/push/subscriptions"),
    ("delete", "/v1/push/subscriptions"),
]


async def test_healthz(shared_server: ServerProcess, http: aiohttp.ClientSession) -> None:
    r = await call(http, "GET", shared_server.url + "/healthz")
    assert r.status == 200, r
    assert r.body == {"status": "ok"}


async def openapi_operations(http: aiohttp.ClientSession, base: str) -> dict[str, set[str]]:
    r = await call(http, "GET", base + "/openapi.json")
    assert r.status == 200, r
    doc = r.body
    assert isinstance(doc, dict), doc
    assert "openapi" in doc, sorted(doc)
    paths = doc.get("paths")
    assert isinstance(paths, dict) and paths, doc
    normalized: dict[str, set[str]] = {}
    for path, ops in paths.items():
        key = re.sub(r"\{[^}]*\}", "{}", path)
        normalized.setdefault(key, set()).update(k.lower() for k in ops)
    return normalized


async def test_openapi_lists_core_endpoints(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    ops = await openapi_operations(http, shared_server.url)
    missing = [(m, p) for m, p in CORE_ENDPOINTS if m not in ops.get(p, set())]
    assert not missing, f"not in /openapi.json: {missing}; has {sorted(ops)}"


async def test_openapi_lists_every_contract_endpoint(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    ops = await openapi_operations(http, shared_server.url)
    missing = [(m, p) for m, p in CONTRACT_ENDPOINTS if m not in ops.get(p, set())]
    assert not missing, f"not in /openapi.json: {missing}; has {sorted(ops)}"
