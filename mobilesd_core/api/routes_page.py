"""The phone page: `GET /` and its assets under `/static/`.

The page itself is public (it holds no data); everything it shows comes from the token-guarded
API, and when that answers 401 the page shows its sign-in form. Only the files in `ASSETS` are
served: the name is looked up in a fixed table, never joined onto a path.

Caching: `index.html` is revalidated on every load (`no-cache` + ETag), and it names its assets
with a content hash (`/static/app.js?v=<hash>`), so those are cached for a year as immutable; an
asset asked for without the current hash gets `no-cache` + ETag instead. Text is gzipped when the
client accepts it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from aiohttp import web
from aiohttp.web_response import ContentCoding

STATIC_DIR = Path(__file__).parent / "static"

ASSETS = {
    "app.css": "text/css",
    "app.js": "text/javascript",
    "icon.svg": "image/svg+xml",
}
IMMUTABLE = "public, max-age=31536000, immutable"

routes = web.RouteTableDef()


@dataclass(frozen=True)
class _File:
    body: bytes
    content_type: str
    etag: str

    @property
    def version(self) -> str:
        return self.etag[:12]


def _load(name: str, content_type: str) -> _File:
    body = (STATIC_DIR / name).read_bytes()
    return _File(body, content_type, hashlib.sha256(body).hexdigest()[:20])


@cache
def _assets() -> dict[str, _File]:
    return {name: _load(name, kind) for name, kind in ASSETS.items()}


@cache
def _index() -> _File:
    text = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    for name, asset in _assets().items():
        text = text.replace(f"/static/{name}", f"/static/{name}?v={asset.version}")
    body = text.encode()
    return _File(body, "text/html", hashlib.sha256(body).hexdigest()[:20])


def _serve(request: web.Request, file: _File, cache_control: str) -> web.Response:
    etag = f'"{file.etag}"'
    headers = {"Cache-Control": cache_control, "ETag": etag, "Vary": "Accept-Encoding"}
    if etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
        return web.Response(status=304, headers=headers)
    response = web.Response(body=file.body, headers=headers)
    response.content_type = file.content_type
    if file.content_type.startswith("text/") or file.content_type.endswith("+xml"):
        response.charset = "utf-8"
        if "gzip" in request.headers.get("Accept-Encoding", "").lower():
            response.enable_compression(ContentCoding.gzip)
    return response


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    return _serve(request, _index(), "no-cache")


@routes.get("/static/{name}")
async def static_file(request: web.Request) -> web.Response:
    asset = _assets().get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound(text="no such file")
    current = request.query.get("v") == asset.version
    return _serve(request, asset, IMMUTABLE if current else "no-cache")
