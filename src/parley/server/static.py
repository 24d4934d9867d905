"""Serve the web client (`src/parley/web`) with strict security headers.

Layout of the URL space:

- `/` is the single page (`index.html`); the client routes with the URL hash,
  so no other page path is needed.
- `/sw.js` and `/manifest.webmanifest` live at the root: a service worker only
  controls pages at or below its own path.
- everything else in the web directory is under `/app/...`.

Every response carries a Content-Security-Policy without inline script or
style, `nosniff`, no referrer and no framing. Files are small, so they are read
whole and revalidated with an ETag (`Cache-Control: no-cache`), which keeps a
deployed change visible at once while a reload costs a 304.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "connect-src 'self' ws: wss:",
        "img-src 'self' data:",
        "style-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "worker-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".webmanifest": "application/manifest+json",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}


def _resolve(relative: str) -> Path:
    """The file under WEB_DIR named by `relative`, or 404 (never a path outside it)."""
    root = WEB_DIR.resolve()
    try:
        path = (root / relative).resolve()
        path.relative_to(root)
    except (ValueError, OSError):
        raise web.HTTPNotFound() from None
    if not path.is_file() or path.suffix not in CONTENT_TYPES:
        raise web.HTTPNotFound()
    return path


def file_response(request: web.Request, relative: str) -> web.Response:
    path = _resolve(relative)
    data = path.read_bytes()
    etag = '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
    headers = dict(SECURITY_HEADERS)
    headers["Cache-Control"] = "no-cache"
    headers["ETag"] = etag
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = CONTENT_TYPES[path.suffix]
    return web.Response(body=data, headers=headers)


async def _index(request: web.Request) -> web.Response:
    return file_response(request, "index.html")


async def _service_worker(request: web.Request) -> web.Response:
    response = file_response(request, "sw.js")
    response.headers["Service-Worker-Allowed"] = "/"
    return response


async def _manifest(request: web.Request) -> web.Response:
    return file_response(request, "manifest.webmanifest")


async def _asset(request: web.Request) -> web.Response:
    return file_response(request, request.match_info["path"])


def install_web(app: web.Application) -> None:
    """Serve the single-page web client at `/` and its assets under `/app/`."""
    app.router.add_get("/", _index)
    app.router.add_get("/index.html", _index)
    app.router.add_get("/sw.js", _service_worker)
    app.router.add_get("/manifest.webmanifest", _manifest)
    app.router.add_get("/app/{path:.+}", _asset)
