"""MobileSD terminal UI (Textual). A client of the core HTTP API; built in the TUI issue."""
