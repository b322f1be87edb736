"""Add or edit a server. The core validates; its 422 details appear next to each field."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, Switch

from ..api_client import ApiError, CoreApi, Unreachable
from ..errors import error_text

FIELDS = (
    ("alias", "Alias", "gpu1"),
    ("api_url", "API URL", "http://192.168.1.20:7860"),
    ("username", "User (Basic auth)", "optional"),
    ("password", "Password", "optional"),
    ("max_concurrent", "Concurrent jobs", "1"),
    # Model sync: folders on the core's machine that this Forge reads its models from.
    ("checkpoint_dir", "Sync: checkpoints", "optional: /mnt/forge/models/Stable-diffusion"),
    ("lora_dir", "Sync: LoRAs", "optional: /mnt/forge/models/Lora"),
    ("sync_cap_gb", "Sync: space, GB", "optional (default MODEL_SYNC_CAP_GB)"),
)


class ServerForm(ModalScreen[dict[str, Any] | None]):
    """Result: the saved server as the core returned it, or None when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Save", id="server_form.save"),
        Binding("escape", "cancel", "Cancel", id="server_form.cancel"),
    ]

    def __init__(self, api: CoreApi, server: dict[str, Any] | None = None) -> None:
        super().__init__(classes="dialog-screen")
        self.api = api
        self.server = server

    def compose(self) -> ComposeResult:
        server = self.server or {"max_concurrent": 1, "enabled": True}
        title = f"Edit server {server['alias']}" if self.server else "Add a Forge server"
        with Vertical(classes="dialog", id="server-dialog"):
            yield Static(f"[b]{title}[/]", classes="dialog-title")
            with VerticalScroll(classes="dialog-body"):
                for key, label, placeholder in FIELDS:
                    value = server.get(key)
                    if key == "password":
                        value = None
                        if server.get("has_password"):
                            placeholder = "unchanged (type to replace)"
                    with Horizontal(classes="form-row"):
                        yield Label(label, classes="form-label")
                        yield Input(
                            "" if value is None else str(value),
                            placeholder=placeholder,
                            password=key == "password",
                            compact=True,
                            id=f"server-{key}",
                        )
                    yield Static("", classes="field-error", id=f"err-server-{key}")
                with Horizontal(classes="form-row"):
                    yield Label("Enabled", classes="form-label")
                    yield Switch(value=bool(server.get("enabled", True)), id="server-enabled")
                yield Static("", classes="field-error", id="err-server-enabled")
            yield Static("", classes="field-error", id="err-server-general")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save", compact=True)
                yield Button("Cancel (esc)", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#server-alias", Input).focus()

    def body(self) -> dict[str, Any]:
        """What to send: everything on add; on edit only what changed (password if typed)."""
        values: dict[str, Any] = {}
        for key, _, _ in FIELDS:
            text = self.query_one(f"#server-{key}", Input).value.strip()
            if key == "max_concurrent":
                values[key] = int(text) if text.isdigit() else text
            elif key == "sync_cap_gb":
                values[key] = _number_or_text(text) if text else None
            elif key in ("username", "password", "checkpoint_dir", "lora_dir"):
                values[key] = text or None  # empty: unset (sync off)
            else:
                values[key] = text
        values["enabled"] = self.query_one("#server-enabled", Switch).value
        if self.server is None:
            return {k: v for k, v in values.items() if v not in (None, "")}
        changed = {k: v for k, v in values.items() if k != "password" and v != self.server.get(k)}
        if values["password"]:
            changed["password"] = values["password"]
        return changed

    def show_errors(self, problems: list[tuple[str, str]], fallback: str) -> None:
        for widget in self.query(".field-error").results(Static):
            widget.update("")
            widget.remove_class("shown")
        general = []
        for path, message in problems:
            matches = self.query(f"#err-server-{path.split('.')[0]}")
            if matches:
                widget = matches.first(Static)
                widget.update(message)
                widget.add_class("shown")
            else:
                general.append(f"{path}: {message}" if path else message)
        if general or not problems:
            widget = self.query_one("#err-server-general", Static)
            widget.update("\n".join(general) or fallback)
            widget.add_class("shown")

    def action_save(self) -> None:
        self._save(self.body())

    @work(exclusive=True, group="server-form", exit_on_error=False)
    async def _save(self, body: dict[str, Any]) -> None:
        if self.server is not None and not body:
            self.dismiss(None)
            return
        try:
            if self.server is None:
                saved = await self.api.add_server(body)
            else:
                saved = await self.api.update_server(self.server["alias"], body)
        except ApiError as exc:
            self.show_errors(exc.field_problems(), error_text(exc))
            return
        except Unreachable as exc:
            self.show_errors([], f"{error_text(exc)}; your input is kept, try again")
            return
        self.dismiss(saved)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)


def _number_or_text(text: str) -> float | str:
    """A number as a number; anything else as typed, so the core's 422 names the field."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text
