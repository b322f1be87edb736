"""The JSON API the core is driven by: auth, errors, servers, queue operations, gallery."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mobilesd_core.forge.simulator import SimulatorConfig

from .conftest import TOKEN, Harness, wait_for

ROUTES = [
    ("GET", "/api/v1/servers"),
    ("POST", "/api/v1/servers"),
    ("PUT", "/api/v1/servers/gpu1"),
    ("DELETE", "/api/v1/servers/gpu1"),
    ("GET", "/api/v1/servers/gpu1/status"),
    ("GET", "/api/v1/servers/gpu1/models"),
    ("POST", "/api/v1/generate"),
    ("GET", "/api/v1/queue/jobs"),
    ("GET", "/api/v1/queue/jobs/x"),
    ("GET", "/api/v1/queue/jobs/x/status"),
    ("GET", "/api/v1/queue/jobs/x/preview"),
    ("POST", "/api/v1/queue/jobs/x/cancel"),
    ("POST", "/api/v1/queue/jobs/x/retry"),
    ("POST", "/api/v1/queue/jobs/x/move"),
    ("POST", "/api/v1/queue/jobs/x/pin"),
    ("POST", "/api/v1/queue/jobs/x/unpin"),
    ("GET", "/api/v1/notifications"),
    ("DELETE", "/api/v1/queue/jobs/x"),
    ("PATCH", "/api/v1/queue/jobs/x"),
    ("POST", "/api/v1/queue/batches/x/cancel"),
    ("POST", "/api/v1/queue/batches/x/retry"),
    ("POST", "/api/v1/queue/batches/x/move"),
    ("DELETE", "/api/v1/queue/batches/x"),
    ("GET", "/api/v1/gallery/archive"),
    ("POST", "/api/v1/queue/clear"),
    ("POST", "/api/v1/queue/pause"),
    ("POST", "/api/v1/queue/resume"),
    ("GET", "/api/v1/gallery/images"),
    ("DELETE", "/api/v1/gallery/images/x.png"),
    ("GET", "/gallery_files/x.png"),
    ("GET", "/api/v1/servers/gpu1"),
    ("GET", "/api/v1/queue"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/checkpoints"),
    ("GET", "/api/v1/loras"),
    ("POST", "/api/v1/civitai/image-info"),
    ("POST", "/api/v1/civitai/download-model"),
    ("GET", "/api/v1/civitai/downloads"),
    ("POST", "/api/v1/civitai/downloads/x/cancel"),
    ("GET", "/api/v1/sessions"),
    ("DELETE", "/api/v1/sessions"),
    ("POST", "/api/v1/uploads"),
    ("GET", "/api/v1/uploads/x/thumbnail"),
    ("POST", "/api/v1/gallery/upscale"),
]


def test_the_list_covers_every_protected_route_the_app_registers(tmp_path) -> None:
    """A new route must join ROUTES (and so the token test): compared with the router."""
    import re

    from mobilesd_core.api.app import create_app

    from .conftest import fast_settings

    app = create_app(fast_settings(tmp_path))
    registered = {
        (route.method, re.sub(r"\{[^}]+\}", "{}", route.resource.canonical))
        for route in app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        and route.resource.canonical.startswith(("/api/", "/gallery_files/"))
    }
    listed = {(method, re.sub(r"/(gpu1|x|x\.png)(?=/|$)", "/{}", path)) for method, path in ROUTES}
    assert registered == listed


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_needs_the_token(harness: Harness, method: str, path: str) -> None:
    async with httpx.AsyncClient(base_url=str(harness.api.base_url)) as anonymous:
        response = await anonymous.request(method, path, json={})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        wrong = await anonymous.request(
            method, path, json={}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
    assert harness.core.store.live_jobs() == []


async def test_healthz_is_open(harness: Harness) -> None:
    async with httpx.AsyncClient(base_url=str(harness.api.base_url)) as anonymous:
        response = await anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_generate_rejects_bad_input_naming_each_field(harness: Harness) -> None:
    response = await harness.api.post(
        "/api/v1/generate",
        json={
            "generation_params": {
                "promt": "typo",
                "steps": 0,
                "width": 513,
                "loras": [{"name": "x", "weight": 9}],
            },
            "target": "gpu1",
        },
    )
    assert response.status_code == 422
    error = response.json()["error"]
    paths = {d["path"]: d["message"] for d in error["details"]}
    assert paths["generation_params.promt"] == "unknown field; did you mean 'prompt'?"
    assert paths["generation_params.prompt"] == "is required"
    assert "greater than or equal to 1" in paths["generation_params.steps"]
    assert "multiple of 8" in paths["generation_params.width"]
    assert "less than or equal to 5" in paths["generation_params.loras[0].weight"]
    assert paths["target"] == "unknown field"
    assert harness.core.store.live_jobs() == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "bad_json"),
        (b"[1, 2]", 400, "bad_json"),
        (b"", 400, "bad_json"),
        (
            b'{"generation_params": {"prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}}',
            413,
            "too_large",
        ),
    ],
)
async def test_malformed_bodies(harness: Harness, body: bytes, status: int, code: str) -> None:
    response = await harness.api.post(
        "/api/v1/generate", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert harness.core.store.live_jobs() == []


async def test_target_must_be_a_known_server(harness: Harness) -> None:
    response = await harness.api.post(
        "/api/v1/generate",
        json={"target_server_alias": "nope", "generation_params": {"prompt": "x"}},
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["path"] == "target_server_alias"


async def test_server_crud_never_returns_passwords(harness: Harness) -> None:
    body = {
        "alias": "gpu1",
        "api_url": "http://127.0.0.1:9",
        "username": "forge",
        "password": "s3cret-pw",
    }
    created = await harness.api.post("/api/v1/servers", json=body)
    assert created.status_code == 201
    assert created.json()["has_password"] is True
    duplicate = await harness.api.post("/api/v1/servers", json=body)
    assert duplicate.status_code == 409

    renamed = await harness.api.put("/api/v1/servers/gpu1", json={"alias": "big-gpu"})
    assert renamed.status_code == 200 and renamed.json()["alias"] == "big-gpu"
    assert renamed.json()["has_password"] is True  # the password survives the rename
    listing = await harness.api.get("/api/v1/servers")
    for response in (created, renamed, listing):
        assert "s3cret-pw" not in response.text
        assert '"password"' not in response.text

    bad = await harness.api.post(
        "/api/v1/servers", json={"alias": "bad alias", "api_url": "http://u:p@host:7860"}
    )
    assert bad.status_code == 422
    details = {d["path"]: d["message"] for d in bad.json()["error"]["details"]}
    assert "alias" in details and "user name or password" in details["api_url"]
    assert "u:p@" not in bad.text

    assert (await harness.api.delete("/api/v1/servers/big-gpu")).status_code == 204
    assert (await harness.api.delete("/api/v1/servers/big-gpu")).status_code == 404
    assert (await harness.api.get("/api/v1/servers")).json() == []


@dataclass
class AuthRecorder:
    """A loopback HTTP listener that records the Authorization header of every request (and
    answers 401, as a stranger's server would)."""

    seen: list[str | None] = field(default_factory=list)
    server: TestServer | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append(request.headers.get("Authorization"))
        return web.json_response({"detail": "Not authenticated"}, status=401)

    async def start(self) -> AuthRecorder:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server(access_log=None)
        return self

    def url(self, path: str = "") -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}{path}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_a_new_address_never_gets_the_stored_password(harness: Harness) -> None:
    """Pointing a server at another host or port needs the password again (422 naming it):
    the stored one is never sent to a listener the token holder picked."""
    await harness.add_sim(
        "gpu1",
        SimulatorConfig(step_ms=1, switch_ms=0, auth=("forge", "s3cret-pw")),
        username="forge",
        password="s3cret-pw",
    )
    sim_url = harness.sims["gpu1"].url.rstrip("/")
    recorder = await AuthRecorder().start()
    try:
        moved = await harness.api.put("/api/v1/servers/gpu1", json={"api_url": recorder.url()})
        assert moved.status_code == 422, moved.text
        (problem,) = moved.json()["error"]["details"]
        assert problem["path"] == "password"
        assert "re-enter the password for the new address" in problem["message"]
        runtime = harness.core.registry.runtimes["gpu1"]
        assert runtime.config.api_url == sim_url and runtime.online  # nothing changed
        # Another path at the new address, another name for the same machine: still new.
        for url in (recorder.url("/forge"), sim_url.replace("127.0.0.1", "localhost")):
            again = await harness.api.put("/api/v1/servers/gpu1", json={"api_url": url})
            assert again.status_code == 422, url
        # A path-only change is the same server: the password stays (the form sends the URL
        # back unchanged on every save, too).
        same = await harness.api.put(
            "/api/v1/servers/gpu1", json={"api_url": sim_url + "/", "max_concurrent": 2}
        )
        assert same.status_code == 200 and same.json()["has_password"] is True

        # With the password typed again for the new address, it goes there, and only that one.
        moved = await harness.api.put(
            "/api/v1/servers/gpu1",
            json={"api_url": recorder.url(), "password": "for-the-new-one"},
        )
        assert moved.status_code == 200 and moved.json()["has_password"] is True
        await wait_for(lambda: recorder.seen, what="a health check at the new address")
        # null: no password at the new address.
        cleared = await harness.api.put(
            "/api/v1/servers/gpu1", json={"api_url": sim_url, "password": None}
        )
        assert cleared.status_code == 200 and cleared.json()["has_password"] is False
        assert set(recorder.seen) == {basic("forge", "for-the-new-one")}
        assert all(
            "s3cret-pw" not in base64.b64decode(h.split()[1]).decode() for h in recorder.seen
        )
    finally:
        assert recorder.server is not None
        await recorder.server.close()


async def test_server_models_lists_what_the_server_offers(harness: Harness) -> None:
    await harness.add_sim("gpu1", SimulatorConfig(step_ms=1, switch_ms=0, os_sep="\\"))
    models = (await harness.api.get("/api/v1/servers/gpu1/models")).json()
    titles = [c["title"] for c in models["checkpoints"]]
    assert any(t.startswith("sdxl\\juggernautXL_v9.safetensors [") for t in titles)
    assert "add_detail" in models["loras"]
    assert "Euler" in models["samplers"] and "Karras" in models["schedulers"]
    status = (await harness.api.get("/api/v1/servers/gpu1/status")).json()
    assert status["online"] is True and status["latency_ms"] >= 0


async def test_move_reorders_pending_jobs(harness: Harness) -> None:
    await harness.api.post("/api/v1/queue/pause")
    a, b, c = [await harness.submit(prompt=p) for p in ("a", "b", "c")]

    async def order() -> list[str]:
        jobs = (await harness.api.get("/api/v1/queue/jobs?status=pending")).json()["jobs"]
        return [j["mobilesd_job_id"] for j in jobs]

    assert await order() == [a, b, c]
    await harness.api.post(f"/api/v1/queue/jobs/{c}/move", json={"to": "top"})
    assert await order() == [c, a, b]
    await harness.api.post(f"/api/v1/queue/jobs/{c}/move", json={"to": "down"})
    assert await order() == [a, c, b]
    await harness.api.post(f"/api/v1/queue/jobs/{a}/move", json={"before": b})
    assert await order() == [c, a, b]
    await harness.api.post(f"/api/v1/queue/jobs/{b}/move", json={"to": "up"})
    assert await order() == [c, b, a]
    bad = await harness.api.post(f"/api/v1/queue/jobs/{a}/move", json={"to": "sideways"})
    assert bad.status_code == 422
    both = await harness.api.post(f"/api/v1/queue/jobs/{a}/move", json={"to": "top", "before": b})
    assert both.status_code == 422
    missing = await harness.api.post("/api/v1/queue/jobs/nope/move", json={"to": "top"})
    assert missing.status_code == 404


async def test_pause_holds_jobs_and_resume_runs_them(harness: Harness) -> None:
    sim = await harness.add_sim("gpu1")
    paused = await harness.api.post("/api/v1/queue/pause")
    assert paused.json()["paused"] is True
    job_id = await harness.submit()
    job = await harness.job(job_id)
    assert job["status"] == "pending" and job["waiting_reason"] == "queue paused"
    await harness.core.run_until_idle()
    assert sim.sim.generations == []
    await harness.api.post("/api/v1/queue/resume")
    assert (await harness.wait_status(job_id, "completed"))["status"] == "completed"


async def test_retry_delete_and_clear(harness: Harness) -> None:
    sim = await harness.add_sim("gpu1")
    sim.sim.set_fault("422", count=1, path="txt2img")
    failed_id = await harness.submit(prompt="first")
    assert (await harness.wait_status(failed_id, "failed"))["status"] == "failed"

    status = (await harness.api.get(f"/api/v1/queue/jobs/{failed_id}/status")).json()
    assert set(status) == {"mobilesd_job_id", "status", "progress", "result_details"}
    assert "rejected" in status["result_details"]["error"]

    retried = await harness.api.post(f"/api/v1/queue/jobs/{failed_id}/retry")
    assert retried.status_code == 202
    new_id = retried.json()["mobilesd_job_id"]
    assert new_id != failed_id
    done = await harness.wait_status(new_id, "completed")
    assert done["generation_params"] == (await harness.job(failed_id))["generation_params"]

    pending_delete = await harness.api.post("/api/v1/queue/pause")
    assert pending_delete.status_code == 200
    waiting = await harness.submit(prompt="waiting")
    conflict = await harness.api.delete(f"/api/v1/queue/jobs/{waiting}")
    assert conflict.status_code == 409

    image = done["result_details"]["images"][0]
    assert (await harness.api.delete(f"/api/v1/queue/jobs/{new_id}")).status_code == 204
    assert (await harness.api.get(f"/api/v1/queue/jobs/{new_id}")).status_code == 404
    assert (harness.settings.gallery_path / image).exists()  # images stay

    cleared = await harness.api.post("/api/v1/queue/clear", json={"status": ["failed"]})
    assert cleared.json() == {"removed": 1}
    listing = (await harness.api.get("/api/v1/queue/jobs")).json()
    assert [j["mobilesd_job_id"] for j in listing["jobs"]] == [waiting]
    bad = await harness.api.post("/api/v1/queue/clear", json={"status": ["pending"]})
    assert bad.status_code == 422
    typo = await harness.api.post("/api/v1/queue/clear", json={"statuses": ["failed"]})
    assert typo.status_code == 422
    assert typo.json()["error"]["details"] == [{"path": "statuses", "message": "unknown field"}]


async def test_list_filters_and_validates_query(harness: Harness) -> None:
    await harness.api.post("/api/v1/queue/pause")
    ids = [await harness.submit(prompt=f"fox {i}") for i in range(3)]
    await harness.submit(prompt="heron")
    page = (await harness.api.get("/api/v1/queue/jobs?q=fox&limit=2&offset=1")).json()
    assert page["total"] == 3
    assert [j["mobilesd_job_id"] for j in page["jobs"]] == ids[1:3]
    bad = await harness.api.get("/api/v1/queue/jobs?status=done&limit=0")
    assert bad.status_code == 422
    assert {d["path"] for d in bad.json()["error"]["details"]} <= {"status", "limit"}


async def test_gallery_delete_removes_files_and_refuses_traversal(harness: Harness) -> None:
    await harness.add_sim("gpu1")
    job = await harness.wait_status(await harness.submit(), "completed")
    (name,) = job["result_details"]["images"]
    sidecar = harness.settings.gallery_path / name.replace(".png", ".json")
    assert sidecar.exists()
    for evil in ("..%2Fdata%2Faccess_token", "%2E%2E%2Fdata%2Faccess_token", ".hidden.png"):
        response = await harness.api.get(f"/gallery_files/{evil}")
        assert response.status_code in (400, 404)
        assert "test-token" not in response.text
    response = await harness.api.delete("/api/v1/gallery/images/..%2F..%2Fetc%2Fpasswd")
    assert response.status_code in (400, 404)

    # A file planted beside the gallery, and a link inside it pointing there: never served,
    # never deleted, whatever the spelling.
    outside = harness.settings.gallery_path.parent / "outside.png"
    outside.write_bytes(b"\x89PNG\r\n\x1a\nnot yours")
    (harness.settings.gallery_path / "link.png").symlink_to(outside)
    spellings = [
        "..%2Foutside.png",
        "%2e%2e%2foutside.png",
        "%2E%2E%2Foutside.png",
        "..%5Coutside.png",
        "%2F" + "%2F".join(str(outside).lstrip("/").split("/")),
        "link.png",
    ]
    for evil in spellings:
        got = await harness.api.get(f"/gallery_files/{evil}")
        assert got.status_code in (400, 404), evil
        assert b"not yours" not in got.content
        deleted = await harness.api.delete(f"/api/v1/gallery/images/{evil}")
        assert deleted.status_code in (204, 400, 404), evil
        assert outside.read_bytes() == b"\x89PNG\r\n\x1a\nnot yours", evil
    raw = await harness.api.get("/gallery_files/../outside.png")  # unencoded: normalised away
    assert raw.status_code in (400, 401, 404) and b"not yours" not in raw.content

    assert (await harness.api.delete(f"/api/v1/gallery/images/{name}")).status_code == 204
    assert not (harness.settings.gallery_path / name).exists()
    assert not sidecar.exists()
    assert (await harness.api.get(f"/gallery_files/{name}")).status_code == 404
    listing = (await harness.api.get("/api/v1/gallery/images")).json()
    assert listing == {"images": [], "total": 0}


async def test_unknown_routes_use_the_error_shape(harness: Harness) -> None:
    response = await harness.api.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = await harness.api.patch("/api/v1/servers")
    assert response.status_code == 405
    assert "error" in response.json()


async def test_cancel_pending_job(harness: Harness) -> None:
    await harness.api.post("/api/v1/queue/pause")
    job_id = await harness.submit()
    response = await harness.api.post(f"/api/v1/queue/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    await wait_for(lambda: harness.core.store.is_finished(job_id), what="archived")
    assert (
        await harness.api.post(f"/api/v1/queue/jobs/{job_id}/move", json={"to": "top"})
    ).status_code == 409


async def test_submit_command_queues_job_files(harness: Harness, tmp_path) -> None:
    import asyncio
    import os
    import sys
    from pathlib import Path

    await harness.api.post("/api/v1/queue/pause")
    examples = sorted((Path(__file__).parent.parent / "examples" / "jobs").glob("*.yaml"))
    bad = tmp_path / "typo.yaml"
    bad.write_text("promt: x\n")
    env = {**os.environ, "MOBILESD_URL": str(harness.api.base_url), "MOBILESD_TOKEN": TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mobilesd_core.cli",
        "submit",
        "--server",
        "gpu9",
        *map(str, examples),
        str(bad),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    # gpu9 does not exist: every job is refused with the reason, nothing is queued.
    assert proc.returncode == 1
    assert "no server named 'gpu9'" in text
    assert f"{bad}:1: promt: unknown field; did you mean 'prompt'?" in text
    assert harness.core.store.live_jobs() == []

    await harness.add_sim("gpu1")
    await harness.api.post("/api/v1/queue/pause")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mobilesd_core.cli",
        "submit",
        *map(str, examples),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    queued = [line for line in out.decode().splitlines() if ": queued " in line]
    jobs = harness.core.store.live_jobs()
    assert len(queued) == len(examples)  # one request, and one batch, per file
    assert len(jobs) == 20  # flux.yaml: 1; img2img, inpaint, upscale: 1 each
    assert len({j["batch_id"] for j in jobs}) == len(examples)
    assert {j["source"] for j in jobs} == {"cli"}
    # Images a file names by path went to the core's upload store; the job keeps the name.
    [inpaint] = [j for j in jobs if (j["generation_params"].get("init") or {}).get("mask")]
    init = inpaint["generation_params"]["init"]
    assert init["image"] == "images/cabin.png" and harness.core.uploads.has(init["image_sha256"])
    assert init["mask"] == "images/cabin-sun-mask.png"
    assert harness.core.uploads.has(init["mask_sha256"])


async def test_long_json_answers_are_gzipped(harness: Harness) -> None:
    await harness.api.post("/api/v1/queue/pause")
    for i in range(5):
        await harness.submit(prompt=f"a long enough prompt to make the list worth packing {i}")
    packed = await harness.api.get("/api/v1/queue/jobs", headers={"Accept-Encoding": "gzip"})
    assert packed.headers.get("content-encoding") == "gzip"
    assert packed.json()["total"] == 5  # httpx unpacks it
    plain = await harness.api.get("/api/v1/queue/jobs", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    small = await harness.api.get("/api/v1/queue", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers  # not worth it
