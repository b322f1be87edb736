"""The simulated Forge server: models, options, the generation lock, progress, txt2img, img2img
and extras.

Independent of HTTP. Order of a txt2img follows Forge's `text2imgapi` and `process_images`:
queue behind one FIFO lock, `state.begin()` (clears interrupt), apply `override_settings`, load
the checkpoint if it differs, then `n_iter` batches of sampling steps, restoring the options at
the end. Progress fields mean what `shared.state` means in Forge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from . import extras as extras_mod
from . import images, img2img, scripts
from .catalog import PROMPT_STYLES, SD_MODULES, list_modules, read_styles_files
from .config import SimulatorConfig
from .disk import CHECKPOINT_EXTS, LORA_EXTS, FileHasher, safetensors_metadata, scan
from .faults import Fault, FaultBook
from .models import Checkpoint, CheckpointRegistry, Lora
from .plan import Plan, info_object, infotext, make_plan
from .request import ExtrasRequest, Img2ImgRequest, SimHTTPError, Txt2ImgRequest, forge_500

log = logging.getLogger("mobilesd.forge.simulator")


@dataclass
class GenerationRecord:
    """One finished txt2img (interrupted ones included; failed ones are not recorded)."""

    checkpoint: str
    """Title of the checkpoint that really ran."""
    prompt: str
    """First prompt as run: styles applied, LoRA tags kept."""
    negative_prompt: str
    seed: int
    seeds: list[int]
    """Seeds of the images produced (fewer than planned when interrupted)."""
    loras: list[str]
    """LoRAs applied; empty when one unknown name made Forge drop them all."""
    sampler: str
    scheduler: str
    steps: int
    n_images: int
    interrupted: bool
    payload: dict[str, Any]
    skipped: bool = False
    task_id: str = ""
    width: int = 0
    height: int = 0
    switched: bool = False
    """A checkpoint load preceded the sampling."""
    started_at: float = 0.0
    finished_at: float = 0.0
    kind: str = "txt2img"
    """"txt2img" or "img2img"."""
    extensions: list[str] = field(default_factory=list)
    """Always-on extensions that really ran ("controlnet", "adetailer")."""
    modules: list[str] = field(default_factory=list)
    """`forge_additional_modules` (full paths) the job ran with."""
    infotext: str = ""
    """Infotext of the first image, as written into its PNG."""


@dataclass
class ProgressState:
    """Forge's `shared.state`; what `end()` does not reset lingers after a job."""

    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_no: int = 0
    job_timestamp: str = "0"
    sampling_step: int = 0
    sampling_steps: int = 0
    time_start: float = 0.0
    textinfo: str | None = None
    current_image: str | None = None
    current_image_sampling_step: int = 0
    id_live_preview: int = 0

    def begin(self, job: str) -> None:
        self.sampling_step = 0
        self.job_count = -1
        self.job_no = 0
        self.job_timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
        self.current_image = None
        self.current_image_sampling_step = 0
        self.id_live_preview = 0
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.textinfo = None
        self.job = job
        self.time_start = time.time()

    def end(self) -> None:
        self.job = ""
        self.job_count = 0

    def api(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "stopping_generation": self.stopping_generation,
            "job": self.job,
            "job_count": self.job_count,
            "job_timestamp": self.job_timestamp,
            "job_no": self.job_no,
            "sampling_step": self.sampling_step,
            "sampling_steps": self.sampling_steps,
        }


@dataclass
class JobInputs:
    """What a generation carries besides its request: the always-on scripts' args (checked by
    `scripts.script_args` before queueing, as Forge does) and an img2img's decoded mask."""

    scripts: dict[str, list[Any]] = field(default_factory=dict)
    mask: Image.Image | None = None


@dataclass
class _Preview:
    seed: int
    prompt: str
    width: int
    height: int


class SimulatedForge:
    """A Forge server's state and behaviour, driven by the HTTP app or directly by tests."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.registry = CheckpointRegistry(
            self.config.checkpoints,
            os_sep=self.config.os_sep,
            unhashed=self.config.unhashed,
            salt=self.config.seed_for_hashes,
        )
        self._hasher = FileHasher()
        if self.config.models_dir:  # boot: Forge lists its folder once at start
            self._read_models_dir()
            self.registry.refresh()
        self.lora_list: list[Lora] = []
        self._read_lora_dir()
        self.styles: list[dict[str, Any]] = (
            read_styles_files(self.config.styles_files)
            if self.config.styles_files
            else PROMPT_STYLES
        )
        self.generations: list[GenerationRecord] = []
        self.interrupt_count = 0
        self.skip_count = 0
        self.error_count = 0
        self.extras_count = 0
        self.request_counts: Counter[str] = Counter()
        self.faults = FaultBook()
        # The API's generations (an answer) and the web UI's (None): abort_all cancels both.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rng = random.Random()
        self._boot()
        self.options: dict[str, Any] = self._default_options()

    def _boot(self) -> None:
        """Fresh process: idle, nothing queued, the initial checkpoint loaded."""
        self.state = ProgressState()
        self._lock = asyncio.Lock()
        self._poke = asyncio.Event()
        self._preview: _Preview | None = None
        self.pending_tasks: dict[str, float] = {}
        self.current_task: str | None = None
        self.finished_tasks: deque[str] = deque(maxlen=16)
        self._loaded = self._initial_checkpoint()
        self._loaded_modules: tuple[str, ...] = ()
        if self._loaded is not None:
            self.registry.mark_loaded(self._loaded)

    def _initial_checkpoint(self) -> Checkpoint | None:
        name = self.config.initial_checkpoint
        if not name:
            return self.registry.first()
        found = self.registry.lookup(name)
        found = found or self.registry.lookup(name.replace("/", self.config.os_sep))
        if found is None:
            raise ValueError(f"initial_checkpoint {name!r} is not among the checkpoints")
        return found

    def _default_options(self) -> dict[str, Any]:
        loaded = self._loaded
        return {
            "sd_model_checkpoint": loaded.title if loaded else None,
            "sd_checkpoint_hash": loaded.sha256 if loaded else None,
            "sd_vae": "Automatic",
            # Forge keeps slider settings as floats (1.0, 10.0), as its /options shows.
            "CLIP_stop_at_last_layers": 1.0,
            "show_progress_every_n_steps": float(self.config.preview_every_n_steps),
            "live_previews_enable": True,
            "samples_format": "png",
            "grid_format": "png",
            "return_grid": True,
            "grid_only_if_multiple": True,
            "enable_pnginfo": True,
            "samples_save": True,
            "outdir_txt2img_samples": "output/txt2img-images",
            "eta_noise_seed_delta": 0,
            "sd_checkpoints_limit": 1.0,
            "forge_preset": "all",
            "forge_additional_modules": [],
            "forge_unet_storage_dtype": "Automatic",
            "forge_inference_memory": 1024.0,
        }

    # ---- models -------------------------------------------------------------------------

    @property
    def loaded_checkpoint(self) -> str:
        """Title of the checkpoint in memory (not necessarily the selected option)."""
        return self._loaded.title if self._loaded else ""

    @property
    def checkpoints(self) -> list[Checkpoint]:
        return self.registry.checkpoints

    def lookup_checkpoint(self, name: str | None) -> Checkpoint | None:
        return self.registry.lookup(name)

    def forget_model(self, name_or_title: str, *, pending: bool = False) -> None:
        """Delete a checkpoint file. `pending`: still listed until `/refresh-checkpoints`."""
        ckpt = self.registry.lookup(name_or_title)
        if ckpt is None:
            raise KeyError(f"no checkpoint matches {name_or_title!r}")
        self.registry.remove(ckpt, pending=pending)

    def add_model(self, relpath: str, *, pending: bool = False) -> None:
        """Add a checkpoint file. `pending`: listed only after `/refresh-checkpoints`."""
        self.registry.add(relpath, pending=pending)

    async def refresh_checkpoints(self) -> None:
        async with self._lock:
            if self.config.models_dir:
                await asyncio.to_thread(self._read_models_dir)
            self.registry.refresh()

    async def refresh_loras(self) -> None:
        """`/refresh-loras`: the LoRA folder is read again (no generation lock, as in Forge)."""
        if self.config.lora_dir:
            await asyncio.to_thread(self._read_lora_dir)

    def _read_models_dir(self) -> None:
        root = Path(self.config.models_dir or "")
        self.registry.real_files = self._hasher.scan_hashed(root, CHECKPOINT_EXTS)

    def _read_lora_dir(self) -> None:
        salt = self.config.seed_for_hashes
        loras = {name: Lora(name, salt) for name in self.config.loras}
        if self.config.lora_dir:
            root = Path(self.config.lora_dir)
            for relpath, stamp in scan(root, LORA_EXTS).items():
                stem = PurePosixPath(relpath).stem
                path = root / relpath
                if stem in loras:
                    continue
                try:
                    digest = self._hasher.sha256(path, stamp)
                except OSError:
                    continue  # vanished meanwhile
                meta = safetensors_metadata(path)
                loras[stem] = Lora(stem, salt, str(path.resolve()), digest, meta)
        self.lora_list = list(loras.values())

    def modules(self) -> list[dict[str, str]]:
        """`/sd-modules`: VAE and text-encoder files (listed on each call, as Forge's list
        follows its refreshes)."""
        return list_modules(self.config.vae_dir) if self.config.vae_dir else SD_MODULES

    def module_paths(self, values: Any) -> list[str]:
        """`main_entry.modules_change`: names or paths matched by file name among
        `/sd-modules`, kept as full paths; unknown ones are dropped without a word (Forge)."""
        if not isinstance(values, list | tuple | str):
            raise forge_500("TypeError", f"'{type(values).__name__}' object is not iterable")
        known = {m["model_name"]: m["filename"] for m in self.modules()}
        found = [known.get(PurePosixPath(str(v).replace("\\", "/")).name) for v in values]
        return [path for path in found if path is not None]

    def lora_by_alias(self) -> dict[str, Lora]:
        by_alias = {lora.alias: lora for lora in self.lora_list}
        by_alias.update({lora.name: lora for lora in self.lora_list})
        return by_alias

    # ---- options ------------------------------------------------------------------------

    def set_options(self, values: dict[str, Any]) -> None:
        """POST /options: Forge records the checkpoint choice and loads it at the next job."""
        name = values.get("sd_model_checkpoint")
        if name is not None and self.registry.lookup(name) is None:
            raise forge_500("RuntimeError", f"model {name!r} not found")
        if "forge_additional_modules" in values:
            values = {
                **values,
                "forge_additional_modules": self.module_paths(values["forge_additional_modules"]),
            }
        self.options.update(values)

    # ---- faults -------------------------------------------------------------------------

    def set_fault(
        self,
        kind: str,
        *,
        count: int | None = None,
        path: str | None = None,
        delay_ms: float = 0,
        status: int | None = None,
    ) -> None:
        """Switch a fault on; its kinds and their meaning are described in `faults.py`."""
        self.faults.add(kind, count=count, path=path, delay_ms=delay_ms, status=status)

    def clear_faults(self) -> None:
        """Also releases hung requests and frozen generations."""
        self.faults.clear()
        self._poke.set()

    def take_fault(self, path: str) -> Fault | None:
        return self.faults.take(path)

    # ---- interrupt, skip, progress --------------------------------------------------------

    def interrupt(self) -> None:
        self.interrupt_count += 1
        self.state.interrupted = True
        self._poke.set()

    def skip(self) -> None:
        self.skip_count += 1
        self.state.skipped = True
        self._poke.set()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def progress(self, *, skip_current_image: bool = False) -> dict[str, Any]:
        """GET /sdapi/v1/progress, formula and all, as in Forge's `progressapi`."""
        st = self.state
        if st.job_count == 0:
            return {
                "progress": 0.0,
                "eta_relative": 0.0,
                "state": st.api(),
                "current_image": None,
                "textinfo": st.textinfo,
            }
        progress = 0.01
        if st.job_count > 0:
            progress += st.job_no / st.job_count
        if st.sampling_steps > 0:
            progress += 1 / st.job_count * st.sampling_step / st.sampling_steps
        elapsed = time.time() - st.time_start
        eta_relative = elapsed / progress - elapsed
        self._maybe_set_preview()
        current_image = None if skip_current_image else st.current_image
        return {
            "progress": min(progress, 1),
            "eta_relative": eta_relative,
            "state": st.api(),
            "current_image": current_image,
            "textinfo": st.textinfo,
        }

    def _maybe_set_preview(self) -> None:
        st = self.state
        every = self.options.get("show_progress_every_n_steps", 10)
        if not self.options.get("live_previews_enable", True) or every == -1:
            return
        if st.sampling_step - st.current_image_sampling_step >= every:
            self._set_preview()

    def _set_preview(self) -> None:
        st, source = self.state, self._preview
        if source is None or st.sampling_steps <= 0:
            return
        completion = min(1.0, (st.sampling_step + 1) / st.sampling_steps)
        st.current_image = images.preview_base64(
            source.seed, source.prompt, source.width, source.height, completion
        )
        st.current_image_sampling_step = st.sampling_step
        st.id_live_preview += 1

    def _nextjob(self) -> None:
        st = self.state
        if self.options.get("show_progress_every_n_steps") == -1:
            self._set_preview()
        st.job_no += 1
        st.sampling_step = 0
        st.current_image_sampling_step = 0

    def internal_progress(
        self, id_task: str, live_preview: bool, id_live_preview: int
    ) -> dict[str, Any]:
        """POST /internal/progress (web UI only): per task, with "In queue: 2/3"."""
        active = id_task == self.current_task
        queued = id_task in self.pending_tasks
        completed = id_task in self.finished_tasks
        base: dict[str, Any] = {"active": active, "queued": queued, "completed": completed}
        if not active:
            textinfo = "Waiting..."
            if queued:
                order = sorted(self.pending_tasks, key=lambda t: self.pending_tasks[t])
                textinfo = f"In queue: {order.index(id_task) + 1}/{len(order)}"
            return {
                **base,
                "progress": None,
                "eta": None,
                "live_preview": None,
                "id_live_preview": -1,
                "textinfo": textinfo,
            }
        st = self.state
        progress = 0.0
        if st.job_count > 0:
            progress += st.job_no / st.job_count
            if st.sampling_steps > 0:
                progress += 1 / st.job_count * st.sampling_step / st.sampling_steps
        progress = min(progress, 1)
        elapsed = time.time() - st.time_start
        eta = elapsed / progress - elapsed if progress > 0 else None
        preview = None
        if live_preview and self.options.get("live_previews_enable", True):
            self._maybe_set_preview()
            if st.id_live_preview != id_live_preview and st.current_image is not None:
                preview = f"data:image/png;base64,{st.current_image}"
                id_live_preview = st.id_live_preview
        return {
            **base,
            "progress": progress,
            "eta": eta,
            "live_preview": preview,
            "id_live_preview": id_live_preview,
            "textinfo": st.textinfo,
        }

    # ---- txt2img ------------------------------------------------------------------------

    def submit_txt2img(
        self,
        req: Txt2ImgRequest,
        payload: Any,
        *,
        hang: asyncio.Event | None = None,
        started: asyncio.Event | None = None,
        inputs: JobInputs | None = None,
    ) -> asyncio.Task[dict[str, Any]]:
        """Run a txt2img (or an img2img, for an `Img2ImgRequest`) as its own task: like Forge,
        a client that goes away does not stop it."""
        task = asyncio.get_running_loop().create_task(
            self.txt2img(req, payload, hang=hang, started=started, inputs=inputs)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def submit_webui_txt2img(
        self,
        req: Txt2ImgRequest,
        payload: Any,
        task_id: str | None,
        report: Callable[[str, dict[str, Any] | SimHTTPError | None], None],
    ) -> asyncio.Task[None]:
        """Generate pressed in the web UI (see `gradio.py`): `report("start", None)` when it
        takes the lock, then `report("done", answer or error, None if it died)`."""

        async def run() -> None:
            outcome: dict[str, Any] | SimHTTPError | None = None
            try:
                outcome = await self.txt2img(
                    req,
                    payload,
                    job=task_id or "",
                    task_id=task_id,
                    on_start=lambda: report("start", None),
                )
            except SimHTTPError as exc:
                outcome = exc
            finally:
                # wrap_gradio_call: whatever happened, these are reset after a web UI call.
                st = self.state
                st.skipped = st.interrupted = st.stopping_generation = False
                st.job_count = 0
                st.job = ""
                report("done", outcome)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def abort_all(self) -> None:
        """The process dies: every queued or running generation is gone."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._poke.set()

    async def reboot(self) -> None:
        """Forge restarted: nothing runs, progress idle, the initial checkpoint loaded."""
        await self.abort_all()
        self._boot()
        # Other options persist (Forge saves them to config.json); the selection follows the boot.
        self.options["sd_model_checkpoint"] = self.loaded_checkpoint or None
        self.options["sd_checkpoint_hash"] = self._loaded.sha256 if self._loaded else None

    async def txt2img(
        self,
        req: Txt2ImgRequest,
        payload: Any,
        *,
        hang: asyncio.Event | None = None,
        started: asyncio.Event | None = None,
        job: str | None = None,
        task_id: str | None = None,
        on_start: Callable[[], None] | None = None,
        inputs: JobInputs | None = None,
    ) -> dict[str, Any]:
        """POST /sdapi/v1/txt2img or /img2img: the response body, or SimHTTPError. `job` is
        what `state.job` says while it runs: the API's "scripts_txt2img" / "scripts_img2img",
        or the web UI's task id."""
        is_img2img = isinstance(req, Img2ImgRequest)
        if job is None:
            job = "scripts_img2img" if is_img2img else "scripts_txt2img"
        inputs = inputs or JobInputs()
        task_id = task_id or req.force_task_id or f"task({secrets.token_hex(8)[:15]})"
        self.pending_tasks[task_id] = time.time()
        try:
            async with self._lock:
                self.pending_tasks.pop(task_id, None)
                inits: list[Image.Image] | None = None
                if isinstance(req, Img2ImgRequest):
                    # Decoded under the lock, before state.begin(), as img2imgapi does.
                    encoded = list(req.init_images or [])
                    inits = await asyncio.to_thread(
                        lambda: [img2img.decode_image(e) for e in encoded]
                    )
                self.current_task = task_id
                self.state.begin(job)
                self._preview = None
                if started is not None:
                    started.set()
                if on_start is not None:
                    on_start()
                try:
                    return await self._process(req, payload, task_id, hang, inputs, inits)
                except SimHTTPError:
                    self.error_count += 1
                    raise
                finally:
                    self.state.end()
                    self.current_task = None
                    self.finished_tasks.append(task_id)
        finally:
            self.pending_tasks.pop(task_id, None)

    async def _process(
        self,
        req: Txt2ImgRequest,
        payload: Any,
        task_id: str,
        hang: asyncio.Event | None,
        inputs: JobInputs,
        inits: list[Image.Image] | None,
    ) -> dict[str, Any]:
        override = dict(req.override_settings or {})
        if self.registry.lookup(override.get("sd_model_checkpoint")) is None:
            override.pop("sd_model_checkpoint", None)
        stored = {k: self.options[k] for k in override if k in self.options}
        if "forge_additional_modules" in override:
            override["forge_additional_modules"] = self.module_paths(
                override["forge_additional_modules"]
            )
        try:
            self.options.update(override)
            target = self.registry.lookup(self.options.get("sd_model_checkpoint"))
            target = target or self.registry.first()
            if target is None:
                raise forge_500("FileNotFoundError", "No checkpoints found.")
            modules = list(self.options.get("forge_additional_modules") or [])
            switched = await self._load(target, modules)
            result = self._run_scripts(inputs.scripts, has_init_image=inits is not None)
            planned = req
            if inits is not None:
                batch = img2img.validate_batch(len(inits), int(req.batch_size or 1))
                planned = req.model_copy(update={"batch_size": batch})
            plan = make_plan(
                planned,
                target,
                loras_by_alias=self.lora_by_alias(),
                clip_skip=int(self.options.get("CLIP_stop_at_last_layers") or 1),
                rng=self._rng,
                server_name=self.config.name,
                styles=self.styles,
                img2img=inits is not None,
            )
            plan.req = req
            plan.modules = modules
            dtype = self.options.get("forge_unet_storage_dtype")
            plan.low_bits = dtype if dtype and dtype != "Automatic" else None
            plan.script_params = result.params
            plan.extensions = result.applied
            if inits is not None:
                plan.init_images = inits
                plan.inpaint = img2img.plan_inpaint(req, inits[0].size, inputs.mask)
                plan.img2img_params = plan.inpaint.params
            return await self._run(plan, payload, task_id, hang, switched)
        finally:
            if req.override_settings_restore_afterwards:
                self.options.update(stored)

    def _run_scripts(
        self, args: dict[str, list[Any]], *, has_init_image: bool
    ) -> scripts.ScriptResult:
        """The always-on extensions' `process`: what they write, whether they really ran."""
        result = scripts.ScriptResult()
        if scripts.CONTROLNET in args:
            scripts.controlnet(
                args[scripts.CONTROLNET],
                models=self.config.controlnet_models,
                modules=self.config.controlnet_modules,
                has_init_image=has_init_image,
                result=result,
            )
        if scripts.ADETAILER in args:
            scripts.adetailer(
                args[scripts.ADETAILER], models=self.config.adetailer_models, result=result
            )
        return result

    async def _load(self, target: Checkpoint, modules: list[str] | None = None) -> bool:
        """Load the checkpoint with its additional modules; Forge reloads the model when
        either changed (`refresh_model_loading_parameters`)."""
        wanted = tuple(modules or [])
        if (
            self._loaded is not None
            and target.relpath == self._loaded.relpath
            and wanted == self._loaded_modules
        ):
            return False
        log.info("%s: loading checkpoint %s %s", self.config.name, target.title, list(wanted))
        await asyncio.sleep(self.config.switch_ms / 1000)
        self._loaded_modules = wanted
        self._loaded = target
        self.registry.mark_loaded(target)
        self.options["sd_checkpoint_hash"] = target.sha256
        return True

    async def _run(
        self,
        plan: Plan,
        payload: Any,
        task_id: str,
        hang: asyncio.Event | None,
        switched: bool,
    ) -> dict[str, Any]:
        st = self.state
        started_at = time.time()
        st.job_count = plan.n_iter * (2 if plan.hr_size else 1)
        steps = plan.sampling_steps
        hang_at = steps // 2 if hang is not None else None
        produced: list[tuple[int, Image.Image | None, str]] = []
        any_skipped = False
        for batch in range(plan.n_iter):
            if st.skipped:
                st.skipped = False
            if st.interrupted:
                break
            if plan.n_iter > 1:
                st.job = f"Batch {batch + 1} out of {plan.n_iter}"
            first = batch * plan.batch_size
            size = (plan.width, plan.height)
            self._preview = _Preview(plan.seeds[first], plan.prompts[first], *size)
            done = await self._sample(steps, hang_at, hang)
            hang_at = None
            completion = done / steps
            any_skipped = any_skipped or st.skipped
            self._nextjob()
            if plan.hr_size is not None and not st.interrupted:
                size = plan.hr_size
                self._preview = _Preview(plan.seeds[first], plan.prompts[first], *size)
                done = await self._sample(plan.hr_steps, None, None)
                completion = done / plan.hr_steps
                self._nextjob()
            indices = range(first, first + plan.batch_size)
            produced += await self._render_batch(plan, indices, size, completion)
        return self._respond(plan, produced, payload, task_id, switched, started_at, any_skipped)

    async def _sample(self, steps: int, hang_at: int | None, hang: asyncio.Event | None) -> int:
        """One sampling pass; the number of steps finished before an interrupt or skip."""
        st = self.state
        st.sampling_steps = steps
        st.sampling_step = 0
        step_s = self.config.step_ms / 1000
        done = 0
        begin = time.monotonic()
        while done < steps:
            if hang is not None and done == hang_at:
                await self._frozen(hang)
                hang_at = None
                begin = time.monotonic() - done * step_s
                continue
            if not await self._sleep_until(begin + (done + 1) * step_s):
                break
            done += 1
            st.sampling_step = done  # Forge counts the steps done (its callback adds 1 each)
        return done

    def _stopped(self) -> bool:
        return self.state.interrupted or self.state.skipped

    async def _sleep_until(self, deadline: float) -> bool:
        """Wait for a step to finish; False when an interrupt or skip ends it first."""
        while not self._stopped():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await asyncio.sleep(0)
                return not self._stopped()
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._poke.wait()
        return False

    async def _frozen(self, release: asyncio.Event) -> None:
        """A "hang" fault: progress stands still, lock held, until interrupt, skip or clear."""
        log.info("%s: generation frozen by a hang fault", self.config.name)
        while not (release.is_set() or self._stopped()):
            self._poke.clear()
            await self._poke.wait()

    async def _render_batch(
        self, plan: Plan, indices: range, size: tuple[int, int], completion: float
    ) -> list[tuple[int, Image.Image | None, str]]:
        req = plan.req
        if not req.send_images:
            return [(i, None, "") for i in indices]
        keep = bool(req.save_images)  # for the grid
        texts = [infotext(plan, i, self.config.version) for i in indices]

        def picture(i: int) -> Image.Image:
            if plan.inpaint is None:
                return images.render(plan.seeds[i], plan.prompts[i], *size, completion)
            inits = plan.init_images
            return img2img.render(
                inits[(i % plan.batch_size) % len(inits)],
                plan.inpaint,
                req=req,
                seed=plan.seeds[i],
                prompt=plan.prompts[i],
                width=size[0],
                height=size[1],
                completion=completion,
            )

        def work() -> list[tuple[int, Image.Image | None, str]]:
            out: list[tuple[int, Image.Image | None, str]] = []
            for i, text in zip(indices, texts, strict=True):
                image = picture(i)
                out.append((i, image if keep else None, images.png_base64(image, text)))
            return out

        return await asyncio.to_thread(work)

    def _respond(
        self,
        plan: Plan,
        produced: list[tuple[int, Image.Image | None, str]],
        payload: Any,
        task_id: str,
        switched: bool,
        started_at: float,
        skipped: bool,
    ) -> dict[str, Any]:
        req, st = plan.req, self.state
        infotexts = [infotext(plan, i, self.config.version) for i, _, _ in produced]
        encoded = [b64 for _, _, b64 in produced if b64]
        index_of_first_image = 0
        if req.save_images and len(produced) >= 2:
            # Forge prepends a grid (with the first image's infotext) when it saves 2+ images.
            index_of_first_image = 1
            infotexts.insert(0, infotexts[0])
            if req.send_images:
                sheet = images.grid([im for _, im, _ in produced if im is not None])
                encoded.insert(0, images.png_base64(sheet, infotexts[0]))
        if not infotexts:
            infotexts = [infotext(plan, 0, self.config.version)]
        info = info_object(
            plan,
            infotexts=infotexts,
            index_of_first_image=index_of_first_image,
            job_timestamp=st.job_timestamp,
            version=self.config.version,
        )
        self.generations.append(
            GenerationRecord(
                checkpoint=plan.checkpoint.title,
                prompt=plan.prompts[0],
                negative_prompt=plan.negative_prompts[0],
                seed=plan.seeds[0],
                seeds=[plan.seeds[i] for i, _, _ in produced],
                loras=list(plan.loras),
                sampler=plan.sampler.name,
                scheduler=plan.schedule_type or plan.scheduler,
                steps=plan.steps,
                n_images=len(produced),
                interrupted=st.interrupted,
                payload=payload if isinstance(payload, dict) else {},
                skipped=skipped,
                task_id=task_id,
                width=plan.width,
                height=plan.height,
                switched=switched,
                started_at=started_at,
                finished_at=time.time(),
                kind="img2img" if plan.img2img else "txt2img",
                extensions=list(plan.extensions),
                modules=list(plan.modules),
                infotext=infotexts[index_of_first_image] if infotexts else "",
            )
        )
        log.info(
            "%s: txt2img done on %s: %d image(s)%s",
            self.config.name,
            plan.checkpoint.title,
            len(produced),
            " (interrupted)" if st.interrupted else "",
        )
        return {
            "images": encoded,
            "parameters": req.echo() if isinstance(req, Img2ImgRequest) else req.model_dump(),
            "info": json.dumps(info, default=lambda _: None),
        }

    # ---- extras -------------------------------------------------------------------------

    async def extras(self, req: ExtrasRequest, encoded: list[str]) -> tuple[list[Image.Image], str]:
        """`/extra-single-image` and `/extra-batch-images`: the pictures (decoded first, before
        the lock, as Forge does), upscaled under the generation lock with `state.job` "extras";
        the upscaled pictures and `html_info`. An unknown upscaler fails without `state.end()`,
        as `run_postprocessing` has no `finally`: `/progress` shows the dead job until the next
        one begins."""
        pictures = await asyncio.to_thread(lambda: [img2img.decode_image(e) for e in encoded])
        async with self._lock:
            st = self.state
            st.begin("extras")
            st.job_count = len(pictures)
            out: list[Image.Image] = []
            info: dict[str, Any] = {}
            for picture in pictures:
                st.job_no += 1
                if st.interrupted or st.stopping_generation:
                    break
                image, info = await asyncio.to_thread(extras_mod.upscale, picture, req)
                out.append(image)
            st.end()
        self.extras_count += 1
        return out, extras_mod.html_info(info)

    # ---- summary ------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """GET /_sim/state."""
        return {
            "name": self.config.name,
            "loaded_checkpoint": self.loaded_checkpoint,
            "selected_checkpoint": self.options.get("sd_model_checkpoint"),
            "busy": self.busy,
            "queued": len(self.pending_tasks),
            "progress": self.state.api(),
            "interrupt_count": self.interrupt_count,
            "skip_count": self.skip_count,
            "error_count": self.error_count,
            "request_counts": dict(self.request_counts),
            "faults": self.faults.summary(),
            "generations": [
                {k: v for k, v in asdict(g).items() if k != "payload"} for g in self.generations
            ],
        }
