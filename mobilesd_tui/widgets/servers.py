"""Servers tab: each Forge server's live status, from `server` events and the server list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import var
from textual.widgets import DataTable, Static
from textual.widgets.data_table import RowDoesNotExist

from ..jobtext import one_line, short_model

COLUMNS = (
    ("alias", "Server", 10),
    ("state", "Status", 10),
    ("latency", "Latency", 7),
    ("busy", "Jobs", 4),
    ("checkpoint", "Checkpoint", 16),
    ("url", "URL", 20),  # widened to fill the terminal (on_resize)
)
FIXED_WIDTH = sum(width for key, _, width in COLUMNS if key != "url")


ServerVerb = Literal["add", "edit", "remove", "test"]


@dataclass
class ServerAction(Message):
    """add / edit / remove / test, handled by the app (it owns the client and dialogs)."""

    action: ServerVerb
    server: dict[str, Any] | None


@dataclass
class CancelDownload(Message):
    """Cancel this Civitai download, handled by the app (it asks first, then calls the core)."""

    download: dict[str, Any]


def state_cell(server: dict[str, Any]) -> Text:
    status = server.get("status") or {}
    if not server.get("enabled", True):
        return Text("○ disabled", style="dim")
    if not status.get("checked", True) and not status.get("online"):
        return Text("◌ checking", style="yellow")
    if status.get("online"):
        return Text("● busy" if status.get("busy") else "● online", style="green")
    return Text("✗ offline", style="bold red")


def server_cells(server: dict[str, Any], url_width: int = 30) -> tuple[Any, ...]:
    status = server.get("status") or {}
    latency = status.get("latency_ms")
    return (
        Text(server["alias"], style="bold"),
        state_cell(server),
        "-" if latency is None else f"{latency:.0f} ms",
        f"{status.get('active_jobs', 0)}/{server.get('max_concurrent', 1)}",
        Text(short_model(status.get("current_checkpoint"))),  # Text: shown as is, no markup
        Text(one_line(server.get("api_url", ""), url_width)),
    )


class ServersPane(Vertical):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "server('add')", "Add", id="servers.add"),
        Binding("e,enter", "server('edit')", "Edit", id="servers.edit"),
        Binding("x,delete", "server('remove')", "Remove", id="servers.remove"),
        Binding("t", "server('test')", "Test", id="servers.test"),
        # Shown only while a download is under way (check_action).
        Binding("c", "cancel_download", "Cancel download", id="servers.download.cancel"),
        Binding("d", "next_download", "Next download", id="servers.download.next"),
    ]

    # The active download that `c` cancels (marked ▸); `d` moves it to the next one. The list
    # is drawn again and the footer's keys follow (`c` only while there is one to cancel).
    marked_download: var[str | None] = var(None, init=False, bindings=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.downloads: dict[str, dict[str, Any]] = {}
        self.servers: dict[str, dict[str, Any]] = {}
        self._url_width = COLUMNS[-1][2]

    def compose(self) -> ComposeResult:
        yield DataTable(id="servers-table", cursor_type="row")
        yield Static("", id="server-detail")
        yield Static("", id="downloads")

    def on_mount(self) -> None:
        self._add_columns()
        self._detail()

    def _add_columns(self) -> None:
        table = self.query_one(DataTable)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=self._url_width if key == "url" else width)

    def on_resize(self) -> None:
        if not self.size.width:
            return  # a hidden tab
        width = max(12, self.size.width - FIXED_WIDTH - 2 * len(COLUMNS) - 1)
        if width != self._url_width:
            self._url_width = width
            self.query_one(DataTable).clear(columns=True)
            self._add_columns()
            self.load(list(self.servers.values()))

    def load(self, servers: list[dict[str, Any]]) -> None:
        self.servers = {s["alias"]: s for s in servers}
        table = self.query_one(DataTable)
        selected = self.selected()
        table.clear()
        for alias in sorted(self.servers):
            table.add_row(*server_cells(self.servers[alias], self._url_width), key=alias)
        if selected is not None and selected["alias"] in self.servers:
            table.move_cursor(row=table.get_row_index(selected["alias"]), animate=False)
        self._detail()

    def apply_status(self, data: dict[str, Any]) -> None:
        """A `server` event: its status changed, or it was removed."""
        alias = data["alias"]
        if data.get("removed"):
            if self.servers.pop(alias, None) is not None:
                self.load(list(self.servers.values()))
            return
        server = self.servers.get(alias)
        if server is None:
            # New to us (added elsewhere): the full record comes with the next list load.
            server = {"alias": alias, "api_url": "", "enabled": data.get("enabled", True)}
        server = {**server, "status": data, "enabled": data.get("enabled", server.get("enabled"))}
        if "max_concurrent" in data:
            server["max_concurrent"] = data["max_concurrent"]
        known = alias in self.servers
        self.servers[alias] = server
        if not known:
            self.load(list(self.servers.values()))
            return
        table = self.query_one(DataTable)
        try:
            for (column, _, _), value in zip(
                COLUMNS, server_cells(server, self._url_width), strict=True
            ):
                table.update_cell(alias, column, value)
        except RowDoesNotExist:
            self.load(list(self.servers.values()))
        self._detail()

    def show_download(self, download: dict[str, Any]) -> None:
        """A Civitai download started, moved on or ended (newest first, the last few kept)."""
        self.downloads[download["download_id"]] = download
        recent = sorted(self.downloads.values(), key=lambda d: d.get("created") or 0, reverse=True)
        self.downloads = {d["download_id"]: d for d in recent[:MAX_DOWNLOADS_SHOWN]}
        active = self.active_downloads()
        if self.marked_download not in active:
            self.marked_download = active[0] if active else None
        self._render_downloads()
        self.refresh_bindings()

    def active_downloads(self) -> list[str]:
        """Ids of the listed downloads that can still be cancelled, newest first."""
        return [i for i, d in self.downloads.items() if d.get("status") in ACTIVE_DOWNLOADS]

    def _render_downloads(self) -> None:
        text = Text("Civitai downloads", style="bold")
        for download_id, item in self.downloads.items():
            text.append("\n")
            text.append_text(download_line(item, marked=download_id == self.marked_download))
        panel = self.query_one("#downloads", Static)
        panel.update(text)
        panel.add_class("shown")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_download":
            return self.marked_download is not None
        if action == "next_download":
            return len(self.active_downloads()) > 1
        return True

    def action_next_download(self) -> None:
        active = self.active_downloads()
        if not active:
            return
        index = active.index(self.marked_download) if self.marked_download in active else -1
        self.marked_download = active[(index + 1) % len(active)]

    def watch_marked_download(self) -> None:
        self._render_downloads()

    def action_cancel_download(self) -> None:
        download = self.downloads.get(self.marked_download or "")
        if download is not None:
            self.post_message(CancelDownload(download))

    def upsert(self, server: dict[str, Any], old_alias: str | None = None) -> None:
        if old_alias and old_alias != server["alias"]:
            self.servers.pop(old_alias, None)
        self.servers[server["alias"]] = server
        self.load(list(self.servers.values()))
        table = self.query_one(DataTable)
        table.move_cursor(row=table.get_row_index(server["alias"]), animate=False)

    def selected(self) -> dict[str, Any] | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return self.servers.get(str(key.value))

    def _detail(self) -> None:
        server = self.selected()
        detail = self.query_one("#server-detail", Static)
        if server is None:
            detail.update("No servers yet. Press [b]a[/] to add a Forge server (its API URL).")
            return
        status = server.get("status") or {}
        text = Text()
        text.append(f"{server['alias']}", style="bold")
        text.append(f"  {server.get('api_url', '')}")
        if server.get("username"):
            text.append(f"  user {server['username']}")
            text.append(" (password set)" if server.get("has_password") else "")
        text.append(f"\nconcurrency {server.get('max_concurrent', 1)}")
        text.append(f", {'enabled' if server.get('enabled', True) else 'disabled'}")
        synced = [
            f"{what} → {server[key]}"
            for key, what in (("checkpoint_dir", "checkpoints"), ("lora_dir", "LoRAs"))
            if server.get(key)
        ]
        if synced:
            cap = server.get("sync_cap_gb")
            text.append(
                f"\nmodel sync: {', '.join(synced)}" + (f" (up to {cap:g} GB)" if cap else "")
            )
        if status.get("current_checkpoint"):
            text.append(f"\ncheckpoint: {status['current_checkpoint']}")
        if status.get("error"):
            text.append(f"\nerror: {status['error']}", style="red")
        detail.update(text)

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._detail()

    @on(DataTable.RowSelected)
    def _selected(self) -> None:
        self.action_server("edit")

    def action_server(self, action: ServerVerb) -> None:
        server = self.selected()
        if action != "add" and server is None:
            self.notify("No server selected; press a to add one.", severity="warning")
            return
        self.post_message(ServerAction(action, server))


MAX_DOWNLOADS_SHOWN = 5
ACTIVE_DOWNLOADS = frozenset({"queued", "downloading", "verifying"})


def download_line(item: dict[str, Any], *, marked: bool = False) -> Text:
    """`name  42 %  110/260 MB  downloading` (the name as text: it comes from Civitai); `▸`
    marks the download that `c` cancels."""
    done, total = item.get("bytes_done") or 0, item.get("bytes_total") or 0
    status = item.get("status", "")
    line = Text()
    line.append("▸ " if marked else "  ", style="bold")
    line.append(item.get("filename") or item.get("model_name") or "?")
    if total:
        line.append(f"  {done * 100 // total} %  {done / 1e6:.0f}/{total / 1e6:.0f} MB")
    style = {"failed": "red", "completed": "green", "cancelled": "dim"}.get(status, "")
    line.append(f"  {status}", style=style)
    if item.get("error"):
        line.append(f": {item['error']}", style="red")
    return line
