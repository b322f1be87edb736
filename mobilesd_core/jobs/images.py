"""The images a job reads (init image, mask, upscale source), copied into the upload store when
the job is created and named there by hash.

A reference is `upload:<sha256>` (stored already), `gallery:<name>` (a gallery image, copied),
or, in a job file only, a path relative to the file's folder that must stay inside the inbox
(opened without following links: inbox/inside.py). The job's parameters get `image_sha256` /
`mask_sha256` beside the names, so the job no longer depends on the original, and the sidecar
and PNG text record both.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
from pathlib import Path
from typing import Any

from ..gallery import Gallery, GalleryError, ImageNotFound
from ..schema import FieldProblem
from ..uploads import MAX_UPLOAD_BYTES, UploadRejected, UploadStore

# (block, reference field, hash field) of every image a job reads.
IMAGE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("init", "image", "image_sha256"),
    ("init", "mask", "mask_sha256"),
    ("upscale", "image", "image_sha256"),
)


def needed_uploads(params: dict[str, Any]) -> set[str]:
    """The upload hashes a job's parameters refer to."""
    out = set()
    for block, _, hash_field in IMAGE_FIELDS:
        part = params.get(block)
        if isinstance(part, dict) and isinstance(part.get(hash_field), str):
            out.add(part[hash_field])
    return out


class _Inbox:
    """Where a job file's relative paths are read: its folder, inside the inbox root."""

    def __init__(self, root: Path, folder: str) -> None:
        self.root = root
        self.folder = folder  # relative to root, posix, "" for the root itself

    def read(self, ref: str) -> bytes:
        # Here, not at the top: the inbox package imports the service, which imports this.
        from ..inbox.inside import LinkOnPath, open_inside

        rel = posixpath.normpath(posixpath.join(self.folder, ref.replace("\\", "/")))
        if rel.startswith("../") or rel == ".." or rel.startswith("/"):
            raise UploadRejected("must stay inside the inbox folder")
        try:
            fd, folder = open_inside(self.root, rel)
        except LinkOnPath:
            raise UploadRejected("is reached through a symbolic link; not followed") from None
        except (FileNotFoundError, NotADirectoryError):
            raise UploadRejected(f"no file '{rel}' in the inbox") from None
        except OSError as exc:
            raise UploadRejected(f"cannot read '{rel}' ({exc.strerror or exc})") from None
        try:
            with os.fdopen(fd, "rb") as f:
                data = f.read(MAX_UPLOAD_BYTES + 1)
        finally:
            os.close(folder)
        return data


class JobImages:
    def __init__(self, uploads: UploadStore, gallery: Gallery) -> None:
        self.uploads = uploads
        self.gallery = gallery

    async def resolve(
        self,
        params: dict[str, Any],
        *,
        prefix: str = "generation_params",
        inbox: tuple[Path, str] | None = None,
    ) -> list[FieldProblem]:
        """Store every image `params` refers to and set its hash field (in place); the
        problems, each naming its field. `inbox`: (inbox root, the job file's folder)."""
        problems: list[FieldProblem] = []
        where = _Inbox(*inbox) if inbox is not None else None
        for block, ref_field, hash_field in IMAGE_FIELDS:
            part = params.get(block)
            if not isinstance(part, dict) or not isinstance(part.get(ref_field), str):
                continue
            path = ".".join(filter(None, (prefix, block, ref_field)))
            try:
                part[hash_field] = await self._store(part[ref_field], part.get(hash_field), where)
            except UploadRejected as exc:
                problems.append(FieldProblem(path=path, message=str(exc)))
        init = params.get("init")
        if not problems and isinstance(init, dict) and init.get("mask_sha256"):
            image_size = await self.uploads.size(init["image_sha256"])
            mask_size = await self.uploads.size(init["mask_sha256"])
            if image_size != mask_size:
                problems.append(
                    FieldProblem(
                        path=".".join(filter(None, (prefix, "init", "mask"))),
                        message=(
                            f"is {mask_size[0]}x{mask_size[1]}, but the image is "
                            f"{image_size[0]}x{image_size[1]}; a mask must have the image's size"
                        ),
                    )
                )
        return problems

    async def _store(self, ref: str, known: Any, inbox: _Inbox | None) -> str:
        """The hash of what `ref` names now. `known`, the hash a job already has, stands only
        where the source cannot be read again (a gallery image deleted since, a job file's path
        seen from the API: an edit, a retry, `mobilesd submit`'s upload), so an edit that names
        another image never keeps the old one."""
        kept = known if isinstance(known, str) and self.uploads.has(known) else None
        kind, _, rest = ref.partition(":")
        if kind == "upload" and rest:
            if not self.uploads.has(rest):
                raise UploadRejected(
                    "no such upload (never stored, or removed once no job needed it); "
                    "upload the image again: POST /api/v1/uploads"
                )
            return rest
        if kind == "gallery" and rest:
            try:
                path = self.gallery.image_path(rest)
            except ImageNotFound as exc:
                if kept is not None:
                    return kept
                raise UploadRejected(str(exc)) from None
            except GalleryError as exc:
                raise UploadRejected(str(exc)) from None
            data = await asyncio.to_thread(path.read_bytes)
        elif inbox is None:
            if kept is not None:
                return kept
            raise UploadRejected(
                "a file path works only in job files; use gallery:<name> or upload:<sha256>"
            )
        else:
            data = await asyncio.to_thread(inbox.read, ref)
        stored = await self.uploads.put(data)
        return stored.sha256
