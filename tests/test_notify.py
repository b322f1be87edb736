"""Notifications and webhooks over real sockets: a loopback webhook receiver that fails twice
before it accepts, an Apprise `json://` target on loopback that records every notice, a target
that cannot be reached, and no secret in any log line or answer."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from mobilesd_core.config import ConfigError, settings_from_env, split_notify_urls
from mobilesd_core.notify import sender as sender_module
from mobilesd_core.notify.redact import Redactor
from mobilesd_core.notify.webhooks import NOT_DELIVERED, OUTBOX_FILE, sign
from mobilesd_core.schema import GenerationParams, new_job

from .conftest import Harness, fast_settings, start_harness, stop_harness, wait_for
from .helpers.net import closed_port

WEBHOOK_SECRET = "whsec-0123456789-do-not-leak"
APPRISE_PASSWORD = "appr1se-PASSWORD-x9"
APPRISE_PATH_TOKEN = "pathTOKENq8w7e6r5"
DEAD_PASSWORD = "dead-target-PW-k3"
DEAD_PATH_TOKEN = "deadTOKENz1x2c3"
SECRETS = (WEBHOOK_SECRET, APPRISE_PASSWORD, APPRISE_PATH_TOKEN, DEAD_PASSWORD, DEAD_PATH_TOKEN)


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A loopback HTTP server that records every POST. Webhook paths answer 500 to the first
    `fail_first` attempts for each job, then 200."""

    fail_first: int = 0
    notify_fail_first: int = 0  # the same for each Apprise notice (by title)
    hits: list[Hit] = field(default_factory=list)
    server: TestServer | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = 200
        if request.path.startswith("/hook"):
            job_id = json.loads(body).get("mobilesd_job_id")
            tries = sum(1 for h in self.hits if h.path.startswith("/hook") and _job(h) == job_id)
            status = 500 if tries < self.fail_first else 200
        elif request.path.startswith("/notify"):
            title = json.loads(body).get("title")
            tries = sum(
                1 for h in self.hits if h.path.startswith("/notify") and h.json()["title"] == title
            )
            status = 500 if tries < self.notify_fail_first else 200
        self.hits.append(Hit(request.path, dict(request.headers), body, status))
        return web.json_response({"ok": status == 200}, status=status)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")
        # No access log: it would print the paths it is sent (the secrets under test) itself.
        await self.server.start_server(access_log=None)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def notices(self) -> list[dict[str, Any]]:
        """The notices accepted (answered 200), in order."""
        return [h.json() for h in self.hits if h.path.startswith("/notify") and h.answered == 200]

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


def _job(hit: Hit) -> str | None:
    return json.loads(hit.body).get("mobilesd_job_id")


@pytest.fixture
async def receiver() -> Any:
    r = await Receiver(fail_first=2).start()
    try:
        yield r
    finally:
        await r.close()


def notify_settings(tmp_path: Path, receiver: Receiver, **overrides: Any) -> Any:
    apprise_url = (
        f"json://mobilesd:{APPRISE_PASSWORD}@127.0.0.1:{receiver.port}/notify/{APPRISE_PATH_TOKEN}"
    )
    dead_url = f"json://x:{DEAD_PASSWORD}@127.0.0.1:{closed_port()}/{DEAD_PATH_TOKEN}"
    return fast_settings(
        tmp_path,
        notify_urls=split_notify_urls(f"{apprise_url}, {dead_url}"),
        webhook_secret=WEBHOOK_SECRET,
        webhook_backoff=0.05,
        webhook_backoff_max=0.1,
        **overrides,
    )


async def notification_status(harness: Harness) -> dict[str, Any]:
    response = await harness.api.get("/api/v1/notifications")
    assert response.status_code == 200
    for secret in SECRETS:
        assert secret not in response.text
    return response.json()


def assert_no_secret_logged(caplog: pytest.LogCaptureFixture) -> None:
    text = caplog.text
    assert text  # the libraries did log (at DEBUG): the check below means something
    for secret in SECRETS:
        assert secret not in text, f"a secret reached the log: {secret}"


# --- webhooks ----------------------------------------------------------------------------------


async def test_webhook_gets_one_signed_accepted_post_per_terminal_job_despite_two_500s(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    harness = await start_harness(notify_settings(tmp_path, receiver))
    try:
        await harness.add_sim("gpu1")
        hook = receiver.url("/hook/abc")

        async def submit(**params: Any) -> str:
            params = {"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64, **params}
            response = await harness.api.post(
                "/api/v1/generate", json={"generation_params": params, "webhook_url": hook}
            )
            assert response.status_code == 202, response.text
            assert response.json()["job"]["webhook_url"] == hook
            return response.json()["mobilesd_job_id"]

        completed = await submit()
        failed = await submit(checkpoint_name="sdxl/no_such_model")
        await harness.api.post("/api/v1/queue/pause")
        cancelled = await submit()
        assert (await harness.api.post(f"/api/v1/queue/jobs/{cancelled}/cancel")).status_code == 200
        await harness.api.post("/api/v1/queue/resume")
        expected = {completed: "completed", failed: "failed", cancelled: "cancelled"}
        for job_id, status in expected.items():
            assert (await harness.wait_status(job_id, status))["status"] == status

        async def all_delivered() -> bool:
            hooks = (await notification_status(harness))["webhooks"]
            return hooks["delivered"] == 3 and hooks["pending"] == 0

        await wait_for(all_delivered, what="three webhook deliveries")
        hooks = (await notification_status(harness))["webhooks"]
        assert hooks["attempts"] == 9 and hooks["failed"] == 0
        assert hooks["last_error"]["message"] == NOT_DELIVERED  # the log says "HTTP 500"
        assert hooks["last_error"]["target"] == f"http://127.0.0.1:{receiver.port}"
        assert hooks["secret_source"] == "WEBHOOK_SECRET"

        webhook_hits = [h for h in receiver.hits if h.path == "/hook/abc"]
        accepted = Counter(_job(h) for h in webhook_hits if h.answered == 200)
        assert accepted == dict.fromkeys(expected, 1)  # exactly one accepted POST per job
        assert Counter(_job(h) for h in webhook_hits) == dict.fromkeys(expected, 3)
        for hit in webhook_hits:
            mac = hmac.new(WEBHOOK_SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
            assert hit.headers["X-MobileSD-Signature"] == f"sha256={mac}"
            assert hit.headers["Content-Type"] == "application/json"
            job = hit.json()
            assert job["status"] == expected[job["mobilesd_job_id"]]
            assert hit.headers["X-MobileSD-Event"] == f"job.{job['status']}"
        # Retries of one delivery carry the same delivery id (receivers can drop repeats).
        for job_id in expected:
            ids = {h.headers["X-MobileSD-Delivery"] for h in webhook_hits if _job(h) == job_id}
            assert len(ids) == 1
        done = next(h.json() for h in webhook_hits if _job(h) == completed)
        assert done["result_details"]["images"]  # the job as the API shows it
        # The outbox emptied: its file holds nothing to resend.
        assert (harness.settings.data_path / OUTBOX_FILE).read_bytes() == b""
    finally:
        await stop_harness(harness)
    assert_no_secret_logged(caplog)


async def test_bad_webhook_url_is_422_naming_the_field(harness: Harness) -> None:
    for bad in ("ftp://example.net/hook", "not a url", "http://", 42):
        response = await harness.api.post(
            "/api/v1/generate", json={"generation_params": {"prompt": "x"}, "webhook_url": bad}
        )
        assert response.status_code == 422, bad
        paths = [d["path"] for d in response.json()["error"]["details"]]
        assert paths == ["webhook_url"], bad
    assert harness.core.store.live_jobs() == []


async def test_pending_delivery_survives_a_restart(tmp_path: Path) -> None:
    receiver = await Receiver(fail_first=10**6).start()  # refuses everything at first
    settings = fast_settings(
        tmp_path, webhook_secret=WEBHOOK_SECRET, webhook_backoff=0.05, webhook_backoff_max=0.2
    )
    harness = await start_harness(settings)
    try:
        await harness.add_sim("gpu1")
        response = await harness.api.post(
            "/api/v1/generate",
            json={
                "generation_params": {"prompt": "x", "steps": 2, "width": 64, "height": 64},
                "webhook_url": receiver.url("/hook/restart"),
            },
        )
        job_id = response.json()["mobilesd_job_id"]
        await harness.wait_status(job_id, "completed")
        await wait_for(lambda: len(receiver.hits) >= 2, what="two refused attempts")
    finally:
        await stop_harness(harness)
    outbox = (settings.data_path / OUTBOX_FILE).read_text()
    assert job_id in outbox and WEBHOOK_SECRET not in outbox

    receiver.fail_first = 0
    receiver.hits.clear()
    harness = await start_harness(settings)
    try:

        async def delivered() -> bool:
            # The core's record of it, not the receiver's: its answer may still be on the way.
            status = (await harness.api.get("/api/v1/notifications")).json()["webhooks"]
            return status["delivered"] == 1 and status["pending"] == 0

        await wait_for(delivered, what="delivery after restart")
        (hit,) = receiver.hits
        assert _job(hit) == job_id and hit.json()["status"] == "completed"
        assert hit.headers["X-MobileSD-Signature"] == sign(WEBHOOK_SECRET.encode(), hit.body)
    finally:
        await stop_harness(harness)
        await receiver.close()


async def test_webhook_secret_is_generated_and_kept_when_not_configured(tmp_path: Path) -> None:
    harness = await start_harness(fast_settings(tmp_path))
    try:
        status = (await harness.api.get("/api/v1/notifications")).json()
        assert status["webhooks"]["secret_source"] == "generated"
        assert status["notify"] == {
            "configured": False,
            "targets": [],
            "queued": 0,
            "retrying": 0,
            "dropped": 0,
        }
    finally:
        await stop_harness(harness)
    path = tmp_path / "data" / "webhook_secret"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(path.read_text().strip()) == 64


HOOK_KEY = "hookKEY-5f4e3d2c1b-do-not-leak"


def _no_hook_key(data: bytes | str, where: str) -> None:
    text = data if isinstance(data, str) else data.decode("latin-1")
    assert HOOK_KEY not in text, f"the webhook URL's key is in {where}"
    assert "webhook_url" not in text, f"a webhook_url field is in {where}"


async def test_a_jobs_webhook_url_stays_out_of_the_gallery(
    tmp_path: Path, receiver: Receiver
) -> None:
    harness = await start_harness(fast_settings(tmp_path, webhook_secret=WEBHOOK_SECRET))
    try:
        await harness.add_sim("gpu1")
        hook = receiver.url(f"/hook/g?key={HOOK_KEY}")
        params = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64}
        response = await harness.api.post(
            "/api/v1/generate",
            json={"generation_params": {**params, "batch_size": 2}, "webhook_url": hook},
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["mobilesd_job_id"]
        job = await harness.wait_status(job_id, "completed")
        assert job["webhook_url"] == hook  # the job keeps it: that is where news of it goes
        images = job["result_details"]["images"]
        assert len(images) == 2

        root = harness.settings.gallery_path
        for name in images:
            sidecar = (root / f"{name[:-4]}.json").read_text()
            _no_hook_key(sidecar, f"the sidecar of {name}")
            assert json.loads(sidecar)["job"]["mobilesd_job_id"] == job_id  # the rest is kept
            with Image.open(root / name) as im:
                assert im.text["parameters"].startswith("a lighthouse")
                _no_hook_key(json.dumps(im.text), f"the text chunks of {name}")
            _no_hook_key((root / name).read_bytes(), f"the bytes of {name}")

        listing = await harness.api.get("/api/v1/gallery/images", params={"job_id": job_id})
        assert len(listing.json()["images"]) == 2
        _no_hook_key(listing.text, "the gallery listing")
        archive = await harness.api.get("/api/v1/gallery/archive", params={"job_ids": job_id})
        assert archive.status_code == 200
        _no_hook_key(archive.content, "the zip")
        with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
            sidecars = [n for n in zf.namelist() if n.endswith(".json")]
            assert len(sidecars) == 2
            for entry in sidecars:
                assert json.loads(zf.read(entry))["job"]["mobilesd_job_id"] == job_id
    finally:
        await stop_harness(harness)


async def test_sidecars_holding_a_webhook_url_are_cleaned_at_start_and_in_zips(
    tmp_path: Path,
) -> None:
    """Sidecars an older version wrote kept the whole job, webhook URL included: the next start
    rewrites them without it; one that turns up later (a backup put back) leaves the core
    without it."""
    from bench.sweep_zip import fill_gallery, noise_png

    settings = fast_settings(tmp_path)
    hook = f"https://hooks.example.net/in?key={HOOK_KEY}"
    jobs = [
        {**new_job(GenerationParams(prompt="a fox"), source="api"), "webhook_url": hook}
        for _ in range(2)
    ]
    fill_gallery(settings.gallery_path, jobs, 1, noise_png(16))
    sidecars = sorted(settings.gallery_path.glob("*.json"))
    assert len(sidecars) == 2 and all(HOOK_KEY in p.read_text() for p in sidecars)
    restored = sidecars[1].read_bytes()

    harness = await start_harness(settings)
    try:
        for path in sidecars:
            _no_hook_key(path.read_text(), path.name)
            assert json.loads(path.read_text())["job"]["generation_params"]["prompt"] == "a fox"
        sidecars[1].write_bytes(restored)
        ids = ",".join(job["mobilesd_job_id"] for job in jobs)
        archive = await harness.api.get("/api/v1/gallery/archive", params={"job_ids": ids})
        assert archive.status_code == 200
        _no_hook_key(archive.content, "the zip")
        with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
            served = [json.loads(zf.read(n)) for n in zf.namelist() if n.endswith(".json")]
        assert sorted(s["mobilesd_job_id"] for s in served) == sorted(
            job["mobilesd_job_id"] for job in jobs
        )
    finally:
        await stop_harness(harness)


# --- Apprise notices ---------------------------------------------------------------------------


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sender_module, "RETRY_DELAYS", (0.05, 0.1))


async def test_apprise_notices_for_batch_failure_server_and_empty_queue(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture, quick_retries: None
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = notify_settings(tmp_path, receiver, public_url="https://sd.example.net/")
    harness = await start_harness(settings)
    try:
        sim = await harness.add_sim("gpu1")
        core = harness.core

        # A batch of three (jobs created together share a batch_id): two run, one cannot.
        from mobilesd_core.schema import parse_params

        params = [
            parse_params({"prompt": "fox in snow", "steps": 3, "width": 64, "height": 64}),
            parse_params({"prompt": "heron", "steps": 3, "width": 64, "height": 64}),
            parse_params({"prompt": "owl", "checkpoint_name": "sdxl/missing_model"}),
        ]
        jobs = await core.service.submit(params, source="api", extra_fields={"batch_id": "b-1"})
        ids = sorted(j["mobilesd_job_id"] for j in jobs)
        for job in jobs:
            await harness.wait_status(job["mobilesd_job_id"], "completed", "failed")

        def titles() -> list[str]:
            return [n["title"] for n in receiver.notices()]

        await wait_for(lambda: "MobileSD: queue is empty" in titles(), what="queue empty notice")
        notices = {n["title"]: n for n in receiver.notices()}
        batch = notices["MobileSD: batch finished (2 completed, 1 failed, 0 cancelled)"]
        assert batch["type"] == "warning"
        assert f"https://sd.example.net/#gallery?jobs={ids[0]}..{ids[-1]}" in batch["message"]
        # The link's job range selects the batch's images through the gallery API.
        gallery = await harness.api.get(
            "/api/v1/gallery/images", params={"jobs": f"{ids[0]}..{ids[-1]}"}
        )
        assert {i["mobilesd_job_id"] for i in gallery.json()["images"]} == {
            j["mobilesd_job_id"] for j in jobs if j["generation_params"].get("prompt") != "owl"
        }
        bad = await harness.api.get("/api/v1/gallery/images", params={"jobs": "x..y"})
        assert bad.status_code == 422
        failed = notices["MobileSD: job failed"]
        assert "sdxl/missing_model" in failed["message"] and failed["type"] == "failure"
        # The failure came first, the batch when its last job ended, then the empty queue.
        assert titles() == [
            "MobileSD: job failed",
            "MobileSD: batch finished (2 completed, 1 failed, 0 cancelled)",
            "MobileSD: queue is empty",
        ]

        # A job of its own is a batch of one.
        single = await harness.submit(prompt="a single lighthouse")
        await harness.wait_status(single, "completed")
        await wait_for(lambda: len(titles()) == 5, what="single job notices")
        assert titles()[3] == "MobileSD: job finished (1 completed, 0 failed, 0 cancelled)"
        assert f"#gallery?jobs={single}" in receiver.notices()[3]["message"]

        await sim.stop()
        await wait_for(
            lambda: "MobileSD: server gpu1 is offline" in titles(), what="offline notice"
        )
        await sim.start()
        await wait_for(
            lambda: "MobileSD: server gpu1 is back online" in titles(), what="online notice"
        )
        assert titles().count("MobileSD: server gpu1 is offline") == 1

        # The dead target failed every time: counted, logged, shown, its secrets masked.
        await harness.core.notifier.sender.wait_idle(10)
        status = await notification_status(harness)
        live, dead = status["notify"]["targets"]
        assert (live["scheme"], live["sent"], live["failed"], live["retried"]) == ("json", 7, 0, 0)
        # Each notice was tried three times on the dead target, then given up on.
        assert (dead["scheme"], dead["sent"], dead["failed"], dead["retried"]) == ("json", 0, 7, 14)
        assert status["notify"]["retrying"] == 0
        assert dead["last_error"]["kind"] == "server_online"
        assert "***" in dead["last_error"]["message"]
        assert status["public_url"] == "https://sd.example.net"
        failures = [r for r in caplog.records if r.getMessage().startswith("notification ")]
        assert any("json target 2 failed" in r.getMessage() for r in failures)
        for hit in receiver.hits:  # what the target receives names no other secret either
            assert WEBHOOK_SECRET.encode() not in hit.body
    finally:
        await stop_harness(harness)
    assert_no_secret_logged(caplog)


async def test_a_notice_the_target_refuses_once_is_sent_on_the_next_try(
    tmp_path: Path, quick_retries: None
) -> None:
    receiver = await Receiver(notify_fail_first=1).start()
    harness = await start_harness(notify_settings(tmp_path, receiver))
    try:
        await harness.add_sim("gpu1")
        job_id = await harness.submit(prompt="a wren")
        await harness.wait_status(job_id, "completed")
        titles = ["MobileSD: job finished (1 completed, 0 failed, 0 cancelled)"]
        titles.append("MobileSD: queue is empty")
        await wait_for(
            lambda: [n["title"] for n in receiver.notices()] == titles, what="both notices"
        )
        await harness.core.notifier.sender.wait_idle(10)
        refused = [h for h in receiver.hits if h.path.startswith("/notify") and h.answered == 500]
        assert sorted(h.json()["title"] for h in refused) == sorted(titles)  # one refusal each
        live = (await notification_status(harness))["notify"]["targets"][0]
        assert (live["sent"], live["failed"], live["retried"]) == (2, 0, 2)
    finally:
        await stop_harness(harness)
        await receiver.close()


# --- configuration ------------------------------------------------------------------------------


def test_notify_urls_split_on_commas_and_spaces_but_not_inside_a_url() -> None:
    urls = split_notify_urls(
        "ntfy://ntfy.sh/topic1, tgram://123:abc/456  mailto://u:p@x.org?to=a@b.org,c@d.org"
    )
    assert urls == (
        "ntfy://ntfy.sh/topic1",
        "tgram://123:abc/456",
        "mailto://u:p@x.org?to=a@b.org,c@d.org",
    )


def test_bad_notify_url_is_named_by_position_never_echoed() -> None:
    with pytest.raises(ConfigError) as error:
        settings_from_env({"NOTIFY_URLS": "ntfy://ntfy.sh/ok sEcReTtOkEn123"})
    assert "entry 2" in str(error.value) and "sEcReTtOkEn123" not in str(error.value)


async def test_url_apprise_cannot_parse_stops_the_start(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, notify_urls=("nosuchscheme://tOkEn-42-secret/x",))
    from mobilesd_core.core import Core

    core = Core(settings)
    with pytest.raises(ConfigError) as error:
        await core.start()
    assert "entry 1 (nosuchscheme://...)" in str(error.value)
    assert "tOkEn-42-secret" not in str(error.value)


def test_settings_repr_hides_secrets(tmp_path: Path) -> None:
    settings = fast_settings(
        tmp_path, notify_urls=("tgram://bot123:SECRETTOKEN/42",), webhook_secret="hush-hush"
    )
    assert "SECRETTOKEN" not in repr(settings) and "hush-hush" not in repr(settings)


def test_redactor_masks_every_part_of_a_url() -> None:
    redact = Redactor(["discord://1234567890/webhookTOKENabc", "json://u:pa%24%24word@h.example/p"])
    text = redact(
        "POST https://discord.com/api/webhooks/1234567890/webhookTOKENabc failed (pa$$word)"
    )
    assert "1234567890" not in text and "webhookTOKENabc" not in text and "pa$$word" not in text
