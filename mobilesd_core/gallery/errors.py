"""What goes wrong with the gallery folder or an image in it."""

from __future__ import annotations


class GalleryError(Exception):
    """Something about the gallery folder or an image in it went wrong."""


class ImageNotFound(GalleryError):
    """No gallery image has this name."""


class UnsafeName(GalleryError):
    """A name that is not a plain gallery image name (traversal, separators, hidden, not .png)."""


class NoThumbnail(GalleryError):
    """The image is there but gets no thumbnail: it cannot be decoded or is over the pixel cap."""
