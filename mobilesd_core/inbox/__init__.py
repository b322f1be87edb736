"""The inbox: YAML job files dropped into a watched folder (often an SMB share) become jobs."""

from .watcher import InboxWatcher

__all__ = ["InboxWatcher"]
