"""MobileSDApp: four tabs over one API client and one event stream.

Workers do the I/O (named, grouped, `exit_on_error=False`); message handlers change the UI. A
refused or failed call to the core is toasted by one handler (`errors.core_errors`), worded the
same at every call site; one `on_worker_state_changed` turns an unexpected worker error into a
notification, so nothing is swallowed and nothing kills the app. `make_app()` is the one factory
for the CLI, the demo, the tests and the benchmark.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, assert_never

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.notifications import SeverityLevel
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from .api_client import ApiError, CoreApi, Unreachable
from .errors import CORE_ERRORS, core_errors, error_text
from .events import GALLERY_PAGE, EventConsumer
from .jobtext import one_line
from .messages import (
    ConnectionChanged,
    DownloadChanged,
    ImageChanged,
    JobChanged,
    JobRemoved,
    QueueChanged,
    Reloaded,
    ServerChanged,
)
from .prefs import Prefs
from .screens.civitai_import import CivitaiImport, MissingModels
from .screens.confirm import Confirm
from .screens.image_view import Choice, ImageView
from .screens.lora_picker import LoraPicker
from .screens.server_form import ServerForm
from .thumbs import ImageLoader, ImageWidget, halfcell_widget
from .widgets.gallery import GalleryPane, ImageAction, ImageVerb, MoreImagesWanted
from .widgets.generator import (
    GeneratorPane,
    LoraPickRequested,
    ModelsWanted,
    SubmitRequested,
)
from .widgets.queue import QueueAction, QueuePane
from .widgets.servers import CancelDownload, ServerAction, ServersPane

TABS = ("generator", "queue", "gallery", "servers")
TAB_TITLES = {
    "generator": "F1 Generate",
    "queue": "F2 Queue",
    "gallery": "F3 Gallery",
    "servers": "F4 Servers",
}
CONNECTION_LABEL = {
    "connecting": "[yellow]◌ connecting[/]",
    "online": "[green]● online[/]",
    "offline": "[bold red]✗ core unreachable[/]",
    "unauthorized": "[bold red]✗ token refused[/]",
}


def utc_now() -> datetime:
    return datetime.now(UTC)


class MobileSDApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "MobileSD"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "show_tab('generator')", "Generate", show=False, id="app.tab.generator"),
        Binding("f2", "show_tab('queue')", "Queue", show=False, id="app.tab.queue"),
        Binding("f3", "show_tab('gallery')", "Gallery", show=False, id="app.tab.gallery"),
        Binding("f4", "show_tab('servers')", "Servers", show=False, id="app.tab.servers"),
        Binding("f5", "civitai_import", "Civitai", show=False, id="app.civitai"),
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True),
    ]

    # The event stream's state (CONNECTION_LABEL's keys): the top bar's indicator follows it.
    connection: var[str] = var("connecting", init=False)
    # Dispatching paused: the top bar and the Queue tab's summary say so.
    paused: var[bool] = var(False, init=False)

    def __init__(
        self,
        api_client: CoreApi,
        *,
        clock: Callable[[], datetime] = utc_now,
        prefs: Prefs | None = None,
        initial_tab: str = "generator",
        image_widget: ImageWidget | None = None,
        follow_events: bool = True,
        age_refresh: float | None = 10.0,
        gallery_page: int = GALLERY_PAGE,
    ) -> None:
        super().__init__()
        self.api = api_client
        self.clock = clock
        self.prefs = prefs or Prefs(None)
        self.initial_tab = initial_tab if initial_tab in TABS else "generator"
        self.image_widget = image_widget or halfcell_widget()
        self.follow_events = follow_events
        self.age_refresh = age_refresh
        self.gallery_page = gallery_page
        self.thumbs = ImageLoader(api_client, size=300)
        self.previews = ImageLoader(api_client, size=4, parallel=1)
        self.loaded = False  # the first snapshot arrived (tests wait for it)
        self.servers: list[dict[str, Any]] = []
        self._models: dict[str | None, dict[str, Any]] = {}
        # Finished jobs are announced in batches: twenty quick jobs make one toast, not twenty.
        self._done: list[str] = []
        self._failed: list[str] = []
        self._model_target: str | None = None

    # -- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="topbar"):
            yield Static("[b]MobileSD[/]", id="brand")
            yield Static("", id="queue-state")
            yield Static(CONNECTION_LABEL["connecting"], id="connection")
        with TabbedContent(initial=self.initial_tab, id="tabs"):
            with TabPane(TAB_TITLES["generator"], id="generator"):
                yield GeneratorPane(id="generator-pane")
            with TabPane(TAB_TITLES["queue"], id="queue"):
                yield QueuePane(
                    self.clock, previews=self.api, image_widget=self.image_widget, id="queue-pane"
                )
            with TabPane(TAB_TITLES["gallery"], id="gallery"):
                yield GalleryPane(
                    self.thumbs, self.image_widget, page_size=self.gallery_page, id="gallery-pane"
                )
            with TabPane(TAB_TITLES["servers"], id="servers"):
                yield ServersPane(id="servers-pane")
        yield Footer(compact=True)

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Toasts carry prompts, file names and server errors: shown as text, never as markup
        (a prompt like `[@click=app.quit]` must not become a link)."""
        if title == "Done":
            # Completions come one after another: the newest replaces the last, not a pile.
            for old in [n for n in self._notifications if n.title == "Done"]:
                self._unnotify(old, refresh=False)
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def on_mount(self) -> None:
        self.generator.fill(self.prefs.load())
        if self.follow_events:
            self.follow()
        if self.age_refresh:
            self.set_interval(self.age_refresh, self.queue.refresh_ages)
        self.watch(self.queue, "counts", self._show_queue_state, init=False)
        self.call_after_refresh(self._focus_tab, self.initial_tab)

    @property
    def generator(self) -> GeneratorPane:
        return self.query_one(GeneratorPane)

    @property
    def queue(self) -> QueuePane:
        return self.query_one(QueuePane)

    @property
    def gallery(self) -> GalleryPane:
        return self.query_one(GalleryPane)

    @property
    def servers_pane(self) -> ServersPane:
        return self.query_one(ServersPane)

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self._focus_tab(tab)

    def _focus_tab(self, tab: str) -> None:
        targets = {
            "generator": "#prompt",
            "queue": "#jobs",
            "gallery": ".tile",
            "servers": "#servers-table",
        }
        with contextlib.suppress(Exception):  # nothing focusable yet (an empty gallery)
            self.query(targets[tab]).first().focus()

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id:
            self.call_after_refresh(self._focus_tab, event.pane.id)

    # -- the event stream ---------------------------------------------------------------------

    @work(exclusive=True, group="events", exit_on_error=False, name="events")
    async def follow(self) -> None:
        await EventConsumer(self.api, self.post_message, gallery_page=self.gallery_page).run()

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        before = self.connection
        self.query_one("#connection", Static).tooltip = message.detail or None
        self.connection = message.state
        if message.state == "offline" and before != "offline":
            self.notify(
                f"{message.detail}. Your input is kept; reconnecting by itself.",
                title="Core unreachable",
                severity="error",
            )
        elif message.state == "online" and before == "offline":
            self.notify("Connected to the core again.", title="Reconnected")
        elif message.state == "unauthorized":
            self.notify(
                f"{message.detail}. Restart with the right token.",
                title="Not signed in",
                severity="error",
                timeout=30,
            )

    def watch_connection(self, state: str) -> None:
        self.query_one("#connection", Static).update(CONNECTION_LABEL.get(state, state))

    def on_reloaded(self, message: Reloaded) -> None:
        snap = message.snapshot
        self.paused = snap.paused
        self.servers = snap.servers
        self.queue.load(snap.jobs)
        self.servers_pane.load(snap.servers)
        self.gallery.load(snap.images, snap.images_total)
        self.generator.set_servers([s["alias"] for s in snap.servers])
        self.generator.last_seed = self._last_seed(snap.jobs)
        if not self.loaded:
            self.loaded = True
            self.want_models(self._model_target)

    def on_job_changed(self, message: JobChanged) -> None:
        job = message.job
        before = self.queue.jobs.get(message.job_id)
        self.queue.apply(job)
        status = job["status"]
        if before is not None and before["status"] != status:
            prompt = one_line(job["generation_params"].get("prompt", ""), 40)
            if status == "completed":
                count = len((job.get("result_details") or {}).get("images") or [])
                self._announce(self._done, f"{prompt} ({count} image{'s' if count != 1 else ''})")
                seed = self._seed_of(job)
                if seed is not None:
                    self.generator.last_seed = seed
            elif status == "failed":
                error = (job.get("result_details") or {}).get("error", "no reason given")
                self._announce(self._failed, f"{prompt}: {error}")

    def _announce(self, batch: list[str], text: str) -> None:
        if not self._done and not self._failed:
            self.set_timer(0.7, self._flush_announcements)
        batch.append(text)

    def _flush_announcements(self) -> None:
        done, failed = self._done, self._failed
        self._done, self._failed = [], []
        if len(done) == 1:
            self.notify(done[0], title="Done")
        elif done:
            self.notify(f"{len(done)} jobs finished; the newest: {done[-1]}", title="Done")
        if len(failed) == 1:
            self.notify(failed[0], title="Job failed", severity="error", timeout=10)
        elif failed:
            self.notify(
                f"{len(failed)} jobs failed; the last: {failed[-1]}. F2 shows why.",
                title="Jobs failed",
                severity="error",
                timeout=10,
            )

    def on_job_removed(self, message: JobRemoved) -> None:
        self.queue.remove_job(message.job_id)

    def on_server_changed(self, message: ServerChanged) -> None:
        self.servers_pane.apply_status(message.data)
        aliases = sorted(self.servers_pane.servers)
        self.generator.set_servers(aliases)

    def on_download_changed(self, message: DownloadChanged) -> None:
        self.servers_pane.show_download(message.data)
        status = message.data.get("status")
        name = message.data.get("filename") or message.data.get("model_name") or "model"
        if status == "completed":
            self.notify(f"{name} is in your library.", title="Download finished")
        elif status == "failed":
            error = message.data.get("error") or "no reason given"
            self.notify(f"{name}: {error}", title="Download failed", severity="error", timeout=10)

    # -- Civitai ------------------------------------------------------------------------------

    def action_civitai_import(self) -> None:
        self.action_show_tab("generator")
        self.push_screen(CivitaiImport(self.api), self._imported)

    def _imported(self, answer: dict[str, Any] | None) -> None:
        if not answer:
            return
        self.generator.load(answer["generation_params"])
        missing = answer.get("missing") or []
        warnings = answer.get("warnings") or []
        note = f" {len(missing)} model(s) not in your libraries." if missing else ""
        self.notify("Review the form, then add it to the queue (ctrl+s)." + note, title="Imported")
        for warning in warnings:
            self.notify(str(warning), title="Civitai", severity="warning")
        if missing:
            self.push_screen(MissingModels(missing), self._download_missing)

    def _download_missing(self, chosen: list[dict[str, Any]] | None) -> None:
        for item in chosen or []:
            if item.get("model_version_id"):
                self.start_download(int(item["model_version_id"]))

    @work(group="civitai", exit_on_error=False, name="download")
    async def start_download(self, model_version_id: int) -> None:
        with core_errors(self, "Cannot download", timeout=10):
            answer = await self.api.civitai_download(model_version_id)
            self.servers_pane.show_download(answer["download"])
            self.notify("Downloading; F4 shows the progress.", title="Download started")

    @on(CancelDownload)
    def _cancel_download(self, message: CancelDownload) -> None:
        download = message.download
        name = download.get("filename") or download.get("model_name") or "this model"

        def answered(yes: bool | None) -> None:
            if yes:
                self.cancel_download(download["download_id"], name)

        # Asked first: a cancelled download starts over from nothing next time.
        self.push_screen(
            Confirm(f"Cancel the download of {name}? What has arrived is deleted.", "Cancel it"),
            answered,
        )

    @work(group="civitai", exit_on_error=False, name="cancel-download")
    async def cancel_download(self, download_id: str, name: str) -> None:
        with core_errors(self, f"Cannot cancel {name}"):
            download = await self.api.civitai_cancel(download_id)
            self.servers_pane.show_download(download)
            self.notify(f"{name}: cancelled, its partial file deleted.", title="Download cancelled")

    def on_image_changed(self, message: ImageChanged) -> None:
        if isinstance(message.data.get("added"), dict):
            self.gallery.add(message.data["added"])
        if isinstance(message.data.get("removed"), dict):
            self.gallery.discard(message.data["removed"]["filename"])

    def on_queue_changed(self, message: QueueChanged) -> None:
        self.paused = bool(message.data.get("paused"))

    def watch_paused(self, paused: bool) -> None:
        self.queue.paused = paused
        self._show_queue_state()

    def _show_queue_state(self) -> None:
        """The top bar's line, from the Queue tab's counts and the paused state."""
        counts = self.queue.counts or {}
        text = f"{counts.get('processing', 0)} running · {counts.get('pending', 0)} pending"
        if self.paused:
            text += " · [bold yellow]paused[/]"
        self.query_one("#queue-state", Static).update(text)

    @staticmethod
    def _seed_of(job: dict[str, Any]) -> int | None:
        info = (job.get("result_details") or {}).get("info") or {}
        seed = info.get("seed")
        return seed if isinstance(seed, int) and seed >= 0 else None

    def _last_seed(self, jobs: list[dict[str, Any]]) -> int | None:
        done = [j for j in jobs if j["status"] == "completed" and self._seed_of(j) is not None]
        if not done:
            return None
        newest = max(done, key=lambda j: j.get("completion_timestamp") or "")
        return self._seed_of(newest)

    # -- generator ----------------------------------------------------------------------------

    @on(SubmitRequested)
    def _submit_requested(self, message: SubmitRequested) -> None:
        if message.edit_of is not None:
            self.save_edit(message.edit_of, message.params, message.target)
        elif message.every_checkpoint:
            self.submit_every_checkpoint(message.params, message.target)
        else:
            self.submit(message.params, message.target)

    @work(exclusive=True, group="submit", exit_on_error=False, name="edit")
    async def save_edit(self, job_id: str, params: dict[str, Any], target: str | None) -> None:
        generator = self.generator
        try:
            job = await self.api.edit(job_id, params, target)
        except ApiError as exc:
            if exc.status == 409:
                generator.stop_editing()
                self.notify(
                    f"Job {job_id[-8:]} has already started or finished; nothing was changed.",
                    severity="error",
                )
                return
            generator.show_errors(exc.field_problems(), error_text(exc))
            return
        except Unreachable as exc:
            generator.show_errors([], f"{error_text(exc)}. Nothing was changed; try again.")
            return
        generator.clear_errors()
        generator.stop_editing(f"[green]saved[/] job {job_id[-8:]}")
        self.queue.apply(job)
        self.queue.select(job_id)

    @work(exclusive=True, group="submit", exit_on_error=False, name="every-checkpoint")
    async def submit_every_checkpoint(self, params: dict[str, Any], target: str | None) -> None:
        """One job per checkpoint the chosen server (or every online one) lists: one batch."""
        generator = self.generator
        models = self._models.get(target)
        if models is None:
            await self.load_models(target).wait()
            models = self._models.get(target) or {}
        titles = [c["title"] for c in models.get("checkpoints", []) if c.get("title")]
        if not titles:
            where = target or "any online server"
            generator.show_errors([], f"No checkpoint list from {where}; nothing was queued.")
            return
        params = {k: v for k, v in params.items() if k != "checkpoint_name"}
        answer = await self._queue(
            self.api.submit_sweep(params, {"checkpoint_name": titles}, target)
        )
        if answer is None:
            return
        generator.clear_errors()
        generator.show_batch(answer)
        self.prefs.save(generator.form())

    async def _queue(self, request: Awaitable[dict[str, Any]]) -> dict[str, Any] | None:
        """Send the Generator's request; a refusal is shown by its fields (None: not queued)."""
        try:
            return await request
        except ApiError as exc:
            self.generator.show_errors(exc.field_problems(), error_text(exc))
        except Unreachable as exc:
            self.generator.show_errors([], f"{error_text(exc)}. Nothing was queued; try again.")
        return None

    @work(exclusive=True, group="submit", exit_on_error=False, name="submit")
    async def submit(self, params: dict[str, Any], target: str | None) -> None:
        generator = self.generator
        job = await self._queue(self.api.submit(params, target))
        if job is None:
            return
        generator.clear_errors()
        generator.show_queued(job)
        self.prefs.save(generator.form())
        self.queue.apply(job)
        self.queue.select(job["mobilesd_job_id"])

    @on(ModelsWanted)
    def _models_wanted(self, message: ModelsWanted) -> None:
        self.want_models(message.target)

    def want_models(self, target: str | None) -> None:
        self._model_target = target
        if target in self._models:
            self.generator.set_models(self._models[target])
        else:
            self.load_models(target)

    @work(exclusive=True, group="models", exit_on_error=False, name="models")
    async def load_models(self, target: str | None) -> None:
        """One server's lists; for "any server", every online server's lists merged."""
        if target is not None:
            aliases = [target]
        else:
            aliases = [
                s["alias"]
                for s in self.servers
                if (s.get("status") or {}).get("online") and s.get("enabled", True)
            ]
        merged: dict[str, Any] = {"checkpoints": [], "loras": [], "samplers": [], "schedulers": []}
        for alias in aliases:
            # One server not answering leaves the others' lists: a warning, and on.
            with core_errors(self, f"Cannot read the model lists of {alias}", severity="warning"):
                models = await self.api.server_models(alias)
                for key in merged:
                    for item in models.get(key) or []:
                        if item not in merged[key]:
                            merged[key].append(item)
        if aliases and any(merged.values()):
            self._models[target] = merged
        if self._model_target == target:
            self.generator.set_models(merged)

    @on(LoraPickRequested)
    def _pick_lora(self) -> None:
        models = self._models.get(self._model_target) or {}
        source = self._model_target or "all online servers"

        def chosen(name: str | None) -> None:
            if name:
                self.generator.add_lora(name, 1.0)

        self.push_screen(LoraPicker(list(models.get("loras") or []), source), chosen)

    # -- queue --------------------------------------------------------------------------------

    @on(QueueAction)
    def _queue_action(self, message: QueueAction) -> None:
        verb, job_id = message.action, message.job_id
        if verb == "clear":
            self.ask_clear_finished()
            return
        if verb == "pause":
            self.toggle_pause()
            return
        if job_id is None:
            self.notify("No job selected.", severity="warning")
            return
        match verb:
            case "edit":
                self.edit_job(job_id)
            case "cancel":
                self.cancel_job(job_id)
            case "cancel_batch":
                self.cancel_batch_of(job_id)
            case "retry":
                self.retry_job(job_id)
            case "up" | "down" | "top":
                self.move_job(job_id, verb)
            case "delete":
                self.delete_job(job_id)
            case _:
                assert_never(verb)

    def edit_job(self, job_id: str) -> None:
        """Open a pending job in the generator form; saving there PATCHes it."""
        job = self.queue.jobs.get(job_id)
        if job is None or job["status"] != "pending":
            status = job["status"] if job else "gone"
            self.notify(
                f"Only pending jobs can be edited; this one is {status}.", severity="warning"
            )
            return
        self.generator.start_editing(job)
        self.action_show_tab("generator")

    @work(group="queue-actions", exit_on_error=False, name="cancel-job")
    async def cancel_job(self, job_id: str) -> None:
        with core_errors(self, "Cannot cancel this job"):
            self.queue.apply(await self.api.cancel(job_id))

    @work(group="queue-actions", exit_on_error=False, name="cancel-batch")
    async def cancel_batch_of(self, job_id: str) -> None:
        """Cancel every job still to run in `job_id`'s batch."""
        batch = (self.queue.jobs.get(job_id) or {}).get("batch_id")
        if not batch:
            return
        with core_errors(self, "Cannot cancel this batch"):
            done = await self.api.cancel_batch(batch)
            self.notify(f"Cancelled {done['cancelled']} job(s) of batch {batch[-4:]}.")

    @work(group="queue-actions", exit_on_error=False, name="retry-job")
    async def retry_job(self, job_id: str) -> None:
        with core_errors(self, "Cannot retry this job"):
            job = await self.api.retry(job_id)
            self.queue.apply(job)
            self.notify(f"Queued again as {job['mobilesd_job_id'][-8:]}.")

    @work(group="queue-actions", exit_on_error=False, name="move-job")
    async def move_job(self, job_id: str, to: str) -> None:
        """`to`: top, bottom, up or down (the core judges it)."""
        with core_errors(self, "Cannot move this job"):
            self.queue.apply(await self.api.move(job_id, to))

    @work(group="queue-actions", exit_on_error=False, name="delete-job")
    async def delete_job(self, job_id: str) -> None:
        with core_errors(self, "Cannot delete this job"):
            await self.api.delete_job(job_id)
            self.queue.remove_job(job_id)

    def ask_clear_finished(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.clear_finished()

        self.push_screen(Confirm("Remove every finished job from the list?", "Clear"), answered)

    @work(group="queue-actions", exit_on_error=False, name="clear-finished")
    async def clear_finished(self) -> None:
        with core_errors(self, "Cannot clear finished jobs"):
            removed = await self.api.clear_finished()
            self.notify(f"Removed {removed} finished job{'s' if removed != 1 else ''}.")

    @work(group="queue-actions", exit_on_error=False, name="pause")
    async def toggle_pause(self) -> None:
        pause = not self.paused
        with core_errors(self, f"Cannot {'pause' if pause else 'resume'} dispatching"):
            state = await self.api.set_paused(pause)
            self.paused = bool(state.get("paused"))
            self.notify("Dispatching paused." if self.paused else "Dispatching resumed.")

    # -- gallery ------------------------------------------------------------------------------

    @on(ImageAction)
    def _image_action(self, message: ImageAction) -> None:
        self.image_action(message.action, message.entry)

    def image_action(self, verb: ImageVerb, entry: dict[str, Any]) -> None:
        match verb:
            case "open":
                self.open_image(entry)
            case "delete":
                self.ask_delete_image(entry)
            case "reuse":
                self.reuse(entry)
            case _:
                assert_never(verb)

    def open_image(self, entry: dict[str, Any]) -> None:
        def closed(choice: Choice | None) -> None:
            if choice is not None:
                self.image_action(choice, entry)

        self.push_screen(ImageView(entry, self.previews, self.image_widget), closed)

    def ask_delete_image(self, entry: dict[str, Any]) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.delete_image(entry)

        self.push_screen(
            Confirm(f"Delete {entry['filename']} (image, sidecar and thumbnail)?"), answered
        )

    @on(MoreImagesWanted)
    def _more_images_wanted(self, message: MoreImagesWanted) -> None:
        self.load_older_images(message.generation, message.offset, message.limit)

    @work(group="gallery", exit_on_error=False, name="older-images")
    async def load_older_images(self, generation: int, offset: int, limit: int) -> None:
        failed = partial(self.gallery.more_failed, generation)
        with core_errors(self, "Cannot load older images", then=failed):
            page = await self.api.images(limit=limit, offset=offset)
            self.gallery.extend(generation, page.images, page.total)

    @work(group="gallery", exit_on_error=False, name="delete-image")
    async def delete_image(self, entry: dict[str, Any]) -> None:
        with core_errors(self, "Cannot delete the image"):
            await self.api.delete_image(entry["filename"])
            self.gallery.discard(entry["filename"])
            self.notify(f"Deleted {entry['filename']}.")

    @work(group="gallery", exit_on_error=False, name="reuse")
    async def reuse(self, entry: dict[str, Any]) -> None:
        """Copy an image's settings into the Generator: the job's full params when it is still
        listed, else what the image itself records."""
        seed = {"seed": entry["seed"]} if entry.get("seed") is not None else {}
        job = self.queue.jobs.get(entry.get("mobilesd_job_id") or "")
        if job is not None:
            # Every field, the ones the form does not show included: the same job again.
            params = {**(job.get("generation_params") or {}), **seed}
            self.generator.load(params, target=job.get("target_server_alias"))
        else:
            self.generator.fill(
                {
                    "prompt": entry.get("prompt", ""),
                    "negative_prompt": entry.get("negative_prompt", ""),
                    **seed,
                }
            )
        self.action_show_tab("generator")
        self.notify("Settings copied into the Generator (seed included).")

    # -- servers ------------------------------------------------------------------------------

    @on(ServerAction)
    def _server_action(self, message: ServerAction) -> None:
        verb, server = message.action, message.server
        match verb:
            case "add":
                self.open_server_form(None)
            case "edit" if server is not None:
                self.open_server_form(server)
            case "remove" if server is not None:
                self.ask_remove_server(server)
            case "test" if server is not None:
                self.test_server(server["alias"])

    def open_server_form(self, server: dict[str, Any] | None) -> None:
        """Add a server (`None`) or edit one; the form saves it through the core."""
        old_alias = server["alias"] if server else None

        def saved(result: dict[str, Any] | None) -> None:
            if result:
                self.servers_pane.upsert(result, old_alias)
                self.servers = list(self.servers_pane.servers.values())
                self.generator.set_servers(sorted(self.servers_pane.servers))
                self.notify(f"Saved server {result['alias']}.")

        self.push_screen(ServerForm(self.api, server), saved)

    def ask_remove_server(self, server: dict[str, Any]) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.remove_server(server["alias"])

        self.push_screen(
            Confirm(
                f"Remove server {server['alias']}? Pending jobs aimed at it stay pending.",
                "Remove",
            ),
            answered,
        )

    @work(group="servers", exit_on_error=False, name="remove-server")
    async def remove_server(self, alias: str) -> None:
        with core_errors(self, f"Cannot remove {alias}"):
            await self.api.remove_server(alias)
            self.servers_pane.apply_status({"alias": alias, "removed": True})
            self.generator.set_servers(sorted(self.servers_pane.servers))
            self.notify(f"Removed server {alias}.")

    @work(group="servers", exit_on_error=False, name="test-server")
    async def test_server(self, alias: str) -> None:
        self.notify(f"Testing {alias}…", timeout=2)
        with core_errors(self, f"Cannot test {alias}"):
            status = await self.api.server_status(alias)
            self._tested(alias, status)

    def _tested(self, alias: str, status: dict[str, Any]) -> None:
        if status.get("online"):
            latency = status.get("latency_ms")
            latency_text = f"{latency:.0f} ms" if isinstance(latency, int | float) else "?"
            checkpoint = status.get("current_checkpoint") or "no checkpoint loaded"
            self.notify(f"{alias} answers in {latency_text}; {checkpoint}.", title="Online")
        else:
            self.notify(
                f"{alias}: {status.get('error') or 'no answer'}. Check its URL and that Forge "
                "runs with --api.",
                title="Offline",
                severity="error",
            )
        self.servers_pane.apply_status({"alias": alias, **status})

    # -- everything else ----------------------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Unexpected errors from any worker: say so (the core's refusals are toasted where
        the call is, by `core_errors`)."""
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            error = event.worker.error
            if isinstance(error, CORE_ERRORS):
                message = error_text(error)
            else:
                message = f"{type(error).__name__}: {error}"
            self.notify(message, title=f"{event.worker.name or 'task'} failed", severity="error")

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Add to queue", "Submit the Generator form", self._cmd_submit)
        yield SystemCommand(
            "Pause / resume dispatching", "Stop or restart new jobs", self._cmd_pause
        )
        yield SystemCommand("Clear finished jobs", "Remove finished jobs", self._cmd_clear)
        yield SystemCommand("Add server", "Add a Forge server", self._cmd_add_server)
        yield SystemCommand(
            "Import from Civitai",
            "Fill the Generator from a Civitai image link",
            self.action_civitai_import,
        )
        yield SystemCommand("Reload", "Load jobs, servers and gallery again", self._cmd_reload)
        for tab in TABS:
            yield SystemCommand(
                f"Go to {TAB_TITLES[tab].split(' ', 1)[1]}",
                f"Show the {tab} tab",
                partial(self.action_show_tab, tab),
            )

    def _cmd_submit(self) -> None:
        self.generator.action_submit()

    def _cmd_pause(self) -> None:
        self.toggle_pause()

    def _cmd_clear(self) -> None:
        self.ask_clear_finished()

    def _cmd_add_server(self) -> None:
        self.action_show_tab("servers")
        self.open_server_form(None)

    def _cmd_reload(self) -> None:
        self.follow()  # exclusive: the old stream stops, the new one reloads everything

    async def action_quit(self) -> None:
        self.prefs.save(self.generator.form())
        self.exit()

    async def on_unmount(self) -> None:
        # The client's sockets belong to this loop; close them before it ends.
        await self.api.aclose()


def make_app(
    api_client: CoreApi,
    *,
    clock: Callable[[], datetime] = utc_now,
    prefs_path: Path | None = None,
    initial_tab: str = "generator",
    image_widget: ImageWidget | None = None,
    follow_events: bool = True,
    age_refresh: float | None = 10.0,
    animations: bool = True,
    gallery_page: int = GALLERY_PAGE,
) -> MobileSDApp:
    """The one factory: CLI, demo, tests and benchmark build the app the same way."""
    app = MobileSDApp(
        api_client,
        clock=clock,
        prefs=Prefs(prefs_path),
        initial_tab=initial_tab,
        image_widget=image_widget,
        follow_events=follow_events,
        age_refresh=age_refresh,
        gallery_page=gallery_page,
    )
    # Set on the instance: TEXTUAL_ANIMATIONS is read once at import, too late for tests.
    if not animations:
        app.animation_level = "none"
    return app
