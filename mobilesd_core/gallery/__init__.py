"""The gallery: the folder (STABLE_DIFFUSION_SAVE_PATH) where MobileSD saves finished images.

Every image is a PNG carrying the A1111 `parameters` text chunk (png.py); a JSON sidecar
`<stem>.json` beside it holds the full job record (sidecars.py). An in-memory index (index.py),
built once by `start()` and kept current by save and delete, answers listings without touching
the disk. Thumbnails live in `.thumbs` (thumbs.py); names and link-safe file handling are in
files.py; `Gallery` (folder.py) ties them together for one folder.
"""

from .errors import GalleryError, ImageNotFound, NoThumbnail, UnsafeName
from .files import check_name, open_regular
from .folder import MAX_IMAGES_PER_JOB, Gallery, SavedImage
from .png import SOURCE_TEXT_KEY, source_images_text
from .sidecars import SIDECAR_VERSION, public_sidecar
from .thumbs import THUMBNAIL_DECODES, THUMBS_DIR

__all__ = [
    "MAX_IMAGES_PER_JOB",
    "SIDECAR_VERSION",
    "SOURCE_TEXT_KEY",
    "THUMBNAIL_DECODES",
    "THUMBS_DIR",
    "Gallery",
    "GalleryError",
    "ImageNotFound",
    "NoThumbnail",
    "SavedImage",
    "UnsafeName",
    "check_name",
    "open_regular",
    "public_sidecar",
    "source_images_text",
]
