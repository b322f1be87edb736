"""Pick a LoRA from the chosen server's list; typing filters it."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option


class LoraPicker(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_none", "Cancel", id="lora_picker.cancel"),
        Binding("down", "focus_list", "", show=False, id="lora_picker.down"),
    ]

    def __init__(self, loras: list[str], source: str) -> None:
        super().__init__(classes="dialog-screen")
        self.loras = loras
        self.source = source

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="lora-dialog"):
            yield Static(f"[b]Add a LoRA[/] (from {self.source})", classes="dialog-title")
            yield Input(placeholder="type to filter", compact=True, id="lora-filter")
            yield OptionList(*[Option(name, id=name) for name in self.loras], id="lora-list")
            if not self.loras:
                yield Static("This server reports no LoRAs.", classes="field-error shown")

    def on_mount(self) -> None:
        self.query_one("#lora-filter", Input).focus()

    @on(Input.Changed, "#lora-filter")
    def _filter(self, event: Input.Changed) -> None:
        needle = event.value.casefold()
        options = self.query_one("#lora-list", OptionList)
        options.clear_options()
        options.add_options(
            [Option(name, id=name) for name in self.loras if needle in name.casefold()]
        )
        if options.option_count:
            options.highlighted = 0

    @on(Input.Submitted, "#lora-filter")
    def _take_first(self) -> None:
        options = self.query_one("#lora-list", OptionList)
        if options.option_count:
            index = options.highlighted or 0
            self.dismiss(options.get_option_at_index(index).id)

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_focus_list(self) -> None:
        self.query_one("#lora-list", OptionList).focus()

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
