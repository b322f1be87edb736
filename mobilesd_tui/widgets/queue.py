"""Queue tab: every job in a keyed table, changed in place as events arrive.

Rows are keyed by `mobilesd_job_id`. A change touches only the cells that differ (inside
`batch_update`); order changes are folded into one sort per refresh; the cursor stays on the job
it was on. A reload (start, reconnect) clears and refills the table in one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal

from rich.padding import Padding
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import on
from textual._types import SegmentLines
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import var
from textual.renderables.styled import Styled
from textual.strip import Strip
from textual.widgets import DataTable, Select, Static
from textual.widgets.data_table import RowDoesNotExist, RowKey

from ..api_client import ApiError, CoreApi, Unreachable
from ..jobtext import STATUSES, KeyedText, detail_text, rank, row_cells
from ..thumbs import ImageWidget, decode

COLUMNS = (
    ("status", "Status", 11),
    ("age", "Age", 4),
    ("batch", "Batch", 5),  # jobs queued together (a sweep, a job file) share a label
    ("server", "Server", 6),
    ("progress", "Progress", 10),
    ("checkpoint", "Checkpoint", 14),
    ("prompt", "Prompt", 20),  # widened to fill the terminal (on_resize)
)
FIXED_WIDTH = sum(width for key, _, width in COLUMNS if key != "prompt")
FILTERS = ("all", *STATUSES)
PREVIEW_PIXELS = 96  # the detail pane is 7 rows: 14 half-block pixels high


# What a key in the Queue tab asks for; the app runs one method per verb.
JobVerb = Literal[
    "cancel", "edit", "cancel_batch", "retry", "up", "down", "top", "delete", "clear", "pause"
]


@dataclass
class QueueAction(Message):
    """Asks the app to run an API action on a job (the app owns the client and workers)."""

    action: JobVerb
    job_id: str | None


class JobTable(DataTable[Any]):
    """DataTable made cheap for 10,000 jobs (`./dev bench --only tui`); it draws the same.

    QueuePane gives every column a fixed width and every row one line, so measuring each new
    cell (DataTable's `_update_dimensions`) changes nothing and cost about a second per 10,000
    rows. A frame computed the table's style from all its ancestors once per line, and the
    zebra stripe's style twice per line, the same answer each time within one frame. And every
    cursor move drops DataTable's cell cache (keyed by row and a change counter), so a page
    down rendered each of its ~140 cells through Rich; most cells repeat ("○ pending", "any",
    ages), so renderings are also kept by what they show, and only the row/column meta that
    mouse clicks read is added per cell.
    """

    _frame_styles: dict[object, Style] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._by_content: LRUCache[Hashable, SegmentLines] = LRUCache(4096)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._by_content.clear()

    def _render_cell(
        self,
        row_index: int,
        column_index: int,
        base_style: Style,
        width: int,
        cursor: bool = False,
        hover: bool = False,
    ) -> SegmentLines:
        row_key = self._row_locations.get_key(row_index)
        if (
            row_index < self.fixed_rows  # the header (-1) and fixed rows
            or column_index < max(0, self.fixed_columns)  # row labels (-1), fixed columns
            or row_key is None
            or self.rows[row_key].height != 1
        ):
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        cell = self._get_row_renderables(row_index).cells[column_index]
        if not isinstance(cell, Text):
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        shown = (
            cell.plain,
            cell.style,
            tuple(cell.spans),
            cell.justify,
            cell.overflow,
            cell.no_wrap,
            cell.end,
            cell.tab_size,
        )
        styles = self._get_styles_to_render_cell(
            False,
            False,
            False,
            hover,
            cursor,
            self.show_cursor,
            self._show_hover_cursor,
            self.cursor_foreground_priority == "css",
            self.cursor_background_priority == "css",
        )
        key = (shown, width, base_style, styles, self._pseudo_class_state, self.cell_padding)
        lines = self._by_content.get(key)
        if lines is None:
            component_style, post_style = styles
            options = self.app.console_options.update_dimensions(width, 1).update(no_wrap=True)
            lines = self.app.console.render_lines(
                Styled(
                    Padding(cell, (0, self.cell_padding)),
                    pre_style=base_style + component_style,
                    post_style=post_style,
                ),
                options,
            )
            self._by_content[key] = lines
        # DataTable puts this meta in the style it renders with; adding it last gives the
        # same styles (it carries no colour or attribute), so the rest can be shared.
        meta = Style.from_meta({"row": row_index, "column": column_index})
        return [
            [
                Segment(text, None if control else (style + meta if style else meta), control)
                for text, style, control in line
            ]
            for line in lines
        ]

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        rows = self.rows
        fixed = not any(column.auto_width for column in self.columns.values()) and not any(
            row.label is not None or row.auto_height
            for row in (rows.get(key) for key in new_rows)
            if row is not None
        )
        if not fixed:
            super()._update_dimensions(new_rows)
            return
        width = sum(column.get_render_width(self) for column in self.columns.values())
        header_height = self.header_height if self.show_header else 0
        self.virtual_size = Size(
            width + self._row_label_column_width, self._total_row_height + header_height
        )

    def render_lines(self, crop: Region) -> list[Strip]:
        self._frame_styles = {}
        try:
            return super().render_lines(crop)
        finally:
            self._frame_styles = None

    @property
    def rich_style(self) -> Style:
        cache = self._frame_styles
        if cache is None:
            return super().rich_style
        style = cache.get(None)
        if style is None:
            style = cache[None] = super().rich_style
        return style

    def _get_row_style(self, row_index: int, base_style: Style) -> Style:
        cache = self._frame_styles
        if cache is None or row_index < self.fixed_rows:
            return super()._get_row_style(row_index, base_style)
        key = (row_index % 2 if self.zebra_stripes else 2, base_style)
        style = cache.get(key)
        if style is None:
            style = cache[key] = super()._get_row_style(row_index, base_style)
        return style


class QueuePane(Vertical):
    DEFAULT_CSS = """
    QueuePane #job-detail.with-preview { layout: horizontal; }
    QueuePane #job-detail.with-preview #job-detail-text { width: 1fr; }
    QueuePane #job-preview { width: 16; height: 6; margin-right: 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "job('cancel')", "Cancel", id="queue.cancel"),
        Binding("e", "job('edit')", "Edit", id="queue.edit"),
        Binding("C", "job('cancel_batch')", "Cancel batch", show=False, id="queue.cancel_batch"),
        Binding("r", "job('retry')", "Retry", id="queue.retry"),
        Binding("u", "job('up')", "Up", id="queue.up"),
        Binding("d", "job('down')", "Down", id="queue.down"),
        Binding("t", "job('top')", "Top", id="queue.top"),
        Binding("x,delete", "job('delete')", "Del", id="queue.delete"),
        Binding("X", "job('clear')", "Clear", id="queue.clear"),
        Binding("p", "job('pause')", "Pause", id="queue.pause"),
        Binding("f", "cycle_filter", "Filter", id="queue.filter"),
    ]

    # The status shown ("all" or one status): the table is rebuilt when it changes.
    filter: var[str] = var("all", init=False)
    # Dispatching paused (set by the app, which owns the state): the summary line says so.
    paused: var[bool] = var(False, init=False)
    # Jobs per status, as the summary line counts them (the app's top bar follows it).
    counts: var[dict[str, int] | None] = var(None, init=False)

    def __init__(
        self,
        clock: Callable[[], datetime],
        *,
        previews: CoreApi | None = None,
        image_widget: ImageWidget | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.previews = previews
        self.image_widget = image_widget
        # The live preview of the selected running job: the job it shows and its ETag, so a
        # progress event whose preview is unchanged costs a 304 and no decode.
        self._preview_for: str | None = None
        self._preview_etag: str | None = None
        self._preview_wanted: str | None = None
        self._preview_busy = False
        self.jobs: dict[str, dict[str, Any]] = {}
        self._rank: dict[str, tuple[Any, ...]] = {}
        self._shown: dict[str, tuple[Any, ...]] = {}  # job id -> cells on screen
        self._sort_pending = False
        self._prompt_width = COLUMNS[-1][2]

    def compose(self) -> ComposeResult:
        with Horizontal(id="queue-top"):
            yield Select(
                [(f"Show: {name}", name) for name in FILTERS],
                value="all",
                allow_blank=False,
                compact=True,
                id="queue-filter",
            )
            yield Static("", id="queue-summary")
        table = JobTable(id="jobs", cursor_type="row", zebra_stripes=True)
        table.cell_padding = 1
        yield table
        with VerticalScroll(id="job-detail"):
            yield Static("No job selected.", id="job-detail-text")

    def on_mount(self) -> None:
        self._add_columns()

    def _add_columns(self) -> None:
        table = self.query_one(JobTable)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=self._prompt_width if key == "prompt" else width)

    # -- data ---------------------------------------------------------------------------------

    @property
    def table(self) -> JobTable:
        return self.query_one(JobTable)

    def selected_id(self) -> str | None:
        table = self.table
        if table.row_count == 0:
            return None
        try:
            key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        except Exception:  # cursor outside the table while it is rebuilt
            return None
        return key.value

    def shows(self, job: dict[str, Any]) -> bool:
        return self.filter == "all" or job["status"] == self.filter

    def load(self, jobs: list[dict[str, Any]]) -> None:
        """Replace everything (start, reconnect, `reset`): one clear and one add_rows."""
        selected = self.selected_id()
        self.jobs = {job["mobilesd_job_id"]: job for job in jobs}
        self._rebuild(selected)

    def _rebuild(self, selected: str | None) -> None:
        table = self.table
        now = self.clock()
        shown = sorted((j for j in self.jobs.values() if self.shows(j)), key=rank)
        self._rank = {j["mobilesd_job_id"]: rank(j) for j in self.jobs.values()}
        self._shown = {}
        rows = []
        keys = []
        for job in shown:
            cells = row_cells(job, now, self._prompt_width)
            self._shown[job["mobilesd_job_id"]] = cells
            rows.append(cells)
            keys.append(job["mobilesd_job_id"])
        with self.app.batch_update():
            table.clear()
            for key, cells in zip(keys, rows, strict=True):
                table.add_row(*cells, key=key)
        self._restore_cursor(selected)
        self._update_summary()
        self.show_detail()

    def apply(self, job: dict[str, Any]) -> None:
        """One job changed: update its cells, add or drop its row, re-sort if it moved."""
        job_id = job["mobilesd_job_id"]
        self.jobs[job_id] = job
        new_rank = rank(job)
        moved = self._rank.get(job_id) != new_rank
        self._rank[job_id] = new_rank
        table = self.table
        if self.shows(job):
            cells = row_cells(job, self.clock(), self._prompt_width)
            old = self._shown.get(job_id)
            if old is None:
                table.add_row(*cells, key=job_id)
                moved = True
            else:
                for (column, _, _), before, after in zip(COLUMNS, old, cells, strict=True):
                    if before != after or (
                        isinstance(before, KeyedText) and before.style != after.style
                    ):
                        table.update_cell(job_id, column, after)
            self._shown[job_id] = cells
            if moved:
                self._schedule_sort()
        elif job_id in self._shown:
            self._remove_row(job_id)
        if job_id == self.selected_id():
            self.show_detail()
        self._update_summary()

    def remove_job(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self._rank.pop(job_id, None)
        if job_id in self._shown:
            self._remove_row(job_id)
        self._update_summary()

    def _remove_row(self, job_id: str) -> None:
        self._shown.pop(job_id, None)
        with contextlib.suppress(RowDoesNotExist):
            self.table.remove_row(job_id)
        self.show_detail()

    def _schedule_sort(self) -> None:
        # Many jobs move at once (a reorder, a burst of submits): sort once, after them all.
        if not self._sort_pending:
            self._sort_pending = True
            self.call_after_refresh(self._sort)

    def _sort(self) -> None:
        self._sort_pending = False
        selected = self.selected_id()
        ranks = self._rank
        self.table.sort("status", key=lambda cell: ranks.get(cell.job_id, (9,)))
        self._restore_cursor(selected)

    def _restore_cursor(self, job_id: str | None) -> None:
        if job_id is None or job_id not in self._shown:
            return
        table = self.table
        try:
            index = table.get_row_index(job_id)
        except RowDoesNotExist:
            return
        if table.cursor_row != index:
            table.move_cursor(row=index, animate=False)

    def select(self, job_id: str) -> None:
        """Put the cursor on a job (after a submit, or when the user asks)."""
        if job_id in self._shown:
            self.call_after_refresh(self._restore_cursor, job_id)

    def refresh_ages(self) -> None:
        """Ages move on: rewrite only the age cells whose text changed."""
        now = self.clock()
        selected = self.selected_id()
        with self.app.batch_update():
            for job_id, cells in self._shown.items():
                fresh = row_cells(self.jobs[job_id], now, self._prompt_width)
                if fresh[1] != cells[1]:
                    self.table.update_cell(job_id, "age", fresh[1])
                    self._shown[job_id] = fresh
                    if job_id == selected:
                        self.show_detail()  # its "… ago" line says the same as the column

    def watch_paused(self) -> None:
        self._update_summary()

    def _update_summary(self) -> None:
        counts = {status: 0 for status in STATUSES}
        for job in self.jobs.values():
            counts[job["status"]] = counts.get(job["status"], 0) + 1
        parts = [
            f"{counts['processing']} running",
            f"{counts['pending']} pending",
            f"{counts['completed']} done",
        ]
        if counts["failed"]:
            parts.append(f"[red]{counts['failed']} failed[/]")
        if self.paused:
            parts.append("[bold yellow]PAUSED[/]")
        self.query_one("#queue-summary", Static).update(" · ".join(parts))
        self.counts = counts

    # -- detail -------------------------------------------------------------------------------

    def show_detail(self) -> None:
        job_id = self.selected_id()
        widget = self.query_one("#job-detail-text", Static)
        job = self.jobs.get(job_id) if job_id else None
        if job is None:
            widget.update("No job selected." if not self._shown else "")
            self._drop_preview()
            return
        widget.update(detail_text(job, self.clock()))
        progress = job.get("progress") or {}
        if job["status"] == "processing" and progress.get("preview"):
            self._want_preview(job["mobilesd_job_id"])
        else:
            self._drop_preview()

    # -- live preview ---------------------------------------------------------------------------

    def _want_preview(self, job_id: str) -> None:
        if self.previews is None or self.image_widget is None:
            return
        if self._preview_for not in (None, job_id):
            self._drop_preview()
        self._preview_wanted = job_id
        if not self._preview_busy:  # one request at a time; the newest wish is served next
            self._preview_busy = True
            self.run_worker(self._fetch_previews(), group="preview")

    async def _fetch_previews(self) -> None:
        assert self.previews is not None and self.image_widget is not None
        try:
            while (job_id := self._preview_wanted) is not None:
                self._preview_wanted = None
                etag = self._preview_etag if self._preview_for == job_id else None
                try:
                    got = await self.previews.job_preview(job_id, etag)
                    if got is None:
                        continue  # unchanged: nothing downloaded, nothing to draw
                    data, etag = got
                    image = await asyncio.to_thread(decode, data, PREVIEW_PIXELS)
                except (ApiError, Unreachable, OSError, ValueError):
                    continue  # none (yet), or the core is away: the next event asks again
                shown = self.jobs.get(job_id) or {}
                if job_id != self.selected_id() or shown.get("status") != "processing":
                    continue  # another job is selected now, or this one ended meanwhile
                self._preview_for, self._preview_etag = job_id, etag
                detail = self.query_one("#job-detail", VerticalScroll)
                for old in detail.query("#job-preview"):
                    await old.remove()
                await detail.mount(self.image_widget(image, id="job-preview"), before=0)
                detail.add_class("with-preview")
        finally:
            self._preview_busy = False

    def _drop_preview(self) -> None:
        if self._preview_for is None:
            return
        self._preview_for = self._preview_etag = None
        detail = self.query_one("#job-detail", VerticalScroll)
        detail.remove_class("with-preview")
        detail.query("#job-preview").remove()

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()

    # -- layout -------------------------------------------------------------------------------

    def on_resize(self) -> None:
        if not self.size.width:
            return  # a hidden tab
        # Padding: one cell each side of every column, plus the scrollbar.
        width = max(12, self.size.width - FIXED_WIDTH - 2 * len(COLUMNS) - 1)
        if width != self._prompt_width:
            self._prompt_width = width
            selected = self.selected_id()
            self.table.clear(columns=True)
            self._add_columns()
            self._rebuild(selected)

    # -- actions ------------------------------------------------------------------------------

    def action_job(self, action: JobVerb) -> None:
        self.post_message(QueueAction(action, self.selected_id()))

    def action_cycle_filter(self) -> None:
        self.filter = FILTERS[(FILTERS.index(self.filter) + 1) % len(FILTERS)]

    def watch_filter(self, value: str) -> None:
        select = self.query_one("#queue-filter", Select)
        if select.value != value:
            with select.prevent(Select.Changed):
                select.value = value
        self._rebuild(self.selected_id())

    @on(Select.Changed, "#queue-filter")
    def _filter_changed(self, event: Select.Changed) -> None:
        self.filter = str(event.value)
