"""What goes wrong with the gallery folder or an image in it."""

from __future__ import annotations

from ..errors import MobileSDError, NotFound


class GalleryError(Exception):
    """Something about the gallery folder or an image in it went wrong."""


class ImageNotFound(GalleryError, NotFound):
    """No gallery image has this name."""

    code = "image_not_found"

    @property
    def public_message(self) -> str:
        return "no such image in the gallery"


class UnsafeName(GalleryError, MobileSDError):
    """A name that is not a plain gallery image name (traversal, separators, hidden, not .png)."""

    status = 400
    code = "bad_filename"

    @property
    def public_message(self) -> str:
        return "not a gallery file name"


class NoThumbnail(GalleryError, MobileSDError):
    """The image is there but gets no thumbnail: it cannot be decoded or is over the pixel cap.
    The image itself is still served (the page shows no thumbnail)."""

    status = 404
    code = "no_thumbnail"
