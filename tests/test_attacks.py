"""Attacks on the core: credentials, path traversal, cross-site posts, markup injection in the
TUI, oversized, slow-dripped and deeply nested bodies, hundreds of open event streams, and
floods that exhaust the file descriptors of a real `mobilesd serve`.

Nothing leaks (no file outside its folder is read, written or deleted; no token is echoed),
nothing escapes (user text is shown as text), and the service stays up and responsive.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.text import Text
from textual.widgets._data_table import default_cell_formatter

from mobilesd_core import logflood
from mobilesd_core.api import bodies
from mobilesd_core.api.app import create_app, runner_options
from mobilesd_core.api.auth import THROTTLE
from mobilesd_core.civitai.filenames import UnsafePath, inside, safe_filename
from mobilesd_core.forge.simulator.server import free_port
from mobilesd_tui.jobtext import detail_text, row_cells
from mobilesd_tui.widgets.servers import server_cells

from .conftest import TOKEN, Harness, fast_settings, wait_for
from .helpers.auth import anonymous, cookie_header, login
from .helpers.images import blank_png, png_bytes
from .helpers.processes import rss_mib
from .helpers.tui_fakes import NOW, sample_servers

PROTECTED = ("/api/", "/gallery_files/")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def router_routes(tmp_path: Path, *, protected_only: bool = True) -> list[tuple[str, str]]:
    """(method, path) of every protected route the app registers (or every route at all),
    parameters filled in."""
    app = create_app(fast_settings(tmp_path / "routes"))
    routes = set()
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD" or (protected_only and not canonical.startswith(PROTECTED)):
            continue
        path = re.sub(r"\{filename\}", "x.png", canonical)
        routes.add((route.method, re.sub(r"\{[^}]+\}", "x", path)))
    assert len(routes) >= 25
    return sorted(routes)


# --- credentials --------------------------------------------------------------------------------


async def test_every_route_refuses_missing_wrong_and_misplaced_tokens(
    harness: Harness, tmp_path: Path
) -> None:
    """Derived from the router, so a new route is covered the day it is added."""
    import base64

    basic = base64.b64encode(f"user:{TOKEN}".encode()).decode()
    # Hundreds of wrong tokens from one address: past ten the throttle checks one a second,
    # which is its job (tests/test_auth.py) but not this test's subject.
    harness.server.app[THROTTLE].interval = 0.001
    variants: list[tuple[str, dict[str, str], dict[str, str]]] = [
        ("none", {}, {}),
        ("wrong bearer", {"Authorization": "Bearer wrong-token"}, {}),
        ("token with a suffix", {"Authorization": f"Bearer {TOKEN}x"}, {}),
        ("token as Basic", {"Authorization": f"Basic {basic}"}, {}),
        ("raw token as the cookie", {"Cookie": f"mobilesd_session={TOKEN}"}, {}),
        ("token in the query", {}, {"token": TOKEN, "access_token": TOKEN}),
    ]
    for method, path in router_routes(tmp_path):
        for name, headers, params in variants:
            async with anonymous(harness) as http:
                response = await http.request(method, path, headers=headers, params=params, json={})
            assert response.status_code in (401, 429), (method, path, name, response.text)
            assert response.json()["error"]["code"] in ("unauthorized", "too_many_attempts")
            assert TOKEN not in response.text
    assert harness.core.store.live_jobs() == []
    assert harness.core.registry.runtimes == {}


async def test_cross_site_posts_with_the_cookie_are_refused_on_every_route(
    harness: Harness, tmp_path: Path
) -> None:
    session = await login(harness)
    changing = [(m, p) for m, p in router_routes(tmp_path) if m not in SAFE_METHODS]
    assert len(changing) >= 12
    for method, path in changing:
        for origin in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},  # a plain HTML form post under our no-referrer policy
            {"Referer": "http://evil.example/page"},
            {},  # neither: a form from a page that strips both
        ):
            async with anonymous(harness) as http:
                form = await http.request(
                    method,
                    path,
                    content=b"prompt=x",
                    headers={
                        **cookie_header(session),
                        **origin,
                        "Content-Type": "application/x-www-form-urlencoded",
                    },
                )
            assert form.status_code == 403, (method, path, origin, form.text)
            assert form.json()["error"]["code"] == "csrf"
    assert harness.core.store.live_jobs() == []
    assert harness.core.registry.runtimes == {}


# --- path traversal -----------------------------------------------------------------------------

TRAVERSALS = [
    "..%2Fsecret.png",
    "%2e%2e%2fsecret.png",
    "%2E%2E/secret.png",
    "..%5Csecret.png",
    "%2Fetc%2Fpasswd",
    "....%2F%2Fsecret.png",
    "x.png%00.jpg",
    "..%252Fsecret.png",
    "%2e%2e%2f%2e%2e%2fdata%2faccess_token",
    ".thumbs%2F..%2F..%2Fsecret.png",
]


async def test_path_traversal_in_gallery_names_reads_and_deletes_nothing_outside(
    harness: Harness,
) -> None:
    root = harness.settings.gallery_path.parent
    secret = root / "secret.png"
    secret.write_bytes(b"\x89PNG SECRET-BYTES")
    (harness.settings.data_path / "access_token").write_text(TOKEN)
    base = str(harness.api.base_url)
    for raw in TRAVERSALS:
        for method, prefix in (
            ("GET", "/gallery_files/"),
            ("DELETE", "/api/v1/gallery/images/"),
            ("GET", "/gallery_files/"),
        ):
            # Sent as written: httpx would otherwise normalise the dots away.
            url = httpx.URL(base + prefix + "PLACEHOLDER").copy_with(
                raw_path=(prefix + raw).encode()
            )
            response = await harness.api.request(method, url, params={"thumb": "1"})
            assert response.status_code in (400, 404), (method, raw, response.status_code)
            assert b"SECRET-BYTES" not in response.content
            assert TOKEN not in response.text
    assert secret.read_bytes() == b"\x89PNG SECRET-BYTES"
    assert (harness.settings.data_path / "access_token").exists()


async def test_links_planted_in_the_gallery_serve_nothing_from_outside(
    harness: Harness,
) -> None:
    """What a user of the gallery share can plant: a thumbnail that links out (newer than its
    image, so it would count as made), a sidecar swapped for a link, `.thumbs` itself a link."""
    root = harness.settings.gallery_path
    outside = root.parent / "outside"
    outside.mkdir()
    secret = outside / "secret.jpg"
    secret.write_bytes(b"\xff\xd8 SECRET-BYTES")
    later = time.time() + 3600
    os.utime(secret, (later, later))
    (outside / "secret.json").write_text(
        '{"mobilesd_job_id": "X", "generation_params": {"prompt": "SECRET-PROMPT"}}'
    )
    await harness.add_sim("gpu1")
    job_id = await harness.submit(batch_size=2)
    first, second = (await harness.wait_status(job_id, "completed"))["result_details"]["images"]

    link = root / ".thumbs" / f"{first}.jpg"
    link.symlink_to(secret)
    sidecar = root / f"{second[:-4]}.json"
    sidecar.unlink()
    sidecar.symlink_to(outside / "secret.json")

    thumb = await harness.api.get(f"/gallery_files/{first}", params={"thumb": "1"})
    assert thumb.status_code == 200
    assert b"SECRET" not in thumb.content and thumb.content[:2] == b"\xff\xd8"
    assert not link.is_symlink() and link.is_file()  # a thumbnail made here took its place
    archive = await harness.api.get("/api/v1/gallery/archive", params={"job_ids": job_id})
    assert archive.status_code == 200
    assert b"SECRET" not in archive.content
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        names = sorted(n.split("/", 1)[1] for n in zf.namelist())
    assert names == sorted([first, second, f"{first[:-4]}.json"])  # the linked sidecar left out

    # `.thumbs` swapped for a link to a folder outside that holds a "thumbnail".
    (root / ".thumbs").rename(root.parent / "old-thumbs")
    (outside / f"{second}.jpg").write_bytes(secret.read_bytes())
    os.utime(outside / f"{second}.jpg", (later, later))
    (root / ".thumbs").symlink_to(outside)
    thumb = await harness.api.get(f"/gallery_files/{second}", params={"thumb": "1"})
    assert thumb.status_code >= 400 and b"SECRET" not in thumb.content
    assert secret.read_bytes() == b"\xff\xd8 SECRET-BYTES"
    assert sorted(p.name for p in outside.iterdir()) == sorted(
        ["secret.jpg", "secret.json", f"{second}.jpg"]
    )


async def test_images_over_the_pixel_cap_are_listed_without_thumbnails(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Decompression bombs dropped into the gallery (under 400 KB on disk, 144 and 400 M pixels):
    listed with their size, a quick 404 `no_thumbnail` for their thumbnails (logged once), and
    every other thumbnail still made."""
    root = harness.settings.gallery_path
    bombs = {"big.png": 12000, "huge.png": 20000}
    for name, edge in bombs.items():
        (root / name).write_bytes(blank_png(edge, edge))
    (root / "fine.png").write_bytes(png_bytes(parameters="a fox\nSteps: 4, Seed: 1, Size: 64x72"))
    await harness.core.gallery.rescan()

    listing = (await harness.api.get("/api/v1/gallery/images")).json()
    sizes = {e["filename"]: (e["width"], e["height"]) for e in listing["images"]}
    assert sizes == {"big.png": (12000, 12000), "huge.png": (20000, 20000), "fine.png": (64, 72)}
    for name, edge in bombs.items():
        for _ in range(3):
            start = time.monotonic()
            answer = await harness.api.get(f"/gallery_files/{name}", params={"thumb": "1"})
            took = time.monotonic() - start
            print(f"{name} thumbnail: {answer.status_code} in {took * 1000:.0f} ms")
            assert took < 2
            assert answer.status_code == 404
            error = answer.json()["error"]
            assert error["code"] == "no_thumbnail"
            assert f"{edge}x{edge}" in error["message"] and "M pixels" in error["message"]
        said = [
            r for r in caplog.records if "no thumbnail" in r.getMessage() and name in r.getMessage()
        ]
        assert len(said) == 1, said
        image = await harness.api.get(f"/gallery_files/{name}")  # the image itself still is
        assert image.status_code == 200 and image.content == (root / name).read_bytes()
    thumb = await harness.api.get("/gallery_files/fine.png", params={"thumb": "1"})
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    assert sorted(p.name for p in (root / ".thumbs").iterdir()) == ["fine.png.jpg"]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=80))
def test_civitai_file_names_always_land_inside_the_folder(raw: str) -> None:
    folder = Path("/srv/models/lora")
    name = safe_filename(
        raw, extensions=frozenset({".safetensors"}), default_ext=".safetensors", fallback_stem="m"
    )
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".", "..") and not name.startswith("..")
    try:
        path = inside(folder, name)
    except UnsafePath:
        return
    assert path.parent == folder


async def test_inbox_symlink_to_a_file_outside_is_not_followed(tmp_path: Path) -> None:
    from .conftest import stop_harness
    from .helpers.inbox import inbox_settings, settled, start_paused

    settings = inbox_settings(tmp_path, "polling")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = outside / "job.yaml"
    target.write_text("prompt: from outside the inbox\n")
    h = await start_paused(settings)
    try:
        (settings.inbox_path / "link.yaml").symlink_to(target)
        (settings.inbox_path / "real.yaml").write_text("prompt: a real one\n")
        await wait_for(lambda: settled(h, "real.yaml"), what="the real file")
        await h.core.inbox.rescan_now()  # a full scan has seen the link too
        prompts = [j["generation_params"]["prompt"] for j in h.core.store.live_jobs()]
        assert prompts == ["a real one"]
        assert target.read_text() == "prompt: from outside the inbox\n"  # not moved, not read
        assert (settings.inbox_path / "link.yaml").is_symlink()
    finally:
        await stop_harness(h)


# --- markup injection in the terminal UI ----------------------------------------------------------

MARKUP = "[bold red]x[/] [@click=app.quit]quit[/] [link=http://evil.example]y[/link]"


def rendered(cell: Any) -> Text:
    text = default_cell_formatter(cell)
    assert isinstance(text, Text)
    return text


def test_tui_shows_user_text_literally_in_tables_and_details() -> None:
    job = {
        "mobilesd_job_id": "01JD3FAKE00000000000000001",
        "status": "failed",
        "creation_timestamp": "2026-11-24T11:00:00.000Z",
        "assigned_server_alias": MARKUP,
        "generation_params": {"prompt": MARKUP, "checkpoint_name": MARKUP},
        "result_details": {"error": MARKUP},
    }
    cells = [rendered(c) for c in row_cells(job, NOW, 200)]
    prompt = cells[-1]
    assert prompt.plain == MARKUP
    for cell in cells:
        assert not any(
            "@click" in str(span.style) or "link" in str(span.style) for span in cell.spans
        )
    assert cells[3].plain == MARKUP  # the server column (after status, age, batch)
    assert MARKUP in detail_text(job, NOW).plain
    server = {**sample_servers()[0], "api_url": "http://h/[b]x[/b]"}
    server["status"] = {**server.get("status", {}), "current_checkpoint": MARKUP}
    plain = [rendered(c).plain for c in server_cells(server, 200)]
    assert "http://h/[b]x[/b]" in plain


async def test_tui_notifications_and_queue_render_markup_literally() -> None:
    from .helpers.tui_fakes import FakeApi, fake_app, fake_job, settle

    job = fake_job(1, "failed", result_details={"error": MARKUP})
    job["generation_params"]["prompt"] = MARKUP
    app = fake_app("queue", api=FakeApi(jobs=[job]))
    async with app.run_test(size=(160, 32)) as pilot:
        await settle(pilot)
        table = app.query_one("DataTable")
        row = table.get_row(job["mobilesd_job_id"])
        assert rendered(row[-1]).plain.startswith("[bold red]x[/]")
        app.notify(f"{MARKUP}: {MARKUP}", title="Job failed")
        await pilot.pause()
        (note,) = [n for n in app._notifications if MARKUP in n.message]
        assert note.markup is False
        assert app.is_running  # [@click=app.quit] did nothing


# --- bodies: too large, too slow ------------------------------------------------------------------


async def test_oversized_body_is_413_in_the_error_shape(harness: Harness) -> None:
    prompt = "x" * (2 * 1024 * 1024)
    response = await harness.api.post(
        "/api/v1/generate", json={"generation_params": {"prompt": prompt}}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert harness.core.store.live_jobs() == []
    assert (await harness.api.get("/healthz")).status_code == 200


async def test_a_body_dripped_a_byte_at_a_time_does_not_hold_a_handler(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bodies, "BODY_READ_TIMEOUT", 1.0)
    body = b'{"generation_params": {"prompt": "slow"}}'
    host, port = harness.server.host, harness.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /api/v1/generate HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    started = time.monotonic()

    async def drip() -> None:
        for byte in body:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)

    dripper = asyncio.create_task(drip())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        answer = head + await asyncio.wait_for(reader.read(), 5)  # the core hangs up
        elapsed = time.monotonic() - started
    finally:
        dripper.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout" in answer and b"did not arrive within 1 s" in answer
    assert elapsed < 3.5
    assert harness.core.store.live_jobs() == []
    assert (await harness.api.get("/healthz")).status_code == 200


async def test_headers_dripped_slowly_are_cut_off_but_a_long_event_stream_is_not(
    tmp_path: Path,
) -> None:
    """The connection options `mobilesd serve` runs with, with a short idle time: a client that
    never finishes its headers is disconnected; an event stream open longer still delivers."""
    app = create_app(fast_settings(tmp_path))
    runner = web.AppRunner(app, **runner_options(idle_seconds=0.5))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://{host}:{port}", headers=auth, timeout=10) as api,
            api.stream("GET", "/api/v1/events") as stream,
        ):
            lines = stream.aiter_lines()
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()

            async def drip() -> None:
                for _ in range(200):
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.05)

            dripper = asyncio.create_task(drip())
            try:
                answer = await asyncio.wait_for(reader.read(), 8)  # b"": hung up on
                elapsed = time.monotonic() - started
            finally:
                dripper.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await dripper
                writer.close()
            assert answer == b"" and elapsed < 5, (answer[:200], elapsed)

            # The stream has been open longer than the idle time: it still delivers.
            response = await api.post(
                "/api/v1/generate", json={"generation_params": {"prompt": "still here"}}
            )
            assert response.status_code == 202, response.text

            async def job_event() -> None:
                async for line in lines:
                    if line == "event: job":
                        return

            await asyncio.wait_for(job_event(), 10)
    finally:
        await runner.cleanup()


# --- hundreds of event streams --------------------------------------------------------------------


async def test_300_open_event_streams_leave_the_core_responsive(harness: Harness) -> None:
    await harness.add_sim("gpu1")
    host, port = harness.server.host, harness.server.port
    fds_before = len(os.listdir("/proc/self/fd"))
    rss_before = rss_mib()

    async def open_stream() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        assert head.startswith(b"HTTP/1.1 200"), head
        return reader, writer

    streams = await asyncio.gather(*(open_stream() for _ in range(300)))
    try:
        await wait_for(lambda: harness.core.bus.subscriber_count >= 300, what="300 subscribers")
        started = time.monotonic()
        assert (await harness.api.get("/healthz")).status_code == 200
        healthz_s = time.monotonic() - started
        started = time.monotonic()
        job_id = await harness.submit()
        submit_s = time.monotonic() - started
        job = await harness.wait_status(job_id, "completed", "failed")
        assert job["status"] == "completed"
        # Every stream got the job's events (nobody was dropped for being slow).
        for reader, _ in streams[::50]:
            data = b""
            while b'"status":"completed"' not in data:
                data += await asyncio.wait_for(reader.read(65536), 10)
        rss_open = rss_mib()
        assert healthz_s < 1.0 and submit_s < 1.0, (healthz_s, submit_s)
        assert rss_open - rss_before < 100, (rss_before, rss_open)
    finally:
        for _, writer in streams:
            writer.close()
    await wait_for(lambda: harness.core.bus.subscriber_count == 0, what="streams to be released")
    await wait_for(
        lambda: len(os.listdir("/proc/self/fd")) <= fds_before + 5, what="sockets to be closed"
    )
    print(
        f"\n300 SSE streams: /healthz {healthz_s * 1000:.0f} ms, submit {submit_s * 1000:.0f} ms, "
        f"RSS {rss_before:.0f} -> {rss_open:.0f} MiB, fds {fds_before} -> "
        f"{len(os.listdir('/proc/self/fd'))}"
    )


# --- bodies on every route, strangers' bodies, descriptor floods ----------------------------------

FORM = b"Content-Type: application/x-www-form-urlencoded\r\n"


async def half_sent(
    host: str, port: int, method: str, path: str, extra: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose request promises 100 body bytes and sends 6 of them."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n".encode()
        + extra
        + b"\r\ntoken="
    )
    await writer.drain()
    return reader, writer


async def answer_and_hang_up(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the core sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout)


async def test_every_route_reads_its_body_within_the_deadline(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 item 1: only `read_json` had a deadline; `POST /login` (and any route that left
    a body unread) held the connection as long as the client dripped. Derived from the router,
    public routes included, so a new route is covered the day it is added."""
    monkeypatch.setattr(bodies, "BODY_READ_TIMEOUT", 0.5)
    routes = [*router_routes(tmp_path, protected_only=False), ("GET", "/nowhere")]
    assert ("POST", "/login") in routes and ("GET", "/healthz") in routes
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode() + FORM
    host, port = harness.server.host, harness.server.port

    async def one(method: str, path: str) -> tuple[bytes, float]:
        reader, writer = await half_sent(host, port, method, path, auth)
        started = time.monotonic()
        try:
            return await answer_and_hang_up(reader, 5), time.monotonic() - started
        finally:
            writer.close()

    results = await asyncio.gather(*(one(method, path) for method, path in routes))
    for (method, path), (answer, elapsed) in zip(routes, results, strict=True):
        assert answer.startswith(b"HTTP/1.1 408"), (method, path, answer[:300])
        assert b'"code": "body_timeout"' in answer, (method, path)
        assert elapsed < 3, (method, path, elapsed)
    assert harness.core.store.live_jobs() == []
    assert (await harness.api.get("/healthz")).status_code == 200


async def test_strangers_bodies_past_their_share_are_refused_at_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unauthenticated bodies share a few slots: one more is answered 503 and hung up on at once
    instead of holding a descriptor until the deadline. The owner's requests do not count."""
    monkeypatch.setattr(bodies, "BODY_READ_TIMEOUT", 1.5)
    gate = harness.server.app[bodies.READ_GATE]
    gate.limit = 3
    host, port = harness.server.host, harness.server.port
    held = [await half_sent(host, port, "POST", "/login", FORM) for _ in range(3)]
    try:
        await wait_for(lambda: gate.active == 3, what="three login bodies being read")
        reader, writer = await half_sent(host, port, "POST", "/login", FORM)
        started = time.monotonic()
        answer = await answer_and_hang_up(reader, 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:300]
        assert b'"code": "busy"' in answer and b"Retry-After: 1" in answer
        assert time.monotonic() - started < 1.0
        response = await harness.api.post(
            "/api/v1/generate", json={"generation_params": {"prompt": "the owner's job"}}
        )
        assert response.status_code == 202, response.text
        for held_reader, _ in held:
            assert (await answer_and_hang_up(held_reader, 5)).startswith(b"HTTP/1.1 408")
    finally:
        for _, held_writer in held:
            held_writer.close()
    assert gate.active == 0
    async with anonymous(harness) as http:
        assert (await http.post("/login", data={"token": TOKEN})).status_code == 303


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"generation_params": {"prompt": "x", "extra": '
        + b'{"a": ' * 500
        + b"1"
        + b"}" * 500
        + b"}}",
        b'{"generation_params": {"prompt": "x", "extra": ' + b"[" * 31 + b"]" * 31 + b"}}",
    ],
    ids=["beyond-the-parser", "beyond-serialisation", "just-too-deep"],
)
async def test_deeply_nested_json_is_a_400(harness: Harness, body: bytes) -> None:
    """Issue 15 item 12: these answered 500 with a traceback (RecursionError in the parser,
    "Maximum serialization depth exceeded" when storing the job)."""
    response = await harness.api.post("/api/v1/generate", content=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_json" and "deeper than 32 levels" in error["message"]
    nested = {"a": [{"b": [1, 2]}]}
    fine = await harness.api.post(
        "/api/v1/generate", json={"generation_params": {"prompt": "x", "extra": nested}}
    )
    assert fine.status_code == 202, fine.text


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def serve_with_few_descriptors(
    tmp_path: Path, limit: int, body_timeout: float
) -> tuple[asyncio.subprocess.Process, int, Path]:
    """`mobilesd serve` in a process limited to `limit` open files, with a short body deadline;
    its log (stdout and stderr) goes to a file. Returns the process, its port and the log."""
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MOBILESD_TOKEN": TOKEN,
        "CONFIG_DATA_PATH": str(tmp_path / "data"),
        "STABLE_DIFFUSION_SAVE_PATH": str(tmp_path / "out"),
        "INBOX_PATH": str(tmp_path / "inbox"),
    }
    code = (
        f"import mobilesd_core.api.bodies as b; b.BODY_READ_TIMEOUT = {body_timeout!r}; "
        "from mobilesd_core.cli import main; raise SystemExit(main(['serve', '--no-qr']))"
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            env=env,
            stdout=out,
            stderr=out,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
        )

    async def up() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        except httpx.HTTPError:
            assert proc.returncode is None, log.read_text()
            return False

    await wait_for(up, timeout=30, what="serve to answer")
    return proc, port, log


async def test_a_flood_of_slow_logins_leaves_the_owner_served_and_the_log_small(
    tmp_path: Path,
) -> None:
    """Issue 15 item 1, as reproduced: `mobilesd serve` with few file descriptors, hundreds of
    half-sent login bodies. They used to be held forever: descriptors ran out, the owner's
    request timed out and asyncio logged the failing accept() ~9,500 times a second. Then,
    connections that send nothing (held until the idle timeout) exhaust the descriptors anyway:
    the log must still stay small, and the owner gets in as soon as descriptors are free."""
    deadline = 2.0
    proc, port, log = await serve_with_few_descriptors(tmp_path, 48, deadline)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        started = time.monotonic()
        flood = [await half_sent("127.0.0.1", port, "POST", "/login", FORM) for _ in range(150)]
        flood_sent_s = time.monotonic() - started
        async with httpx.AsyncClient(timeout=20, headers=bearer) as owner:
            response = await owner.get(f"http://127.0.0.1:{port}/api/v1/queue")
        owner_s = time.monotonic() - started - flood_sent_s
        assert response.status_code == 200
        # Bounded: a connection the full kernel queue dropped waits for TCP's retries (1 s,
        # then 2 s); before the fix it waited forever.
        assert owner_s < deadline + 6, owner_s
        answers = await asyncio.gather(*(answer_and_hang_up(r, deadline + 8) for r, _ in flood))
        flood_s = time.monotonic() - started
        for _, writer in flood:
            writer.close()
        statuses = sorted({answer[:12].decode() for answer in answers})
        assert statuses == ["HTTP/1.1 408", "HTTP/1.1 503"], statuses  # cut off, or refused
        assert flood_s < deadline + 8, flood_s
        log_after_flood = log.stat().st_size

        idle = []
        for _ in range(80):  # more than the 48 descriptors, sending nothing
            idle.append(await asyncio.open_connection("127.0.0.1", port))
        exhausted = await wait_for(
            lambda: "out of system resource" in log.read_text(), what="accept() to fail"
        )
        storm_started, cpu_started = log.stat().st_size, cpu_seconds(proc.pid)
        await asyncio.sleep(3)  # measuring how fast the log grows while descriptors are out
        storm_bytes = log.stat().st_size - storm_started
        storm_cpu = cpu_seconds(proc.pid) - cpu_started
        for _, writer in idle:
            writer.close()
        async with httpx.AsyncClient(timeout=10, headers=bearer) as owner:
            response = await owner.get(f"http://127.0.0.1:{port}/api/v1/queue")
        assert response.status_code == 200
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    total = log.stat().st_size
    print(
        f"\nslow-login flood, 48 descriptors: 150 half-sent logins sent in {flood_sent_s:.2f} s, "
        f"then the owner answered in {owner_s:.2f} s, flood ended "
        f"in {flood_s:.2f} s, log {log_after_flood} B after it; descriptors exhausted: log grew "
        f"{storm_bytes} B and the core used {storm_cpu:.2f} s of CPU in 3 s; whole log {total} B"
    )
    assert exhausted and storm_bytes < 5_000, storm_bytes
    assert storm_cpu < 1.0, storm_cpu  # the retries used to multiply until the CPU was full
    assert total < 40_000, log.read_text()[-3000:]
    assert TOKEN not in log.read_text()


def test_the_flood_filter_lets_a_few_of_each_kind_through_and_counts_the_rest() -> None:
    now = [0.0]
    flood = logflood.FloodFilter(burst=3, period=60, clock=lambda: now[0])

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, args, None)

    passed = [r for r in (record("accept() failed %s", n) for n in range(1000)) if flood.filter(r)]
    assert len(passed) == 3 and "counted, not logged" in passed[-1].getMessage()
    assert flood.filter(record("another kind"))  # kinds are counted apart
    now[0] += 60
    first = record("accept() failed %s", "again")
    assert flood.filter(first)
    assert first.getMessage() == "accept() failed again [997 more like this were not logged]"


ACCEPT_STORM = """
import asyncio, os, resource, socket, sys
from mobilesd_core.listener import guarded

async def main() -> None:
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, context: errors.append(context["message"]))
    listener = socket.create_server(("127.0.0.1", 0))
    if sys.argv[1] == "guarded":
        listener = guarded(listener)
    held = []
    server = await asyncio.start_server(lambda r, w: held.append(w), sock=listener)
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    # From now on only a few more descriptors: accept() fails with EMFILE.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 3, hard))
    await asyncio.sleep(2.5)  # the window in which failed accepts are counted
    print(len(held), sum("out of system resource" in e for e in errors))
    server.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("listener", ["guarded", "plain"])
def test_a_failing_accept_is_retried_once_a_second_not_once_per_backlog_slot(
    listener: str,
) -> None:
    """With descriptors exhausted, asyncio's accept loop carries on after EMFILE: each pass logs
    and schedules a retry per backlog slot (295 in 2.5 s here; the issue measured ~9,500 log
    records a second on a busier loop). The core's listener fails once per pass: one a second."""
    result = subprocess.run(
        [sys.executable, "-c", ACCEPT_STORM, listener],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    accepted, failures = map(int, result.stdout.split())
    print(f"\n{listener} listener: {accepted} accepted, {failures} failed accepts in 2.5 s")
    assert accepted >= 1
    if listener == "guarded":
        assert 1 <= failures <= 4, failures
    elif failures < 25:  # asyncio on its own, for comparison
        pytest.skip("this Python's asyncio no longer repeats a failed accept; the guard is moot")
