"""The phone page's first load: bytes on the wire for `/` and what it references, gzip accepted.

A core is started as `mobilesd serve` runs it (on loopback, no servers). The client is a phone
that already signed in (it sends the session cookie the login link sets) and has nothing
cached: it fetches `/` (following redirects, each hop counted), then every same-origin
`<script src>` and `<link href>` in the served HTML, all with `Accept-Encoding: gzip`. Bytes on
the wire are the status line, the response headers and the body as sent (compressed if the
core compressed it; chunked framing not counted). Request bytes are not counted. Assets that
those files load in turn (CSS `url()`, module imports, fetches) are not followed.

Until `mobilesd_core/api/static/` exists the row reads "not built yet" (no verdict).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

import mobilesd_core.api
from mobilesd_core.api.auth import SESSION_COOKIE

from .api_load import TOKEN, serving_core
from .report import Row, say

AIM_BYTES = 60 * 1024
STATIC = Path(mobilesd_core.api.__file__).resolve().parent / "static"
HEADERS = {
    "Accept-Encoding": "gzip",
    "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
    "User-Agent": "Mozilla/5.0 (Linux; Android 14) MobileSD-bench",
}
FIGURE = "page first load, bytes on the wire (gzip)"


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.found.append(value)


@dataclass(frozen=True)
class Fetched:
    path: str
    status: int
    wire: int  # status line + headers + body as sent
    body: int  # body as sent
    unpacked: int  # body after decoding
    encoding: str
    location: str | None  # a redirect's target
    text: str  # the body, when it is HTML


async def _fetch(client: httpx.AsyncClient, path: str) -> Fetched:
    async with client.stream("GET", path) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        head = len(f"{response.http_version} {response.status_code} {response.reason_phrase}\r\n")
        head += sum(len(k) + len(v) + 4 for k, v in response.headers.raw) + 2
        encoding = response.headers.get("Content-Encoding", "")
        body = zlib.decompress(raw, wbits=31) if encoding == "gzip" else raw
        content_type = response.headers.get("Content-Type", "")
        text = body.decode("utf-8", "replace") if "html" in content_type else ""
        return Fetched(
            path=path,
            status=response.status_code,
            wire=head + len(raw),
            body=len(raw),
            unpacked=len(body),
            encoding=encoding,
            location=response.headers.get("Location"),
            text=text,
        )


async def first_load(base: str) -> list[Fetched]:
    """`/` (with its redirects), then every same-origin script and link it references."""
    async with httpx.AsyncClient(base_url=base, headers=HEADERS) as client:
        # Signed in as the phone is (the link sets the session cookie); not part of the load.
        signed_in = await client.get("/login", params={"token": TOKEN})
        assert signed_in.status_code == 303 and SESSION_COOKIE in client.cookies
        fetched: list[Fetched] = []
        path = "/"
        for _ in range(5):
            page = await _fetch(client, path)
            fetched.append(page)
            if page.status not in (301, 302, 303, 307, 308) or not page.location:
                break
            url = urlsplit(urljoin(base + path, page.location))
            path = url.path + (f"?{url.query}" if url.query else "")
        else:
            return fetched  # a redirect loop
        if page.status != 200:
            return fetched
        parser = _References()
        parser.feed(page.text)
        origin = urlsplit(base)
        seen: set[str] = set()
        for ref in parser.found:
            url = urlsplit(urljoin(base + page.path, ref))
            if url.scheme not in ("http", "https") or url.netloc != origin.netloc:
                continue  # data:, other origins: not this server's bytes
            target = url.path + (f"?{url.query}" if url.query else "")
            if target not in seen:
                seen.add(target)
                fetched.append(await _fetch(client, target))
        return fetched


async def run(root: Path) -> list[Row]:
    if not STATIC.is_dir():
        say(f"page: {STATIC} does not exist yet")
        return [Row(FIGURE, "not built yet", aim=f"< {AIM_BYTES // 1024} KB")]
    async with serving_core(root / "page") as (_, base):
        fetched = await first_load(base)
    for f in fetched:
        say(
            f"  page: GET {f.path} -> {f.status}, {f.wire} B on the wire "
            f"({f.body} B body{', ' + f.encoding if f.encoding else ', not compressed'}, "
            f"{f.unpacked} B unpacked)"
        )
    failed = [f for f in fetched if f.status >= 400 or f.status < 200]
    if failed or fetched[-1].status != 200:
        bad = ", ".join(f"GET {f.path}: {f.status}" for f in failed or fetched[-1:])
        return [
            Row(
                FIGURE,
                "not served yet" if fetched[0].status == 404 else "broken",
                aim=f"< {AIM_BYTES // 1024} KB",
                ratio=f"static/ exists; {bad}",
                ok=None if fetched[0].status == 404 else False,
            )
        ]
    wire = sum(f.wire for f in fetched)
    unpacked = sum(f.unpacked for f in fetched)
    plain = [f.path for f in fetched if f.status == 200 and not f.encoding and f.unpacked > 1024]
    rows = [
        Row(
            FIGURE,
            f"{wire / 1024:.1f} KB",
            aim=f"< {AIM_BYTES // 1024} KB",
            ratio=f"{wire / AIM_BYTES:.0%} of aim; {len(fetched)} responses, "
            f"{unpacked / 1024:.1f} KB unpacked",
            ok=wire < AIM_BYTES,
        )
    ]
    if plain:
        rows.append(Row("page: files over 1 KB sent without gzip", ", ".join(plain)))
    return rows
