"""Gallery tab: a grid of previews, newest first; thumbnails load when their tile is in view.

The newest page comes with the app's snapshot; older pages load when the grid's end comes into
view (scrolling, or moving the focus there). New images arrive by events at the top. Entries are
keyed by file name, so an image listed twice (the offsets drift while images come and go) is
shown once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical, VerticalScroll
from textual.events import Click
from textual.message import Message
from textual.widget import AwaitMount, Widget
from textual.widgets import Static

from ..events import GALLERY_PAGE
from ..jobtext import one_line, short_model
from ..thumbs import ImageLoader, ImageWidget

# The API's largest page.
MAX_LIMIT = 1000


ImageVerb = Literal["open", "delete", "reuse"]


@dataclass
class ImageAction(Message):
    """open / delete / reuse one gallery entry (the app does the I/O and the dialogs)."""

    action: ImageVerb
    entry: dict[str, Any]


@dataclass
class MoreImagesWanted(Message):
    """Older gallery entries, please: `limit` from `offset`; answer with `GalleryPane.extend`."""

    generation: int
    offset: int
    limit: int


class Tile(Vertical, can_focus=True):
    def __init__(self, entry: dict[str, Any]) -> None:
        super().__init__(classes="tile")
        self.entry = entry
        self.fetching = False  # not `loading`: that reactive shows Textual's spinner
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield Static("·", classes="tile-image")
        seed = self.entry.get("seed")
        caption = f"{seed} " if seed is not None else ""
        caption += short_model(self.entry.get("checkpoint"))
        yield Static(Text(one_line(caption, 17)), classes="tile-caption")

    def show_image(self, widget: Widget) -> None:
        self.loaded = True
        placeholder = self.query_one(".tile-image")
        widget.add_class("tile-image")
        placeholder.remove()
        self.mount(widget, before=0)

    def on_click(self, event: Click) -> None:
        self.focus()
        if event.chain >= 2:
            self.post_message(ImageAction("open", self.entry))


class GalleryGrid(VerticalScroll, inherit_bindings=False):
    # No scrolling keys: they would scroll past the focused tile instead of moving it (the
    # pane's keys move the focus, and the grid follows it). The mouse wheel still scrolls.

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        pane = self.parent
        if isinstance(pane, GalleryPane):
            pane.load_visible()


class GalleryPane(Vertical):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter,o", "entry('open')", "Open", id="gallery.open"),
        Binding("g", "entry('reuse')", "Use settings", id="gallery.reuse"),
        Binding("x,delete", "entry('delete')", "Delete", id="gallery.delete"),
        Binding("left", "step(-1)", "", show=False, id="gallery.left"),
        Binding("right", "step(1)", "", show=False, id="gallery.right"),
        Binding("up", "step_row(-1)", "", show=False, id="gallery.up"),
        Binding("down", "step_row(1)", "", show=False, id="gallery.down"),
        Binding("pageup", "step_page(-1)", "", show=False, id="gallery.pageup"),
        Binding("pagedown", "step_page(1)", "", show=False, id="gallery.pagedown"),
        Binding("home", "edge(-1)", "", show=False, id="gallery.home"),
        Binding("end", "edge(1)", "", show=False, id="gallery.end"),
    ]
    TILE_WIDTH = 19
    TILE_HEIGHT = 11
    # An older page starts this many entries early: an image deleted before its event reached
    # us shifts the core's list by one, and the image after it would fall between two pages.
    OVERLAP = 8

    def __init__(
        self,
        loader: ImageLoader,
        image_widget: ImageWidget,
        *,
        page_size: int = GALLERY_PAGE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.loader = loader
        self.image_widget = image_widget
        self.page_size = page_size
        self.entries: list[dict[str, Any]] = []
        self.total = 0  # how many the core has, as of the last page and the events since
        # A reload starts a new generation: a page asked for before it is dropped on arrival.
        self._generation = 0
        self._more_pending = False
        self._more_failed = False  # not asked again by itself; a key at the end asks again
        self._focus_after: int | None = None  # moved past the end: the tile to focus once loaded

    @property
    def has_more(self) -> bool:
        return len(self.entries) < self.total

    def compose(self) -> ComposeResult:
        yield Static("", id="gallery-summary")
        with GalleryGrid(id="gallery-scroll"):
            yield Grid(id="gallery-grid")

    def load(self, entries: list[dict[str, Any]], total: int | None = None) -> None:
        """The newest page (start, reset): replaces what is shown, older pages included."""
        self._generation += 1
        self._more_pending = self._more_failed = False
        self._focus_after = None
        self.total = max(len(entries), total if total is not None else 0)
        known = [e["filename"] for e in self.entries]
        if known == [e["filename"] for e in entries]:
            self._summary()
            self.call_after_refresh(self.load_visible)
            return  # a reconnect with nothing new: keep the tiles and their pictures
        self.entries = list(entries)
        grid = self.query_one("#gallery-grid", Grid)
        grid.remove_children()
        self._after_mount(grid.mount_all([Tile(e) for e in self.entries]), claim_focus=True)
        self._summary()

    def add(self, entry: dict[str, Any]) -> None:
        if any(e["filename"] == entry["filename"] for e in self.entries):
            return
        self.entries.insert(0, entry)
        self.total += 1
        grid = self.query_one("#gallery-grid", Grid)
        tile = Tile(entry)
        first = not grid.children
        self._after_mount(
            grid.mount(tile) if first else grid.mount(tile, before=0), claim_focus=first
        )
        self._summary()

    def extend(self, generation: int, entries: list[dict[str, Any]], total: int) -> None:
        """An older page arrived: its entries not shown yet go at the end."""
        if generation != self._generation:
            return  # asked before a reload: its offsets mean nothing now
        self._more_pending = False
        known = {e["filename"] for e in self.entries}
        fresh = [e for e in entries if e["filename"] not in known]
        # Nothing new although the core counts more: the count is ahead of events still on
        # their way. Stop asking; those events add their images at the top.
        self.total = max(total, len(self.entries) + len(fresh)) if fresh else len(self.entries)
        self.entries.extend(fresh)
        grid = self.query_one("#gallery-grid", Grid)
        focus, self._focus_after = self._focus_after, None
        self._after_mount(grid.mount_all([Tile(e) for e in fresh]), focus=focus)
        self._summary()

    def _after_mount(
        self, mounted: AwaitMount, claim_focus: bool = False, focus: int | None = None
    ) -> None:
        """Once new tiles are in and laid out: focus one (if asked), fetch the pictures in view
        and maybe the next page. Sooner, the tiles have no place yet and none looks in view.

        `claim_focus`: the first tiles of a shown gallery take the focus the app could not give
        them when the tab opened before they came (else the keys go to the tab bar)."""

        async def settled() -> None:
            await mounted
            index = focus
            if index is None and claim_focus and self.region.area:
                index = None if isinstance(self.screen.focused, Tile) else 0
            if index is not None:
                self._focus_index(index)
            self.call_after_refresh(self.load_visible)

        self.call_later(settled)

    def more_failed(self, generation: int) -> None:
        if generation == self._generation:
            self._more_pending = False
            self._more_failed = True
            self._focus_after = None
            self._summary()

    def _want_more(self, *, asked: bool = False) -> None:
        """Ask the app for the next older page (`asked`: by a key, so after a failure too)."""
        if self._more_pending or not self.has_more or (self._more_failed and not asked):
            return
        self._more_pending = True
        self._more_failed = False
        offset = max(0, len(self.entries) - self.OVERLAP)
        limit = min(MAX_LIMIT, self.page_size + len(self.entries) - offset)
        self.post_message(MoreImagesWanted(self._generation, offset, limit))
        self._summary()

    def discard(self, filename: str) -> None:
        before = len(self.entries)
        self.entries = [e for e in self.entries if e["filename"] != filename]
        # The app discards after its own delete and again for the event: count the image once.
        self.total = max(len(self.entries), self.total - (before - len(self.entries)))
        for tile in self.query(Tile):
            if tile.entry["filename"] == filename:
                focused = tile.has_focus
                index = list(self.query(Tile)).index(tile)
                tile.remove()
                self.loader.forget(tile.entry["thumb_url"])
                if focused:
                    self.call_after_refresh(self._focus_index, index)
        self._summary()

    def _summary(self) -> None:
        count = len(self.entries)
        text = f"{count} image{'s' if count != 1 else ''}, newest first"
        if self.has_more:
            text = f"{count} of {self.total} images, newest first"
            if self._more_pending:
                text += "; loading older ones…"
            elif self._more_failed:
                text += "; older ones did not load (end tries again)"
            else:
                text += "; older ones load at the end"
        elif not count:
            text = "No images yet: finished jobs land here."
        self.query_one("#gallery-summary", Static).update(text)

    # -- lazy thumbnails ----------------------------------------------------------------------

    def on_resize(self) -> None:
        if self.size.width:
            # As many tiles across as fit (the scrollbar takes one cell).
            columns = max(1, (self.size.width - 1) // self.TILE_WIDTH)
            self.query_one("#gallery-grid", Grid).styles.grid_size_columns = columns
        self.call_after_refresh(self.load_visible)

    def on_show(self) -> None:
        self.call_after_refresh(self.load_visible)

    def load_visible(self) -> None:
        scroll = self.query_one("#gallery-scroll", GalleryGrid)
        view = scroll.region
        if not view.area:
            return
        tiles = list(self.query(Tile))
        for tile in tiles:
            if tile.loaded or tile.fetching:
                continue
            region = tile.region
            if region.area and region.overlaps(view):
                tile.fetching = True
                self._fetch(tile)
        last = tiles[-1].region if tiles else None
        if last is None or (last.area and last.overlaps(view)):
            self._want_more()

    @work(group="thumbs", exit_on_error=False)
    async def _fetch(self, tile: Tile) -> None:
        url = tile.entry["thumb_url"]
        try:
            image = await self.loader.get(url)
        except Exception as exc:  # a missing thumbnail is shown as such, not a crash
            tile.fetching = False
            tile.query_one(".tile-image", Static).update(
                f"[red]no preview[/]\n{type(exc).__name__}"
            )
            return
        if tile.is_attached:
            tile.show_image(self.image_widget(image))

    # -- keys ---------------------------------------------------------------------------------

    def focused_tile(self) -> Tile | None:
        focused = self.screen.focused
        return focused if isinstance(focused, Tile) else None

    def action_entry(self, action: ImageVerb) -> None:
        tile = self.focused_tile()
        if tile is None:
            tiles = list(self.query(Tile))
            if not tiles:
                return
            tile = tiles[0]
        self.post_message(ImageAction(action, tile.entry))

    def _columns(self) -> int:
        return max(1, (self.size.width - 1) // self.TILE_WIDTH)

    def _focus_index(self, index: int) -> None:
        tiles = list(self.query(Tile))
        if tiles:
            tile = tiles[max(0, min(index, len(tiles) - 1))]
            tile.focus()
            tile.scroll_visible(animate=False)

    def _step_by(self, delta: int) -> None:
        tiles = list(self.query(Tile))
        tile = self.focused_tile()
        index = tiles.index(tile) + delta if tile in tiles else 0
        if index >= len(tiles) and self.has_more:
            # Past the end: go there once the older page is in.
            self._focus_after = index
            self._want_more(asked=True)
        self._focus_index(index)

    def action_step(self, delta: int) -> None:
        self._step_by(delta)

    def action_step_row(self, delta: int) -> None:
        self._step_by(delta * self._columns())

    def action_step_page(self, delta: int) -> None:
        height = self.query_one("#gallery-scroll", GalleryGrid).size.height
        rows = max(1, height // self.TILE_HEIGHT)
        self._step_by(delta * rows * self._columns())

    def action_edge(self, direction: int) -> None:
        """home: the newest image; end: the oldest loaded, and the next older page."""
        if direction < 0:
            self._focus_index(0)
            return
        self._focus_index(len(self.entries) - 1)
        self._want_more(asked=True)
