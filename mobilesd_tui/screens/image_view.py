"""A large preview of one gallery image, with what made it."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..thumbs import PREVIEW_PIXELS, ImageLoader, ImageWidget


def entry_text(entry: dict[str, Any]) -> Text:
    text = Text()
    text.append(f"{entry['filename']}\n", style="bold")
    text.append(f"{entry.get('width')}×{entry.get('height')}  {entry.get('created', '')}\n\n")
    text.append("prompt: ", style="bold")
    text.append(f"{entry.get('prompt', '')}\n")
    if entry.get("negative_prompt"):
        text.append("negative: ", style="bold")
        text.append(f"{entry['negative_prompt']}\n")
    text.append("seed: ", style="bold")
    text.append(f"{entry.get('seed')}\n")
    text.append("model: ", style="bold")
    text.append(f"{entry.get('checkpoint') or '-'}\n")
    if entry.get("mobilesd_job_id"):
        text.append("job: ", style="bold")
        text.append(f"{entry['mobilesd_job_id']}\n")
    return text


# What the person chose to do with the image; the app carries it out.
Choice = Literal["reuse", "delete"]


class ImageView(ModalScreen[Choice | None]):
    """Result: None (closed), "reuse" or "delete" for the app to carry out."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Close", id="image.close"),
        Binding("g", "choose('reuse')", "Use settings", id="image.reuse"),
        Binding("x,delete", "choose('delete')", "Delete", id="image.delete"),
    ]

    def __init__(
        self, entry: dict[str, Any], loader: ImageLoader, image_widget: ImageWidget
    ) -> None:
        super().__init__(classes="dialog-screen")
        self.entry = entry
        self.loader = loader
        self.image_widget = image_widget

    def compose(self) -> ComposeResult:
        with Horizontal(id="image-dialog"):
            with Vertical(id="image-box"):
                yield Static("loading…", id="image-placeholder")
            with VerticalScroll(id="image-info"):
                yield Static(entry_text(self.entry))
                yield Static(
                    "\n[b]g[/] use these settings  [b]x[/] delete  [b]esc[/] close",
                    classes="hint",
                )

    def on_mount(self) -> None:
        self._load()

    @work(exclusive=True, group="preview", exit_on_error=False)
    async def _load(self) -> None:
        placeholder = self.query_one("#image-placeholder", Static)
        try:
            image = await self.loader.get(self.entry["url"], PREVIEW_PIXELS)
        except Exception as exc:  # shown in place of the picture, the info stays useful
            placeholder.update(f"[red]cannot load the image[/]: {exc}")
            return
        await placeholder.remove()
        await self.query_one("#image-box").mount(self.image_widget(image, id="image-large"))

    def action_close(self) -> None:
        self.dismiss(None)

    def action_choose(self, what: Choice) -> None:
        self.dismiss(what)
