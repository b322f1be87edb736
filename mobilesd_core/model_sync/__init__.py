"""On-demand model sync to Forge servers, and the cache management of the copies it makes.

index.py   what the master library holds (in memory, for routing)
copier.py  one verified copy (temp name, SHA-256, fsync, rename), in a worker thread
ledger.py  the copies the core made, per server (CONFIG_DATA_PATH/model_sync.json)
dirs.py    checks of a server's sync folders when the API sets them
sync.py    ModelSync: the dispatcher's hook, shared copies, refresh, LRU eviction
"""

from .index import LibraryFile, LibraryIndex, listed_as
from .ledger import SyncedFile, SyncLedger
from .sync import ModelSync

__all__ = [
    "LibraryFile",
    "LibraryIndex",
    "ModelSync",
    "SyncLedger",
    "SyncedFile",
    "listed_as",
]
