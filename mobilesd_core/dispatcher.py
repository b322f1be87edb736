"""The dispatcher: hands pending jobs to free server slots and follows each one to its end.

One loop assigns work whenever something changes (a job arrives, a slot frees, a server comes
back, a backoff ends): it is woken, not polling, so a server waits milliseconds between jobs.
Each claimed job runs in its own task, in arq's order: the attempt is counted and the job is
`processing` on disk before the request leaves; the terminal write happens once.
A server slot is released as soon as Forge answers, so saving images overlaps the next
generation: the GPU is the expensive part.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .backoff import backoff_delay
from .config import Settings
from .events import EventBus
from .forge import requirements
from .forge.client import ForgeClient, generated_images
from .forge.errors import ForgeError, ForgePermanentError, ForgeStalled, ForgeTransientError
from .forge.models import CheckpointInfo, CheckpointNotFound, resolve_checkpoint, title_matches_info
from .forge.ownership import Owner, ProgressOwner
from .forge.payload import (
    build_extras_payload,
    build_img2img_payload,
    build_txt2img_payload,
    check_loras,
    resolve_sampler,
    sampler_steps,
    upscale_infotext,
)
from .gallery import Gallery, GalleryError
from .jobs import transitions
from .jobs.store import Conflict, JobNotFound, JobStore, StoreWriteError
from .jobs.transitions import Transition
from .jobs.types import AttemptError, Job, JobProgress, JobResult, JobView
from .jobs.view import JobViews
from .progress import ProgressBoard
from .routing import Router, Unroutable
from .scheduler import Scheduler, ServerSlot, eligible
from .servers import ServerRegistry, ServerRuntime
from .tasks import cancel_and_wait
from .uploads import UploadStore

log = logging.getLogger(__name__)

# How long a stop waits for runs that hold Forge's answer to save it and write the outcome.
FINISH_GRACE_SECONDS = 5.0
RECHECK_SECONDS = 5.0  # see Dispatcher.recheck_seconds


@dataclass
class _Run:
    job_id: str
    runtime: ServerRuntime
    client: ForgeClient  # the one it started with, even if the server's settings change
    task: asyncio.Task[None] | None = None
    submitted: bool = False
    cancelled: bool = False
    slot_released: bool = False
    switches: bool = False  # the server had another checkpoint loaded when it was assigned
    claimed_at: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    owner: ProgressOwner | None = None  # set when the request is sent
    seen: Owner | None = None  # whose generation Forge showed at the last poll
    interrupt_sent: bool = False


class _JobCancelled(Exception):
    pass


# A step awaited after a job is claimed, before its checkpoint is resolved: (job, its server,
# a progress callback). Model sync copies missing models here; a ForgeError fails or retries
# the job like any Forge failure.
BeforeRun = Callable[[Job, ServerRuntime, Callable[[JobProgress], None]], Awaitable[None]]


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        registry: ServerRegistry,
        gallery: Gallery,
        bus: EventBus,
        board: ProgressBoard,
        settings: Settings,
    ) -> None:
        self._store = store
        self._registry = registry
        self._gallery = gallery
        self._bus = bus
        self._board = board
        self._settings = settings
        self._wake = asyncio.Event()
        self._runs: dict[str, _Run] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Defence in depth: a pass runs at least this often even if no wake-up came. Every
        # change that makes a job runnable wakes the loop; a pass that starts a job without
        # one found a missed wake-up, which is logged as the bug it is.
        self.recheck_seconds = RECHECK_SECONDS
        self._claims = 0
        self.paused = False
        self.idle = asyncio.Event()  # set when nothing runs and nothing can be assigned
        self._waiting_for_pass: list[asyncio.Future[None]] = []
        self.scheduler = Scheduler(
            policy="fifo" if settings.scheduler == "fifo" else "checkpoint",
            max_wait_seconds=settings.max_wait_seconds,
            max_overtakes=settings.max_overtakes,
        )
        self.router = Router(registry)
        self._refreshed: set[str] = set()  # jobs whose missing checkpoint got a list refresh
        self._refresh_task: asyncio.Task[None] | None = None
        self.before_run: list[BeforeRun] = []
        self.uploads: UploadStore | None = None  # init images and upscale sources (the core's)
        # How progress events show the job: the service sets its view, so they carry every
        # field its other `job` events carry (waiting_reason, pinned, archived, ...).
        self.view: Callable[[Job], JobView] = JobViews(board)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        requeued = await self._store.requeue_processing()
        for job in requeued:
            job_id = job["mobilesd_job_id"]
            if job["interruptions"] > self._settings.max_interruptions:
                message = (
                    f"the core stopped {job['interruptions']} times while this job was running; "
                    "it was failed so it cannot stop the core again (retry it if that was chance)"
                )
                log.error("job %s: %s", job_id, message)
                await self._store.apply(job_id, transitions.fail(job, message))
                continue
            log.info("job %s was processing when the core stopped; queued again first", job_id)
        self._loop_task = asyncio.create_task(self._loop(), name="dispatcher")
        self.wake()

    async def stop(self) -> None:
        """Stop assigning. Runs that already hold Forge's answer get a few seconds to save it,
        so a restart does not throw a finished generation away; the others are abandoned: they
        stay `processing` on disk and are queued again at the next start (their images are
        saved under the same names)."""
        if self._timer:
            self._timer.cancel()
        await cancel_and_wait(self._loop_task)
        for future in self._waiting_for_pass:  # no pass will come to release them
            if not future.done():
                future.set_result(None)
        finishing = [r.task for r in self._runs.values() if r.task and r.slot_released]
        if finishing:
            await asyncio.wait(finishing, timeout=FINISH_GRACE_SECONDS)
        with contextlib.suppress(Exception):  # each run logs its own failure
            await cancel_and_wait(*(r.task for r in self._runs.values() if r.task))

    def wake(self) -> None:
        self.idle.clear()
        self._wake.set()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        log.info("dispatching %s", "paused" if paused else "resumed")
        self.wake()

    # -- assignment -------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            woken = await self._wait_for_wake()
            self._wake.clear()
            claims = self._claims
            try:
                await self._assign()
                if not woken and self._claims > claims:
                    log.warning(
                        "dispatcher: a periodic check started %d job(s) that no wake-up had "
                        "announced (a missed wake-up: please report it with this log)",
                        self._claims - claims,
                    )
            except StoreWriteError as exc:
                log.error("cannot start jobs: %s; trying again in a second", exc.strerror)
                await asyncio.sleep(1.0)
                self.wake()
            except Exception:
                log.exception("dispatcher assignment failed; retrying on the next wake-up")
                await asyncio.sleep(1.0)
                self.wake()

    async def _wait_for_wake(self) -> bool:
        """False when the periodic check is due instead (no wake-up came in time). Always
        armed, even with nothing pending: a job that becomes pending later without a wake-up
        is exactly the case it is there for."""
        if self._wake.is_set():
            return True
        # asyncio.timeout, not wait_for (see _hand_over).
        try:
            async with asyncio.timeout(self.recheck_seconds):
                await self._wake.wait()
        except TimeoutError:
            return False
        return True

    async def _assign(self) -> None:
        waiting, self._waiting_for_pass = self._waiting_for_pass, []
        try:
            await self._assign_free_slots()
        finally:
            for future in waiting:
                if not future.done():
                    future.set_result(None)

    async def _assign_free_slots(self) -> None:
        if self.paused:
            self._update_idle()
            return
        now = time.time()
        runtimes = self._registry.runtimes
        pending = self._store.pending_in_order()
        candidates, unroutable = [], []
        window = pending[: self.scheduler.window_size(len(runtimes))]
        for routed in self.router.candidates(window):
            if routed.problem is None:
                candidates.append(routed.candidate)
            else:
                unroutable.append(routed.problem)
        if unroutable:
            await self._unroutable(unroutable)
        slots = [
            ServerSlot(r.alias, r.free_slots, r.loaded, r.available, self._busy_for(r))
            for r in runtimes.values()
        ]
        for cand, slot in self.scheduler.plan(candidates, slots, now):
            runtime = runtimes.get(slot.alias)
            if runtime is None or runtime.free_slots <= 0:
                continue
            title = cand.titles.get(slot.alias)
            switches = cand.group is not None and title != runtime.loaded
            if cand.group is not None:
                runtime.planned_checkpoint = title
            await self._claim(cand.job, runtime, switches=switches)
        self.scheduler.prune(pending)
        self._arm_retry_timer(window, now)
        self._update_idle()

    def _busy_for(self, runtime: ServerRuntime) -> float | None:
        """Job lengths until the first of this server's running jobs should end."""
        if runtime.free_slots > 0:
            return None
        now = time.monotonic()
        left = [
            self.scheduler.cost.remaining(now - run.claimed_at, switched=run.switches)
            for run in self._runs.values()
            if run.runtime is runtime and not run.slot_released
        ]
        known = [x for x in left if x is not None]
        return min(known) if known else None

    async def _unroutable(self, problems: list[Unroutable]) -> None:
        """No server lists the checkpoint: refresh the lists once, then fail the job at once
        naming the closest titles (instead of trying it on servers that cannot run it)."""
        fresh = []
        for problem in problems:
            job_id = problem.candidate.job_id
            if job_id not in self._refreshed:
                fresh.append(job_id)
                continue
            self._refreshed.discard(job_id)
            log.warning("job %s failed: %s", job_id, problem.message)
            job = self._store.get_live(job_id)  # as it is now: an earlier write may have awaited
            if job is None:
                continue
            with contextlib.suppress(Conflict, JobNotFound):
                await self._store.apply(job_id, transitions.fail(job, problem.message))
        if fresh and (self._refresh_task is None or self._refresh_task.done()):
            self._refresh_task = asyncio.create_task(self._refresh_lists(fresh))

    async def _refresh_lists(self, job_ids: list[str]) -> None:
        await self.router.refresh_library()  # a file just put in the library makes it syncable
        for runtime in list(self._registry.runtimes.values()):
            if runtime.online:
                with contextlib.suppress(ForgeError):
                    await self._registry.checkpoints(runtime, refresh=True)
                    await self._registry.catalog(runtime, refresh=True)  # modules, styles...
        self._refreshed.update(job_ids)
        self.wake()

    def _arm_retry_timer(self, window: list[Job], now: float) -> None:
        # Only jobs in the scheduling window can be assigned; later ones get their turn there.
        waits = [at for j in window if (at := j.get("retry_at") or 0.0) > now]
        if self._timer:
            self._timer.cancel()
            self._timer = None
        if waits:
            delay = max(0.0, min(waits) - time.time()) + 0.005
            self._timer = asyncio.get_running_loop().call_later(delay, self.wake)

    def _update_idle(self) -> None:
        if self._runs:
            self.idle.clear()
            return
        # A job waiting out a retry backoff still counts as work to come.
        later = float("inf")
        slots = [
            ServerSlot(r.alias, r.free_slots, r.loaded)
            for r in self._registry.runtimes.values()
            if r.available
        ]
        ready = not self.paused and any(
            eligible(self.router.candidate(j), slot, later)
            for j in self._store.pending_in_order()
            for slot in slots
        )
        if ready:
            self.idle.clear()
        else:
            self.idle.set()

    async def _claim(self, job: Job, runtime: ServerRuntime, *, switches: bool = False) -> None:
        job_id = job["mobilesd_job_id"]
        runtime.active += 1
        self._registry.slots_changed(runtime)
        run = _Run(job_id, runtime, runtime.client, switches=switches)
        self._runs[job_id] = run
        try:
            claimed = await self._store.apply(
                job_id,
                transitions.claim(job, runtime.alias),
                # On its way to the OS before the request leaves (a killed core keeps it); the
                # group commit fsyncs it a moment later, off the GPU's critical path.
                durable=False,
            )
        except BaseException:
            # Not claimed (taken meanwhile, or the store cannot write): the slot is free again.
            runtime.active -= 1
            self._registry.slots_changed(runtime)
            del self._runs[job_id]
            if sys.exc_info()[0] in (Conflict, JobNotFound):
                return
            raise
        self._claims += 1
        log.info("job %s -> %s (attempt %d)", job_id, runtime.alias, claimed["attempts"])
        run.task = asyncio.create_task(self._run(claimed, run), name=f"job-{job_id}")
        # The clean-up is a done callback, not a `finally` in `_run`: a cancel whose write
        # completed in the same loop turn as the claim's can cancel the task before its first
        # step, and such a task never runs its body. Its slot then stayed taken for good.
        run.task.add_done_callback(lambda _: self._run_ended(run))

    # -- one job ----------------------------------------------------------------------------

    async def _hand_over(self, run: _Run) -> None:
        """Free the slot as soon as Forge answers (its generation lock is free by then) and let
        the next job be claimed and sent before this answer is downloaded, decoded and saved:
        that work holds the GIL and would delay the next request."""
        self._release_slot(run)
        if self._loop_task is None or self._loop_task.done():
            return  # stopping: no pass will come
        future = asyncio.get_running_loop().create_future()
        self._waiting_for_pass.append(future)
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that
        # arrives as the awaited thing completes, and a stop would then wait forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await future

    def _release_slot(self, run: _Run) -> None:
        if not run.slot_released:
            run.slot_released = True
            run.runtime.active -= 1
            self._registry.slots_changed(run.runtime)
            self.wake()

    async def _run(self, job: Job, run: _Run) -> None:
        try:
            await self._execute(job, run)
        except _JobCancelled:
            pass
        except asyncio.CancelledError:
            if not run.cancelled:
                raise  # shutdown: the job stays processing on disk and is re-queued at start
        except ForgeError as exc:
            await self._after_failure(job, run, exc)
        except Exception as exc:
            log.exception("job %s failed on an unexpected error", job["mobilesd_job_id"])
            await self._finish_failed(job, run, f"internal error: {type(exc).__name__}: {exc}")

    def _run_ended(self, run: _Run) -> None:
        self._release_slot(run)
        self._board.clear(run.job_id)
        if self._runs.get(run.job_id) is run:  # not a later run of the same job (a retry)
            del self._runs[run.job_id]
        self.wake()

    async def _execute(self, job: Job, run: _Run) -> None:
        if run.cancelled:  # cancelled between its claim and its first step: nothing to send
            raise _JobCancelled
        runtime = run.runtime
        params = job["generation_params"]
        started = time.monotonic()
        for step in self.before_run:
            await step(job, runtime, lambda progress: self._set_progress(run, progress))
        checkpoint = await self._resolve_checkpoint(params.get("checkpoint_name"), runtime)
        route, payload = await self._request(params, checkpoint, runtime)
        if job["attempts"] > 1:
            # A retry may follow a request Forge is still running (lost connection, crash):
            # Forge would queue ours behind it, and its progress would look like ours.
            await self._wait_until_idle(run)
        run.timings["prepare_s"] = time.monotonic() - started
        self._set_progress(run, {"fraction": 0.0, "phase": "starting"}, force=True)
        # Our own task id: Forge's web UI then tells this request's progress from anyone else's.
        task_id = f"task(mobilesd-{run.job_id}-{job['attempts']})"
        if route != "/extra-single-image":  # Extras takes no task id
            payload["force_task_id"] = task_id
        hires = bool(payload.get("enable_hr"))
        run.owner = ProgressOwner(
            task_id,
            job_count=int(params["n_iter"]) * (2 if hires else 1),
            steps=sampler_steps(params),
            hires_steps=int(payload.get("hr_second_pass_steps") or params["steps"]) if hires else 0,
        )
        run.submitted = True
        sent = time.monotonic()

        async def answered() -> None:
            run.timings["generate_s"] = time.monotonic() - sent
            self.scheduler.cost.observe(run.timings["generate_s"], switched=run.switches)
            if checkpoint is not None:
                # Known before the slot is handed over, so the next pick sees the right model.
                self._registry.note_checkpoint(runtime, checkpoint.title)
            await self._hand_over(run)

        request = asyncio.create_task(
            run.client.generate(
                route, payload, on_answer=answered, body_timeout=self._settings.stall_timeout
            )
        )
        try:
            result = await self._follow(request, run)
        finally:
            if not request.done():
                with contextlib.suppress(Exception):  # _follow saw its outcome, or the run ends
                    await cancel_and_wait(request)
        if not run.slot_released:
            await self._hand_over(run)
        if run.cancelled:
            raise _JobCancelled
        info = result["info"]
        if params.get("upscale"):  # Extras answers no infotext: the one it would save
            info = {"infotexts": [upscale_infotext(params)]}
        if checkpoint is not None:
            self._registry.note_checkpoint(runtime, checkpoint.title)
            if not title_matches_info(checkpoint, info):
                await self._check_still_listed(checkpoint, runtime, params["checkpoint_name"])
                raise ForgePermanentError(
                    f"server '{runtime.alias}' ran the job on '{info.get('sd_model_name')}' "
                    f"instead of '{checkpoint.title}' (it ignored the checkpoint override; "
                    "update Forge)"
                )
        images = generated_images(result)
        if not images:
            raise ForgeTransientError(f"server '{runtime.alias}' returned no images")
        await self._complete(job, run, images, info, checkpoint)

    async def _resolve_checkpoint(
        self, name: str | None, runtime: ServerRuntime
    ) -> CheckpointInfo | None:
        if not name:
            return None
        models = await self._registry.checkpoints(runtime)
        try:
            return resolve_checkpoint(name, models, server=runtime.alias)
        except CheckpointNotFound:
            # The list may predate a newly copied model: refresh once before failing.
            models = await self._registry.checkpoints(runtime, refresh=True)
            return resolve_checkpoint(name, models, server=runtime.alias)

    async def _check_still_listed(
        self, checkpoint: CheckpointInfo, runtime: ServerRuntime, name: str
    ) -> None:
        """The server ran another model than asked. If the asked one vanished from its list
        since it was read (deleted, moved), Forge silently ran the current model instead: that
        is worth another try, where the router finds a server that still has it, or fails the
        job naming the closest titles."""
        models = await self._registry.checkpoints(runtime, refresh=True)
        if not any(m.title == checkpoint.title for m in models):
            raise ForgeTransientError(
                f"checkpoint '{name}' disappeared from server '{runtime.alias}' while the job "
                "was sent (it ran the loaded model instead; its images were dropped)"
            )

    async def _request(
        self, params: dict[str, Any], checkpoint: CheckpointInfo | None, runtime: ServerRuntime
    ) -> tuple[str, dict[str, Any]]:
        """The Forge route of the job's kind and its body; init images read from the upload
        store (jobs/images.py stored them when the job was created)."""
        upscale, init = params.get("upscale"), params.get("init")
        if upscale is None and init is None:
            return "/txt2img", await self._payload(params, checkpoint, runtime)
        if self.uploads is None:
            raise ForgePermanentError("this core keeps no uploads: cannot run an image job")
        if upscale is not None:
            image = await self._upload_b64(upscale.get("image_sha256"), upscale["image"])
            for refresh in (False, True):
                catalog = await self._registry.catalog(runtime, refresh=refresh)
                try:
                    return "/extra-single-image", build_extras_payload(
                        params, image, catalog, runtime.alias
                    )
                except ForgeError:  # the list may predate a newly installed upscaler
                    if refresh:
                        raise
        assert init is not None
        image = await self._upload_b64(init.get("image_sha256"), init["image"])
        mask = None
        if init.get("mask") is not None:
            mask = await self._upload_b64(init.get("mask_sha256"), init["mask"])
        txt2img = await self._payload(params, checkpoint, runtime)
        return "/img2img", build_img2img_payload(params, txt2img, image, mask)

    async def _upload_b64(self, sha: Any, name: str) -> str:
        assert self.uploads is not None
        if not isinstance(sha, str) or not self.uploads.has(sha):
            raise ForgePermanentError(
                f"the image '{name}' is no longer stored (uploads are kept while a job needs "
                "them); queue the job again with the image"
            )
        data = await self.uploads.read(sha)
        return base64.b64encode(data).decode("ascii")

    async def _payload(
        self, params: dict[str, Any], checkpoint: CheckpointInfo | None, runtime: ServerRuntime
    ) -> dict[str, Any]:
        for refresh in (False, True):
            catalog = await self._registry.catalog(runtime, refresh=refresh)
            try:
                sampler, scheduler = resolve_sampler(
                    params["sampler_name"], params.get("scheduler"), catalog, runtime.alias
                )
                check_loras(params.get("loras") or [], catalog, runtime.alias)
                checkpoints = await self._registry.checkpoints(runtime)
                requirements.check(params, catalog, checkpoints, runtime.alias)
                refiner = params.get("refiner_checkpoint")
                return build_txt2img_payload(
                    params,
                    checkpoint_title=checkpoint.title if checkpoint else None,
                    sampler=sampler,
                    scheduler=scheduler,
                    catalog=catalog,
                    server=runtime.alias,
                    refiner_title=resolve_checkpoint(refiner, checkpoints).title
                    if refiner
                    else None,
                )
            except ForgeError:  # a name missing, or the LoRA list: ask the server again once
                if refresh:
                    raise
        raise AssertionError("unreachable")

    async def _wait_until_idle(self, run: _Run) -> None:
        deadline = time.monotonic() + self._settings.stall_timeout
        while time.monotonic() < deadline:
            state = (await run.client.progress(with_preview=False)).get("state") or {}
            if not state.get("job_count"):
                return
            self._set_progress(run, {"fraction": 0.0, "phase": "waiting for server"})
            await asyncio.sleep(self._settings.progress_interval)
        log.warning("server %s stayed busy; sending job %s anyway", run.runtime.alias, run.job_id)

    async def _follow(self, request: asyncio.Task[dict[str, Any]], run: _Run) -> dict[str, Any]:
        """Wait for txt2img while polling progress; interrupt a job that stops moving."""
        runtime = run.runtime
        interval = self._settings.progress_interval
        last_signature: tuple[Any, ...] | None = None
        last_change = time.monotonic()
        owner = run.owner
        assert owner is not None
        while True:
            done, _ = await asyncio.wait({request}, timeout=interval)
            if done:
                return request.result()
            if run.slot_released:
                continue  # the answer is downloading; progress now belongs to the next job
            try:
                raw = await run.client.progress()
            except ForgeError:
                raw = None
            internal, unsure = None, False
            if raw is not None and owner.use_internal:
                try:
                    internal = await run.client.internal_progress(owner.task_id)
                except ForgeError:
                    unsure = True  # the web UI's answer is missing this time: judge nothing
            if raw is not None and not request.done():
                state = raw.get("state") or {}
                # Liveness counts whoever holds Forge's lock: a request waiting behind a
                # person's generation that moves is not stalled.
                signature = (
                    state.get("job_timestamp"),
                    state.get("job_no"),
                    state.get("job_count"),
                    state.get("sampling_step"),
                    raw.get("progress"),
                )
                if signature != last_signature:
                    last_signature = signature
                    last_change = time.monotonic()
                if not unsure:
                    await self._show_progress(run, raw, internal)
            if time.monotonic() - last_change > self._settings.stall_timeout:
                ours = run.seen == "ours"
                if ours:  # never someone else's generation
                    with contextlib.suppress(ForgeError):
                        await run.client.interrupt()
                raise ForgeStalled(
                    f"server '{runtime.alias}' made no progress for "
                    f"{self._settings.stall_timeout:g} s; "
                    + ("interrupted" if ours else "the job waited behind another generation")
                )

    async def _show_progress(
        self, run: _Run, raw: dict[str, Any], internal: dict[str, Any] | None
    ) -> None:
        """Publish Forge's progress if it is this job's generation, else that the job waits."""
        owner = run.owner
        assert owner is not None
        run.seen = owner.classify(raw, internal)
        if run.seen == "ours":
            self._publish_forge_progress(run, raw, owner)
            if run.cancelled and not run.interrupt_sent:
                # Cancelled while it waited behind someone else: stop it now it runs.
                await self._interrupt_forge(run)
        elif run.seen in ("queued", "other"):
            self._set_progress(run, {"fraction": 0.0, "phase": "waiting for server"})

    def _publish_forge_progress(self, run: _Run, raw: dict[str, Any], owner: ProgressOwner) -> None:
        state = raw.get("state") or {}
        job_count = state.get("job_count") or 0
        job_no = state.get("job_no") or 0
        # None until Forge's number is this generation's (it keeps the last one's meanwhile).
        steps = owner.shown_steps(state)
        loading = job_count == -1
        # After the last batch Forge bumps job_no past the end while it encodes the images.
        finishing = job_count > 0 and job_no >= job_count
        preview = None
        image = raw.get("current_image")
        if isinstance(image, str) and image:
            with contextlib.suppress(binascii.Error, ValueError):
                preview = base64.b64decode(image)
        eta = raw.get("eta_relative")
        phase = "loading model" if loading else "finishing" if finishing else "sampling"
        step = None
        if steps is not None:
            step = steps if finishing else min(steps, (state.get("sampling_step") or 0) + 1)
        self._set_progress(
            run,
            {
                "fraction": round(min(1.0, max(0.0, float(raw.get("progress") or 0))), 4),
                "step": step,
                "steps": steps,
                "batch": min(job_no + 1, max(job_count, 1)),
                "batches": max(job_count, 0),
                "eta_seconds": None if loading or eta is None else round(float(eta), 1),
                "phase": phase,
                "preview": preview is not None or self._board.preview(run.job_id) is not None,
            },
            preview=preview,
        )

    def _set_progress(
        self,
        run: _Run,
        progress: JobProgress,
        *,
        preview: bytes | None = None,
        force: bool = False,
    ) -> None:
        if self._board.set(run.job_id, progress, preview) or force:
            job = self._store.get_live(run.job_id)
            if job is not None and job["status"] == "processing":
                self._bus.publish("job", self.view(job))

    # -- endings ----------------------------------------------------------------------------

    async def _complete(
        self,
        job: Job,
        run: _Run,
        images: list[bytes],
        info: dict[str, Any],
        checkpoint: CheckpointInfo | None,
    ) -> None:
        job_id = job["mobilesd_job_id"]
        try:
            saved = await self._gallery.save_job_images(
                dict(job),  # a plain dict, as the gallery's signature says (it copies it anyway)
                images,
                info,
                server_alias=run.runtime.alias,
                timings=run.timings,
                model_title=checkpoint.title if checkpoint else None,
            )
        except GalleryError as exc:
            if not isinstance(exc.__cause__, OSError):
                raise
            # Disk full, folder read-only or gone: not the server's fault, and worth another
            # try (the folder is made again if it vanished).
            raise ForgeTransientError(
                f"could not save the images: {exc.__cause__.strerror or exc.__cause__} "
                f"(gallery {self._gallery.root})"
            ) from None
        filenames = [s.filename for s in saved]
        result: JobResult = {
            "images": filenames,
            "info": {
                "seed": info.get("seed"),
                "all_seeds": info.get("all_seeds"),
                "subseed": info.get("subseed"),
                "sd_model_name": info.get("sd_model_name"),
                "sd_model_hash": info.get("sd_model_hash"),
                "checkpoint_title": checkpoint.title if checkpoint else None,
                "version": info.get("version"),
            },
            "timings": {k: round(v, 3) for k, v in run.timings.items()},
        }
        try:
            await self._write(job_id, transitions.complete(job, result))
        except Conflict:
            # Cancelled while the images were being saved: the job stays cancelled, no orphans.
            for name in filenames:
                with contextlib.suppress(Exception):
                    await self._gallery.delete_image(name)
            return
        log.info("job %s completed on %s: %d image(s)", job_id, run.runtime.alias, len(saved))
        for name in filenames:
            try:
                self._bus.publish("image", {"added": await self._gallery.get_entry(name)})
            except Exception:  # the job is complete; only the live notice is lost
                log.exception("job %s: could not announce image %s", job_id, name)

    async def _after_failure(self, job: Job, run: _Run, exc: ForgeError) -> None:
        runtime = run.runtime
        if exc.offline:
            self._registry.mark_offline(runtime, exc.message)
        attempts = job["attempts"]
        # Runs cut short by the core itself stopping do not use up the retry budget.
        tries = attempts - job.get("interruptions", 0)
        errors = transitions.with_attempt_error(job, runtime.alias, exc.message)
        if exc.transient and tries < self._settings.max_attempts:
            delay = backoff_delay(
                attempts, self._settings.retry_backoff, self._settings.retry_backoff_max
            )
            log.warning(
                "job %s attempt %d on %s failed (%s); retrying in %.1f s",
                job["mobilesd_job_id"],
                attempts,
                runtime.alias,
                exc.message,
                delay,
            )
            self._release_slot(run)
            with contextlib.suppress(Conflict, JobNotFound):
                await self._write(
                    job["mobilesd_job_id"],
                    transitions.retry_later(job, errors, time.time() + delay),
                )
            return
        if exc.transient:
            message = f"gave up after {tries} attempts; last error: {exc.message}"
        else:
            message = exc.message
        await self._finish_failed(job, run, message, errors=errors)

    async def _finish_failed(
        self,
        job: Job,
        run: _Run,
        message: str,
        *,
        errors: list[AttemptError] | None = None,
    ) -> None:
        log.warning("job %s failed on %s: %s", job["mobilesd_job_id"], run.runtime.alias, message)
        self._release_slot(run)
        with contextlib.suppress(Conflict, JobNotFound):
            await self._write(job["mobilesd_job_id"], transitions.fail(job, message, errors=errors))

    async def _write(self, job_id: str, transition: Transition) -> Job:
        """A job's outcome, written until it sticks. A disk that is full, read-only or gone
        fails the write without changing anything; the job then stays `processing` (in memory
        and on disk) and the write is tried again every few seconds, so the job ends once the
        disk takes it. A core stopped meanwhile queues the job again at its next start."""
        failures = 0
        while True:
            try:
                return await self._store.apply(job_id, transition)
            except StoreWriteError as exc:
                failures += 1
                delay = backoff_delay(failures, 0.25, 5.0)
                log.error(
                    "job %s: %s; writing its outcome again in %.1f s", job_id, exc.strerror, delay
                )
            await asyncio.sleep(delay)

    # -- cancel -----------------------------------------------------------------------------

    async def _interrupt_forge(self, run: _Run) -> None:
        run.interrupt_sent = True
        try:
            await run.client.interrupt()
            log.info("job %s interrupted on %s", run.job_id, run.runtime.alias)
        except ForgeError as exc:
            log.warning("could not interrupt job %s on %s: %s", run.job_id, run.runtime.alias, exc)

    async def interrupt(self, job_id: str) -> bool:
        """Stop a running job (already marked cancelled in the store). True if it was running."""
        run = self._runs.get(job_id)
        if run is None:
            return False
        run.cancelled = True
        if run.submitted and not run.slot_released:
            if run.seen != "ours":
                # Forge's interrupt stops whatever runs, which is not (known to be) this job's
                # generation: _follow interrupts that as soon as it shows; its answer ends the
                # run.
                log.info(
                    "job %s cancelled; interrupted once it runs on %s", job_id, run.runtime.alias
                )
                return True
            await self._interrupt_forge(run)
            # Forge answers an interrupted txt2img quickly; don't wait on a server that hangs.
            if run.task is not None:
                done, _ = await asyncio.wait({run.task}, timeout=10.0)
                if not done:
                    run.task.cancel()
        elif run.task is not None and not run.slot_released:
            run.task.cancel()
        # Once Forge has answered, the run is left to finish: its images may be being written
        # in a thread that a task cancel would not stop. Its completion then finds the job
        # cancelled and deletes them.
        return True
