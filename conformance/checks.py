"""The conformance checks: one script, run against a real Forge and against the simulator.

Every check drives `mobilesd serve` through its public API only; what MobileSD did is judged
from its answers, its event stream and its gallery, and what Forge did from Forge's own API
(its progress, its answers to a person using it directly, its PNG Info parser).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import itertools
import json
import subprocess
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from .core_api import CoreAPI, EventLog
from .direct import Answer, ForgeDirect, ProgressWatcher
from .procs import Core, ForgeServer, ForgeSpec, ModelPaths

CKPT_A = "mobilesd-test-a"
CKPT_B = "mobilesd-test-b"
LORA = "mobilesd-test-lora"
VAE = "mobilesd-test-vae.safetensors"
STYLE = "mobilesd-test-style"
STYLE_2 = "mobilesd-test-style-2"
AUTH = ("conformance", "s3cret-pass")
FOREIGN_STEPS = 3  # a person's requests use 3 steps; MobileSD's never do

# (id, what is checked): the rows of the report, in order.
CHECKS: list[tuple[str, str]] = [
    ("start_webui", "Forge starts with its web UI and `--api` (CPU only, no downloads)"),
    ("add_server", "add the server (no api-auth); health check online"),
    (
        "lists",
        "lists: checkpoints (titles, hashes), LoRAs, samplers, schedulers, styles, "
        "upscalers, VAE/text-encoder modules",
    ),
    ("job_a", "job on checkpoint A: the model used, verified from Forge's answer"),
    ("job_b", "job on checkpoint B: the switch happens, the model used is B (name and hash)"),
    ("progress", "progress seen while the model loads and during sampling, tied to the job"),
    ("lora", "LoRA job: the LoRA is in the infotext (tag and `Lora hashes`)"),
    ("hires", "hires fix on: upscaled image, hires fields in the infotext"),
    ("batch", "batch_size 2 x n_iter 2: four images, seeds s..s+3"),
    ("seed", "a seed reproduces the same image twice (pixel-identical)"),
    ("cancel", "cancel mid-job: Forge interrupted, job `cancelled`, no image kept"),
    (
        "unknown_checkpoint",
        "unknown checkpoint: refused with the closest titles, nothing generated",
    ),
    (
        "foreign_webui",
        "a person uses Forge directly (API txt2img and web UI queue) while "
        "MobileSD has jobs queued: nobody interrupted, all complete, MobileSD's progress never "
        "the other request's",
    ),
    (
        "infotext",
        "every gallery PNG, read by Forge's `parse_generation_parameters`, gives the "
        "job's parameters; Forge's PNG Info (`/sdapi/v1/png-info`) shows them",
    ),
    ("start_nowebui_auth", "Forge starts with `--nowebui --api --api-auth user:pass`"),
    (
        "add_server_auth",
        "add the server with api-auth: wrong password refused with a clear "
        "error, right one online; lists through auth",
    ),
    (
        "restart",
        "Forge killed mid-job and started again: the job runs again and completes, "
        "its image saved once",
    ),
    (
        "foreign_nowebui",
        "without a web UI (no `/internal/progress`): a person's direct API "
        "txt2img while MobileSD has jobs queued: not interrupted, MobileSD's progress never its",
    ),
]


@dataclass
class Result:
    status: str  # "pass", "FAIL", "not run"
    detail: str = ""
    seconds: float = 0.0


@dataclass
class TargetRun:
    """Everything one column of the report needs."""

    kind: str  # "real" or "sim"
    results: dict[str, Result] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # protocol captures, by name
    semantics: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def base_params(**changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "prompt": "a lighthouse on a cliff, conformance",
        "negative_prompt": "lowres, blurry",
        "width": 64,
        "height": 64,
        "steps": 2,
        "cfg_scale": 7.0,
        "sampler_name": "Euler",
    }
    params.update(changes)
    return params


class Failed(AssertionError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


class Conformance:
    """One target's run: Forge with its web UI, then Forge `--nowebui --api-auth`."""

    def __init__(
        self,
        kind: str,
        *,
        work: Path,
        models: ModelPaths,
        forge_dir: Path | None,
        forge_python: Path | None,
        hashes: dict[str, str],
        log: Callable[[str], None],
    ) -> None:
        self.kind = kind
        self.work = work / kind
        self.models = models
        self.forge_dir = forge_dir
        self.forge_python = forge_python
        self.hashes = hashes  # model name -> sha256 of its file
        self.log = log
        self.out = TargetRun(kind)
        self.forge: ForgeServer | None = None
        self.direct: ForgeDirect | None = None
        self.watcher: ProgressWatcher | None = None
        self.core: Core | None = None
        self.api: CoreAPI | None = None
        self.events: EventLog | None = None
        self.alias = "forge"
        self.jobs: dict[str, dict[str, Any]] = {}  # check id -> finished job, for infotext
        self.job_b_image: bytes | None = None

    # -- plumbing ------------------------------------------------------------------------------

    def _server(self, spec: ForgeSpec) -> ForgeServer:
        timing = {"sim_step_ms": 400.0, "sim_switch_ms": 3000.0}
        return ForgeServer(
            self.kind,
            spec,
            work=self.work,
            models=self.models,
            forge_dir=self.forge_dir,
            forge_python=self.forge_python,
            **timing,
        )

    async def _check(self, check_id: str, body: Callable[[], Awaitable[str]]) -> bool:
        started = time.monotonic()
        self.log(f"[{self.kind}] {check_id} ...")
        try:
            detail = await body()
            result = Result("pass", detail, time.monotonic() - started)
        except Exception as exc:  # a failed check is reported, and the run goes on
            where = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            if not isinstance(exc, Failed):
                where += " | " + traceback.format_exc(limit=-2).replace("\n", " ")[-600:]
            result = Result("FAIL", where, time.monotonic() - started)
        self.out.results[check_id] = result
        self.log(
            f"[{self.kind}] {check_id}: {result.status} ({result.seconds:.1f} s) {result.detail}"
        )
        return result.status == "pass"

    @property
    def a(self) -> CoreAPI:
        assert self.api is not None
        return self.api

    @property
    def d(self) -> ForgeDirect:
        assert self.direct is not None
        return self.direct

    async def _run_job(
        self, params: dict[str, Any], *, timeout: float = 600.0
    ) -> tuple[str, dict[str, Any]]:
        job_id = await self.a.generate(params, self.alias)
        job = await self.a.wait_job(job_id, timeout=timeout)
        return job_id, job

    def _completed(self, job: dict[str, Any]) -> None:
        expect(
            job["status"] == "completed",
            f"job ended {job['status']}: {(job.get('result_details') or {}).get('error')}",
        )

    async def _job_images(self, job_id: str) -> list[tuple[dict[str, Any], bytes]]:
        out = []
        for entry in await self.a.images(job_id):
            out.append((entry, await self.a.image_bytes(entry["filename"])))
        return out

    def _model_hash(self, name: str) -> str:
        return self.hashes[name][:10]

    async def _forge_idle(self, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            state = (await self.d.progress()).get("state") or {}
            if not state.get("job_count"):
                return time.monotonic() - started
            await asyncio.sleep(0.2)
        raise Failed(f"Forge still busy {timeout:.0f} s later")

    def _keep_infotext(self, name: str, png: bytes) -> str:
        """The infotext Forge wrote, for the report's comparison of the two columns."""
        text = _png_text(png)
        self.out.raw[f"infotext: {name}"] = {"status": 200, "text": text}
        return text

    async def _forge_busy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = (await self.d.progress()).get("state") or {}
            if state.get("job_count"):
                return
            await asyncio.sleep(0.05)
        raise Failed(f"Forge not busy within {timeout:.0f} s")

    async def _interrupts(self) -> int:
        assert self.forge is not None
        return await self.d.interrupt_count(self.forge.interrupt_requests())

    # -- the run ---------------------------------------------------------------------------------

    async def run(self, infotext_reader: Callable[[list[Path]], dict[str, Any]]) -> TargetRun:
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            await self._webui_phase(infotext_reader)
            await self._nowebui_phase()
        finally:
            await self._teardown()
        for check_id, _ in CHECKS:
            self.out.results.setdefault(check_id, Result("not run", "an earlier step failed"))
        self.out.seconds = time.monotonic() - self.out.started
        return self.out

    async def _teardown(self) -> None:
        for closer in (
            self.events.stop() if self.events else None,
            self.watcher.stop() if self.watcher else None,
            self.api.aclose() if self.api else None,
            self.direct.aclose() if self.direct else None,
            self.core.stop() if self.core else None,
            self.forge.stop() if self.forge else None,
        ):
            if closer is not None:
                try:
                    await closer
                except Exception as exc:
                    self.log(f"[{self.kind}] teardown: {exc!r}")

    async def _start_forge(self, spec: ForgeSpec) -> str:
        self.forge = self._server(spec)
        took = await self.forge.start()
        if self.direct:
            await self.direct.aclose()
        self.direct = ForgeDirect(self.forge.url, spec.auth)
        if self.watcher:
            await self.watcher.stop()
        self.watcher = ProgressWatcher(self.direct)
        self.watcher.start()
        flags = " ".join(self.forge.proc.argv[1:])
        return f"answered after {took:.1f} s; `{flags}`"

    async def _webui_phase(self, infotext_reader: Callable[[list[Path]], dict[str, Any]]) -> None:
        if not await self._check("start_webui", lambda: self._start_forge(ForgeSpec(webui=True))):
            return
        await self._probe_protocol()
        self.core = Core(self.work)
        await self.core.start()
        self.api = CoreAPI(self.core.url, self.core.token)
        self.events = EventLog(self.api)
        self.events.start()
        if not await self._check("add_server", self._add_server):
            return
        await self._check("lists", self._lists)
        await self._check("job_a", self._job_a)
        await self._check("job_b", self._job_b)
        await self._check("progress", self._progress)
        await self._check("lora", self._lora)
        await self._check("hires", self._hires)
        await self._check("batch", self._batch)
        await self._check("seed", self._seed)
        await self._check("cancel", self._cancel)
        await self._probe_interrupt()
        await self._check("unknown_checkpoint", self._unknown_checkpoint)
        await self._check("foreign_webui", lambda: self._foreign(webui=True))
        await self._check("infotext", lambda: self._infotext(infotext_reader))
        self._semantics()

    async def _nowebui_phase(self) -> None:
        if self.forge is not None:
            await self.forge.stop()
        if self.core is None or self.api is None:
            return
        await self.a.call("DELETE", f"/api/v1/servers/{self.alias}")
        spec = ForgeSpec(webui=False, auth=AUTH)
        if not await self._check("start_nowebui_auth", lambda: self._start_forge(spec)):
            return
        await self._probe_auth()
        self.alias = "forge-auth"
        await self._check("add_server_auth", self._add_server_auth)
        status = await self.a.server_status(self.alias)
        if not status.get("online"):
            return
        await self._check("restart", self._restart)
        await self._check("foreign_nowebui", lambda: self._foreign(webui=False))

    # -- protocol captures (straight to Forge, for the list of differences) ---------------------

    async def _capture(self, name: str, method: str, path: str, **kwargs: Any) -> Answer:
        try:
            answer = await self.d.call(method, path, **kwargs)
        except httpx.HTTPError as exc:
            # Forge's web UI server drops the connection on an exception some routes raise.
            self.out.raw[name] = {"status": "no answer", "body": type(exc).__name__}
            return Answer(0, None, 0.0)
        self.out.raw[name] = {"status": answer.status, "body": answer.body}
        return answer

    async def _probe_protocol(self) -> None:
        for name, path in [
            ("options", "/sdapi/v1/options"),
            ("sd-models", "/sdapi/v1/sd-models"),
            ("loras", "/sdapi/v1/loras"),
            ("samplers", "/sdapi/v1/samplers"),
            ("schedulers", "/sdapi/v1/schedulers"),
            ("upscalers", "/sdapi/v1/upscalers"),
            ("latent-upscale-modes", "/sdapi/v1/latent-upscale-modes"),
            ("prompt-styles", "/sdapi/v1/prompt-styles"),
            ("sd-modules", "/sdapi/v1/sd-modules"),
            ("progress (idle, fresh)", "/sdapi/v1/progress"),
            ("cmd-flags", "/sdapi/v1/cmd-flags"),
            ("memory", "/sdapi/v1/memory"),
            ("unknown route", "/sdapi/v1/no-such-route"),
            ("internal/pending-tasks", "/internal/pending-tasks"),
        ]:
            await self._capture(name, "GET", path)
        await self._capture("interrupt (idle)", "POST", "/sdapi/v1/interrupt")
        await self._capture("skip (idle)", "POST", "/sdapi/v1/skip")
        await self._capture("refresh-checkpoints", "POST", "/sdapi/v1/refresh-checkpoints")
        await self._capture("refresh-loras", "POST", "/sdapi/v1/refresh-loras")
        await self._capture(
            "txt2img, steps not a number",
            "POST",
            "/sdapi/v1/txt2img",
            json={"prompt": "x", "steps": "many"},
        )
        await self._capture(
            "internal/progress (unknown task)",
            "POST",
            "/internal/progress",
            json={"id_task": "task(none)", "live_preview": False},
        )
        await self._capture(
            "options, unknown checkpoint",
            "POST",
            "/sdapi/v1/options",
            json={"sd_model_checkpoint": "no-such-model.safetensors"},
        )

    async def _probe_auth(self) -> None:
        assert self.forge is not None
        url = self.forge.url
        async with _Plain(url) as plain:
            for name, kwargs in [
                ("401: no credentials", {}),
                ("401: wrong password", {"auth": (AUTH[0], "wrong")}),
            ]:
                answer = await plain.call("GET", "/sdapi/v1/options", **kwargs)
                self.out.raw[name] = {
                    "status": answer.status,
                    "body": answer.body,
                    "www-authenticate": answer.headers.get("www-authenticate"),
                }
            answer = await plain.call("GET", "/sdapi/v1/loras")
            self.out.raw["loras without credentials (--api-auth)"] = {
                "status": answer.status,
                "body": answer.body,
            }

    async def _probe_interrupt(self) -> None:
        """What interrupt does to a running txt2img, seen directly (not through MobileSD)."""
        started = time.monotonic()
        payload = {
            "prompt": "interrupt probe",
            "steps": 12,
            "width": 64,
            "height": 64,
            "seed": 77,
            "sampler_name": "Euler",
        }
        request = asyncio.create_task(self.d.txt2img(payload))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not request.done():
            state = (await self.d.progress()).get("state") or {}
            if state.get("sampling_step", 0) >= 1 and state.get("sampling_steps") == 12:
                break
            await asyncio.sleep(0.1)
        answer = await self._capture("interrupt (running)", "POST", "/sdapi/v1/interrupt")
        after = await self.d.progress()
        result = await request
        info = result.body.get("info") if isinstance(result.body, dict) else None
        info = json.loads(info) if isinstance(info, str) else {}
        self.out.raw["txt2img after interrupt"] = {
            "status": result.status,
            "images": len(result.body.get("images") or []) if isinstance(result.body, dict) else 0,
            "interrupt answer": answer.body,
            "state right after interrupt": after.get("state"),
            "infotext": (info.get("infotexts") or [""])[0],
            "seconds": round(time.monotonic() - started, 1),
        }

    # -- checks ----------------------------------------------------------------------------------

    async def _add_server(self) -> str:
        assert self.forge is not None
        answer = await self.a.call(
            "POST", "/api/v1/servers", json={"alias": self.alias, "api_url": self.forge.url}
        )
        expect(answer.status == 201, f"add server answered {answer.status}: {answer.body}")
        expect(answer.body.get("has_password") is False, f"has_password: {answer.body}")
        status = await self.a.wait_server(self.alias, True)
        return (
            f"201; online, latency {status.get('latency_ms')} ms, "
            f"current checkpoint {status.get('current_checkpoint')!r}"
        )

    async def _lists(self) -> str:
        answer = await self.a.call("GET", f"/api/v1/servers/{self.alias}/models")
        expect(answer.status == 200, f"models answered {answer.status}: {answer.body}")
        body = answer.body
        titles = {c["model_name"]: c for c in body["checkpoints"]}
        for name in (CKPT_A, CKPT_B):
            expect(name in titles, f"checkpoint {name} not listed: {list(titles)}")
            title = titles[name]["title"]
            expect(title.startswith(f"{name}.safetensors"), f"title {title!r}")
            got = titles[name]["hash"]
            expect(
                got in (None, self._model_hash(name)),
                f"{name}: hash {got!r}, file says {self._model_hash(name)}",
            )
        expect(LORA in body["loras"], f"LoRA {LORA} not listed: {body['loras']}")
        expect(
            "Euler" in body["samplers"] and "DPM++ 2M" in body["samplers"],
            f"samplers: {body['samplers']}",
        )
        expect("Karras" in body["schedulers"], f"schedulers: {body['schedulers']}")
        # Forge lists a divider entry before each styles file's rows; MobileSD leaves them out.
        expect(body["styles"] == [STYLE, STYLE_2], f"styles: {body['styles']}")
        expect(
            "Latent" in body["upscalers"] and "Lanczos" in body["upscalers"],
            f"upscalers: {body['upscalers']}",
        )
        modules = body.get("modules")
        expect(
            isinstance(modules, list) and VAE in modules, f"VAE/text-encoder modules: {modules!r}"
        )
        hashes = {n: titles[n]["hash"] for n in (CKPT_A, CKPT_B)}
        return (
            f"checkpoints {sorted(titles)} (hashes {hashes}), loras {body['loras']}, "
            f"{len(body['samplers'])} samplers, {len(body['schedulers'])} schedulers, "
            f"styles {body['styles']}, {len(body['upscalers'])} upscalers, "
            f"modules {modules}"
        )

    async def _job_a(self) -> str:
        params = base_params(checkpoint_name=CKPT_A, steps=3, seed=101)
        job_id, job = await self._run_job(params)
        self._completed(job)
        self.jobs["job_a"] = job
        info = job["result_details"]["info"]
        expect(info.get("sd_model_name") == CKPT_A, f"ran on {info.get('sd_model_name')!r}")
        expect(
            info.get("sd_model_hash") == self._model_hash(CKPT_A),
            f"hash {info.get('sd_model_hash')!r}, file {self._model_hash(CKPT_A)}",
        )
        images = await self._job_images(job_id)
        expect(len(images) == 1, f"{len(images)} images")
        self._keep_infotext("plain job", images[0][1])
        return (
            f"completed in {job['result_details']['timings'].get('generate_s')} s; Forge "
            f"says model {info['sd_model_name']} [{info['sd_model_hash']}]"
        )

    async def _job_b(self) -> str:
        params = base_params(checkpoint_name=CKPT_B, steps=2, seed=202)
        self.job_b_started = time.monotonic()
        job_id, job = await self._run_job(params)
        self._completed(job)
        self.jobs["job_b"] = job
        self.job_b_id = job_id
        info = job["result_details"]["info"]
        expect(info.get("sd_model_name") == CKPT_B, f"ran on {info.get('sd_model_name')!r}")
        expect(
            info.get("sd_model_hash") == self._model_hash(CKPT_B),
            f"hash {info.get('sd_model_hash')!r}, file {self._model_hash(CKPT_B)}",
        )
        images = await self._job_images(job_id)
        expect(len(images) == 1, f"{len(images)} images")
        self.job_b_image = images[0][1]
        status = await self.a.server_status(self.alias)
        expect(
            str(status.get("current_checkpoint", "")).startswith(CKPT_B),
            f"server shows {status.get('current_checkpoint')!r} loaded",
        )
        listed = await self.a.call(
            "GET", f"/api/v1/servers/{self.alias}/models", params={"refresh": "1"}
        )
        hashes = {c["model_name"]: c["hash"] for c in listed.body["checkpoints"]}
        for name in (CKPT_A, CKPT_B):
            expect(
                hashes.get(name) == self._model_hash(name),
                f"after loading, {name} listed with hash {hashes.get(name)!r}",
            )
        return (
            f"switched A -> B; Forge says {info['sd_model_name']} [{info['sd_model_hash']}]; "
            f"the lists now show both hashes {hashes}"
        )

    async def _progress(self) -> str:
        assert self.events is not None
        seen = self.events.progress(self.job_b_id)
        expect(bool(seen), "no progress published for job B")
        phases = [p.get("phase") for _, p in seen]
        expect("loading model" in phases, f"no 'loading model' phase: {phases}")
        expect("sampling" in phases, f"no 'sampling' phase: {phases}")
        wrong = [p for _, p in seen if p.get("steps") not in (None, 2)]
        expect(not wrong, f"progress of job B (2 steps) claimed other step counts: {wrong[:3]}")
        steps = [p.get("step") for _, p in seen if p.get("phase") == "sampling"]
        expect(all(s is None or 1 <= s <= 2 for s in steps), f"sampling steps shown: {steps}")
        fractions = [p.get("fraction") or 0.0 for _, p in seen]
        expect(
            all(b >= a - 1e-9 for a, b in itertools.pairwise(fractions)),
            f"fraction went back: {fractions}",
        )
        loading = [p for _, p in seen if p.get("phase") == "loading model"]
        return (
            f"{len(seen)} progress events for job B: phases {_runs(phases)}; while loading "
            f"{loading[0]}; sampling steps shown {sorted({s for s in steps if s})}"
        )

    async def _lora(self) -> str:
        params = base_params(
            checkpoint_name=CKPT_B, seed=303, loras=[{"name": LORA, "weight": 0.8}]
        )
        job_id, job = await self._run_job(params)
        self._completed(job)
        self.jobs["lora"] = job
        ((_, data),) = await self._job_images(job_id)
        text = self._keep_infotext("LoRA job", data)
        expect(f"<lora:{LORA}:0.8>" in text, f"no LoRA tag in the infotext: {text!r}")
        expect(
            "Lora hashes:" in text and LORA in text.split("Lora hashes:")[1],
            f"no Lora hashes in the infotext: {text!r}",
        )
        return "infotext: " + text.replace("\n", " / ")

    async def _hires(self) -> str:
        hires = {"upscaler": "Latent", "scale": 2.0, "steps": 1, "denoising_strength": 0.5}
        params = base_params(checkpoint_name=CKPT_B, seed=404, hires=hires)
        job_id, job = await self._run_job(params)
        self._completed(job)
        self.jobs["hires"] = job
        ((_, data),) = await self._job_images(job_id)
        expect(png_size(data) == (128, 128), f"image is {png_size(data)}, not 128x128")
        text = self._keep_infotext("hires job", data)
        for needle in (
            "Hires upscale: 2",
            "Hires upscaler: Latent",
            "Denoising strength: 0.5",
            "Hires steps: 1",
        ):
            expect(needle in text, f"{needle!r} not in the infotext: {text!r}")
        return f"128x128 image; infotext: {text.splitlines()[-1]}"

    async def _batch(self) -> str:
        assert self.events is not None
        params = base_params(checkpoint_name=CKPT_B, seed=505, batch_size=2, n_iter=2)
        job_id, job = await self._run_job(params)
        self._completed(job)
        self.jobs["batch"] = job
        images = await self._job_images(job_id)
        seeds = sorted(entry["seed"] for entry, _ in images)
        expect(len(images) == 4, f"{len(images)} images")
        expect(seeds == [505, 506, 507, 508], f"seeds {seeds}")
        batches = {p.get("batches") for _, p in self.events.progress(job_id)}
        expect(2 in batches, f"progress never showed 2 batches: {batches}")
        return f"4 images, seeds {seeds}; progress batches seen {sorted(b for b in batches if b)}"

    async def _seed(self) -> str:
        expect(self.job_b_image is not None, "job B has no image to compare with")
        params = base_params(checkpoint_name=CKPT_B, steps=2, seed=202)
        job_id, job = await self._run_job(params)
        self._completed(job)
        ((_, data),) = await self._job_images(job_id)
        assert self.job_b_image is not None
        expect(
            pixels(data) == pixels(self.job_b_image),
            "seed 202 gave different pixels the second time",
        )
        return "seed 202 on B twice: identical pixels"

    async def _cancel(self) -> str:
        before = await self._interrupts()
        params = base_params(checkpoint_name=CKPT_B, steps=12, seed=606)
        job_id = await self.a.generate(params, self.alias)
        await self.a.wait_until(
            job_id,
            lambda j: (
                (j.get("progress") or {}).get("phase") == "sampling"
                and ((j.get("progress") or {}).get("step") or 0) >= 2
            ),
            "sampling progress",
        )
        cancelled_at = time.monotonic()
        answer = await self.a.call("POST", f"/api/v1/queue/jobs/{job_id}/cancel")
        expect(answer.status == 200, f"cancel answered {answer.status}: {answer.body}")
        job = await self.a.wait_job(job_id, timeout=60)
        expect(job["status"] == "cancelled", f"job is {job['status']}")
        idle_after = await self._forge_idle(60) + (time.monotonic() - cancelled_at)
        interrupts = await self._interrupts() - before
        expect(interrupts == 1, f"Forge received {interrupts} interrupts")
        await asyncio.sleep(1.0)  # an image saved late would show up now
        images = await self.a.images(job_id)
        expect(not images, f"{len(images)} images kept for a cancelled job")
        return (
            f"cancelled at step >= 2 of 12; Forge got 1 interrupt and was idle "
            f"{idle_after:.1f} s after the cancel; no image in the gallery"
        )

    async def _unknown_checkpoint(self) -> str:
        assert self.watcher is not None
        before = (await self.d.progress()).get("state", {}).get("job_timestamp")
        started = time.monotonic()
        params = base_params(checkpoint_name="mobilesd-test-c", seed=707)
        job_id, job = await self._run_job(params, timeout=60)
        expect(job["status"] == "failed", f"job ended {job['status']}")
        error = job["result_details"].get("error") or ""
        expect(CKPT_A in error or CKPT_B in error, f"error names no close title: {error!r}")
        busy = [s for s in self.watcher.since(started) if s.state.get("job")]
        after = (await self.d.progress()).get("state", {}).get("job_timestamp")
        expect(not busy and before == after, f"Forge ran something: {busy[:2]}")
        expect(not await self.a.images(job_id), "images saved")
        return f"failed: {error}"

    async def _foreign(self, *, webui: bool) -> str:
        """A person uses Forge directly while MobileSD has jobs queued."""
        assert self.events is not None
        ckpt = CKPT_B if webui else CKPT_A
        interrupts_before = await self._interrupts()
        ids = [
            await self.a.generate(
                base_params(checkpoint_name=ckpt, seed=800 + i, prompt=f"queued job {i}"),
                self.alias,
            )
            for i in range(3 if webui else 2)
        ]
        await self.a.wait_until(ids[0], lambda j: j["status"] == "processing", "processing")
        await self._forge_busy(60)
        direct = asyncio.create_task(
            self.d.txt2img(
                {
                    "prompt": "a person's own request",
                    "steps": FOREIGN_STEPS,
                    "width": 64,
                    "height": 64,
                    "seed": 901,
                    "sampler_name": "Euler",
                }
            )
        )
        ui_task = None
        task_id = ""
        if webui:
            await asyncio.sleep(0.3)
            task_id, ui_task = await self.d.webui_txt2img(
                {
                    "Prompt": "a person in the web UI",
                    "Sampling steps": FOREIGN_STEPS,
                    "Width": 64,
                    "Height": 64,
                    "Seed": 902,
                    "Batch count": 1,
                    "Batch size": 1,
                    "Sampling method": "Euler",
                }
            )
        answer = await asyncio.wait_for(direct, 600)
        expect(answer.status == 200, f"the direct txt2img answered {answer.status}")
        info = json.loads(answer.body["info"])
        expect(
            len(answer.body["images"]) == 1 and info.get("seed") == 901,
            f"direct answer: {len(answer.body['images'])} images, seed {info.get('seed')}",
        )
        self.out.raw["txt2img answer"] = {
            "status": answer.status,
            "keys": sorted(answer.body),
            "info": info,
            "parameters": answer.body.get("parameters"),
        }
        notes = [f"direct txt2img: 200 after {answer.seconds:.1f} s"]
        if ui_task is not None:
            ui = await asyncio.wait_for(ui_task, 600)
            expect(ui.status == 200, f"web UI queue: {ui.body}")
            gallery = (ui.body or {}).get("data", [[]])[0]
            expect(len(gallery) == 1, f"web UI produced {len(gallery)} images")
            progress = await self.d.internal_progress(task_id)
            expect(progress.get("completed") is True, f"web UI task: {progress}")
            notes.append(f"web UI queue ({task_id}): completed after {ui.seconds:.1f} s")
        jobs = [await self.a.wait_job(i, timeout=600) for i in ids]
        for job in jobs:
            self._completed(job)
        interrupts = await self._interrupts() - interrupts_before
        expect(interrupts == 0, f"Forge received {interrupts} interrupts")
        foreign_progress = []
        for job_id in ids:
            for _, p in self.events.progress(job_id):
                if p.get("steps") not in (None, 2):
                    foreign_progress.append(p)
        expect(
            not foreign_progress,
            f"MobileSD showed another request's progress as its job's: {foreign_progress[:3]}",
        )
        seeds = []
        for job_id in ids:
            seeds += [e["seed"] for e in await self.a.images(job_id)]
        expect(sorted(seeds) == [800 + i for i in range(len(ids))], f"gallery seeds {seeds}")
        waiting = [p.get("phase") for i in ids for _, p in self.events.progress(i)]
        notes.append(f"MobileSD's {len(ids)} jobs completed, phases seen {_runs(waiting)}")
        notes.append("no interrupt; no progress with the person's 3 steps")
        return "; ".join(notes)

    async def _infotext(self, reader: Callable[[list[Path]], dict[str, Any]]) -> str:
        assert self.core is not None
        files: list[tuple[Path, dict[str, Any], dict[str, Any]]] = []
        for job in self.jobs.values():
            for entry in await self.a.images(job["mobilesd_job_id"]):
                files.append((self.core.gallery / entry["filename"], job, entry))
        expect(bool(files), "no gallery images")
        parsed = await asyncio.to_thread(reader, [f for f, _, _ in files])
        problems = []
        png_info_ok = 0
        for path, job, entry in files:
            got = parsed[path.name]["parameters"]
            problems += [f"{path.name}: {p}" for p in _compare(got, job, entry, self.hashes)]
            b64 = base64.b64encode(path.read_bytes()).decode()
            answer = await self.d.call("POST", "/sdapi/v1/png-info", json={"image": b64})
            if answer.status != 200:
                problems.append(f"{path.name}: png-info answered {answer.status}: {answer.body}")
                continue
            self.out.raw.setdefault("png-info", {"status": answer.status, "body": answer.body})
            shown = answer.body.get("parameters") or {}
            problems += [
                f"{path.name} (PNG Info): {p}"
                for p in _compare(shown, job, entry, self.hashes, png_info=True)
            ]
            png_info_ok += 1
        expect(not problems, "; ".join(problems[:6]))
        return (
            f"{len(files)} PNGs from {len(self.jobs)} jobs: Forge's parser and its PNG Info "
            f"give prompt, negative prompt, steps, sampler, CFG, seed, size, model, hash "
            f"(and LoRA, hires fields) as queued"
        )

    async def _add_server_auth(self) -> str:
        assert self.forge is not None
        answer = await self.a.call(
            "POST",
            "/api/v1/servers",
            json={
                "alias": self.alias,
                "api_url": self.forge.url,
                "username": AUTH[0],
                "password": "wrong-password",
            },
        )
        expect(answer.status == 201, f"add server answered {answer.status}: {answer.body}")
        expect(
            answer.body.get("has_password") is True and "password" not in answer.body,
            f"the answer shows: {answer.body}",
        )
        status = await self.a.wait_server(self.alias, False)
        error = status.get("error") or ""
        expect("refused the login" in error, f"error: {error!r}")
        answer = await self.a.call(
            "PUT",
            f"/api/v1/servers/{self.alias}",
            json={
                "alias": self.alias,
                "api_url": self.forge.url,
                "username": AUTH[0],
                "password": AUTH[1],
            },
        )
        expect(answer.status == 200, f"update answered {answer.status}: {answer.body}")
        await self.a.wait_server(self.alias, True)
        models = await self.a.call("GET", f"/api/v1/servers/{self.alias}/models")
        expect(
            models.status == 200
            and LORA in models.body["loras"]
            and VAE in (models.body.get("modules") or []),
            f"lists: {models.body}",
        )
        secret_in_log = AUTH[1] in self.core.proc.log_text() if self.core else False
        expect(not secret_in_log, "the password is in MobileSD's log")
        return f"wrong password: offline, {error!r}; right one: online; lists read through auth"

    async def _restart(self) -> str:
        assert self.forge is not None
        params = base_params(checkpoint_name=CKPT_A, steps=6, seed=909)
        job_id = await self.a.generate(params, self.alias)
        await self.a.wait_until(
            job_id,
            lambda j: (
                (j.get("progress") or {}).get("phase") == "sampling"
                and ((j.get("progress") or {}).get("step") or 0) >= 2
            ),
            "sampling progress",
        )
        await self.forge.kill()
        killed = time.monotonic()
        job = await self.a.wait_until(
            job_id, lambda j: bool(j.get("errors")), "a recorded error", timeout=60
        )
        error = job["errors"][-1]["error"]
        await self.a.wait_server(self.alias, False, timeout=30)
        took = await self.forge.start()
        job = await self.a.wait_job(job_id, timeout=600)
        self._completed(job)
        self.jobs["restart"] = job
        expect(job["attempts"] == 2, f"{job['attempts']} attempts")
        images = await self.a.images(job_id)
        expect(len(images) == 1, f"{len(images)} images")
        return (
            f"killed (SIGKILL) at step >= 2: {error!r}; Forge back after {took:.1f} s; "
            f"job completed on attempt 2, "
            f"{time.monotonic() - killed:.1f} s after the kill, 1 image"
        )

    # -- timing semantics, from the progress watcher -----------------------------------------

    def _semantics(self) -> None:
        assert self.watcher is not None
        samples = self.watcher.since(getattr(self, "job_b_started", 0.0))
        s = self.out.semantics
        busy = [x for x in samples if x.state.get("job")]
        if busy:
            first = busy[0].state
            s["first state of a job (job B)"] = (
                f"job={first.get('job')!r} job_count={first.get('job_count')} "
                f"sampling_step={first.get('sampling_step')} "
                f"sampling_steps={first.get('sampling_steps')} (job A had 3 steps)"
            )
            # Job B's own samples: its job_timestamp, up to its sampler's first step.
            own = [x for x in busy if x.state.get("job_timestamp") == first.get("job_timestamp")]
            stepped = next((i for i, x in enumerate(own) if x.state.get("sampling_step")), None)
            before = own[:stepped]
            loading = [x for x in before if x.state.get("job_count") == -1]
            if loading:
                s["job_count while the checkpoint loads"] = (
                    f"-1 for {loading[-1].t - loading[0].t:.1f} s; progress "
                    f"{loading[0].progress.get('progress')}, sampling_steps "
                    f"{sorted({x.state.get('sampling_steps') for x in loading})}"
                )
            stale = [
                x
                for x in before
                if (x.state.get("job_count") or 0) > 0 and x.state.get("sampling_steps") == 3
            ]
            s["after job_count is set, before the sampler starts"] = (
                f"sampling_steps still 3 (job A's) for {stale[-1].t - stale[0].t:.1f} s"
                if stale
                else "the sampler's own step count at once"
            )
        idle = [x for x in samples if not x.state.get("job")]
        if idle:
            last = idle[-1]
            s["progress when idle after jobs"] = (
                f"progress={last.progress.get('progress')} "
                f"keys={sorted(last.progress)} state={last.state}"
            )


class _Plain:
    """A client without the server's credentials (for the 401 answers)."""

    def __init__(self, url: str) -> None:
        self.direct = ForgeDirect(url)

    async def __aenter__(self) -> ForgeDirect:
        return self.direct

    async def __aexit__(self, *exc: object) -> None:
        await self.direct.aclose()


def _runs(items: list[Any]) -> str:
    """`a a b b b a` -> `a x2, b x3, a`."""
    out: list[list[Any]] = []
    for item in items:
        if out and out[-1][0] == item:
            out[-1][1] += 1
        else:
            out.append([item, 1])
    return ", ".join(f"{i} x{n}" if n > 1 else str(i) for i, n in out)


def _png_text(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return str(image.info.get("parameters") or "")


def _compare(
    got: dict[str, Any],
    job: dict[str, Any],
    entry: dict[str, Any],
    hashes: dict[str, str],
    *,
    png_info: bool = False,
) -> list[str]:
    """What differs between Forge's reading of a PNG and the job that made it."""
    p = job["generation_params"]
    prompt = p["prompt"]
    for lora in p.get("loras") or []:
        prompt += f" <lora:{lora['name']}:{lora['weight']:g}>"
    model = p["checkpoint_name"]
    want: dict[str, Any] = {
        "Prompt": prompt,
        "Negative prompt": p.get("negative_prompt", ""),
        "Steps": p["steps"],
        "Sampler": p["sampler_name"],
        "CFG scale": float(p["cfg_scale"]),
        "Seed": entry["seed"],
        "Size-1": p["width"],
        "Size-2": p["height"],
        "Model hash": hashes[model][:10],
        "Model": model,
    }
    if p.get("hires"):
        want["Hires upscale"] = float(p["hires"]["scale"])
        want["Hires upscaler"] = p["hires"]["upscaler"]
        want["Denoising strength"] = float(p["hires"]["denoising_strength"])
    problems = []
    for key, value in want.items():
        have = got.get(key)
        if png_info and key == "Model" and have is None:
            continue  # Forge's parser drops `Model` when it names the selected checkpoint
        if isinstance(value, float | int) and not isinstance(value, bool):
            try:
                same = float(have) == float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                same = False
        else:
            same = have == value
        if not same:
            problems.append(f"{key}: {have!r}, queued {value!r}")
    if p.get("loras") and LORA not in str(got.get("Lora hashes", "")):
        problems.append(f"Lora hashes: {got.get('Lora hashes')!r}")
    return problems


def forge_infotext_reader(
    forge_python: Path | None, forge_dir: Path | None
) -> Callable[[list[Path]], dict[str, Any]]:
    """Forge's own parser in Forge's venv; the product's parser when there is no Forge."""

    def read(files: list[Path]) -> dict[str, Any]:
        if forge_python is None or forge_dir is None:
            from mobilesd_core.forge.infotext import parse_infotext

            out = {}
            for f in files:
                text = _png_text(f.read_bytes())
                raw = parse_infotext(text)
                width, _, height = str(raw.get("Size", "")).partition("x")
                parsed = {
                    "Prompt": raw["prompt"],
                    "Negative prompt": raw["negative_prompt"],
                    **raw,
                    "Size-1": width,
                    "Size-2": height,
                }
                out[f.name] = {"infotext": text, "parameters": parsed}
            return out
        script = Path(__file__).with_name("forge_infotext.py")
        done = subprocess.run(
            [str(forge_python), str(script), "--forge-dir", str(forge_dir), *map(str, files)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise Failed(f"Forge's parser failed: {done.stderr[-1500:]}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    return read
