"""Gallery tab: a grid of previews, newest first; thumbnails load when their tile is in view."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical, VerticalScroll
from textual.events import Click
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from ..jobtext import one_line, short_model
from ..thumbs import ImageLoader


class ImageAction(Message):
    """open / delete / reuse one gallery entry (the app does the I/O and the dialogs)."""

    def __init__(self, action: str, entry: dict[str, Any]) -> None:
        super().__init__()
        self.action = action
        self.entry = entry


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


class GalleryGrid(VerticalScroll):
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
    ]
    TILE_WIDTH = 19

    def __init__(self, loader: ImageLoader, image_widget: type[Widget], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loader = loader
        self.image_widget = image_widget
        self.entries: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="gallery-summary")
        with GalleryGrid(id="gallery-scroll"):
            yield Grid(id="gallery-grid")

    def load(self, entries: list[dict[str, Any]]) -> None:
        known = [e["filename"] for e in self.entries]
        if known == [e["filename"] for e in entries]:
            return  # a reconnect with nothing new: keep the tiles and their pictures
        self.entries = list(entries)
        grid = self.query_one("#gallery-grid", Grid)
        grid.remove_children()
        grid.mount_all([Tile(entry) for entry in self.entries])
        self._summary()
        self.call_after_refresh(self.load_visible)

    def add(self, entry: dict[str, Any]) -> None:
        if any(e["filename"] == entry["filename"] for e in self.entries):
            return
        self.entries.insert(0, entry)
        grid = self.query_one("#gallery-grid", Grid)
        tile = Tile(entry)
        if grid.children:
            grid.mount(tile, before=0)
        else:
            grid.mount(tile)
        self._summary()
        self.call_after_refresh(self.load_visible)

    def discard(self, filename: str) -> None:
        self.entries = [e for e in self.entries if e["filename"] != filename]
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
        if not count:
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
        for tile in self.query(Tile):
            if tile.loaded or tile.fetching:
                continue
            region = tile.region
            if region.area and region.overlaps(view):
                tile.fetching = True
                self._fetch(tile)

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

    def action_entry(self, action: str) -> None:
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
        self._focus_index(index)

    def action_step(self, delta: int) -> None:
        self._step_by(delta)

    def action_step_row(self, delta: int) -> None:
        self._step_by(delta * self._columns())
