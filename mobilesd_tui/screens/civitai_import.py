"""Paste a Civitai image link; the core reads its generation data and the form is filled.

The screen's result is the core's answer (`generation_params`, `resources`, `missing`), or None
when the user backs out. Errors (no such image, no generation data, a bad link) stay on the
screen next to the field, so the link can be fixed and tried again.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from ..api_client import ApiError, CoreApi, Unreachable
from ..errors import error_text


class CivitaiImport(ModalScreen[dict[str, Any] | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Back", id="civitai.cancel"),
    ]

    def __init__(self, api: CoreApi) -> None:
        super().__init__(classes="dialog-screen")
        self.api = api

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Import from Civitai", classes="dialog-title")
            yield Static(
                "Paste an image link (https://civitai.com/images/123) or its number.",
                classes="dialog-text",
            )
            yield Input(placeholder="https://civitai.com/images/…", id="civitai-link")
            yield Static("", id="civitai-error", classes="field-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Import (enter)", variant="primary", id="import", compact=True)
                yield Button("Back (esc)", id="back", compact=True)

    @on(Input.Submitted, "#civitai-link")
    @on(Button.Pressed, "#import")
    def _import(self) -> None:
        link = self.query_one("#civitai-link", Input).value.strip()
        if not link:
            self._error("Paste a link or an image number first.")
            return
        self._error("Reading the image's generation data …")
        self._fetch(link)

    @on(Button.Pressed, "#back")
    def action_cancel(self) -> None:
        self.dismiss(None)

    def _error(self, text: str) -> None:
        # Text, not markup: messages quote what the user pasted.
        self.query_one("#civitai-error", Static).update(Text(text))

    @work(exclusive=True, group="civitai-import", exit_on_error=False)
    async def _fetch(self, link: str) -> None:
        body: dict[str, Any] = {"image_id": int(link)} if link.isdigit() else {"url": link}
        try:
            answer = await self.api.civitai_image_info(body)
        except ApiError as exc:
            problems = exc.field_problems()
            self._error(problems[0][1] if problems else error_text(exc))
            return
        except Unreachable as exc:
            self._error(error_text(exc))
            return
        self.dismiss(answer)


class MissingModels(ModalScreen[list[dict[str, Any]]]):
    """What the imported image used that the libraries lack; the result is what to download."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "skip", "Skip", id="missing.skip"),
    ]

    def __init__(self, missing: list[dict[str, Any]]) -> None:
        super().__init__(classes="dialog-screen")
        self.missing = missing

    def compose(self) -> ComposeResult:
        downloadable = [m for m in self.missing if m.get("downloadable")]
        with Vertical(classes="dialog"):
            yield Static("Not in your libraries", classes="dialog-title")
            for item in self.missing:
                yield Static(Text(describe(item)), classes="dialog-text")
            with Horizontal(classes="dialog-buttons"):
                if downloadable:
                    yield Button(
                        f"Download {len(downloadable)} (d)",
                        variant="primary",
                        id="get",
                        compact=True,
                    )
                yield Button("Skip (esc)", id="skip", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "get":
            self.dismiss([m for m in self.missing if m.get("downloadable")])
        else:
            self.dismiss([])

    def key_d(self) -> None:
        self.dismiss([m for m in self.missing if m.get("downloadable")])

    def action_skip(self) -> None:
        self.dismiss([])


def describe(item: dict[str, Any]) -> str:
    name = item.get("model_name") or item.get("name") or "?"
    version = f" ({item['version_name']})" if item.get("version_name") else ""
    kind = item.get("model_type") or item.get("type") or "model"
    how = "can be downloaded" if item.get("downloadable") else "not downloadable from Civitai"
    return f"• {kind}: {name}{version}: {how}"
