"""The gallery: the folder (STABLE_DIFFUSION_SAVE_PATH) where MobileSD saves finished images.

Every image is a PNG carrying the A1111 `parameters` text chunk, so Forge's PNG Info tab and Civitai
read it without MobileSD; a JSON sidecar `<stem>.json` beside it holds the full job record. An
in-memory index, built once by `start()` and kept current by save and delete, answers listings
without touching the disk, so a gallery of 100,000 images lists as fast as one of ten.

Files are written to a hidden temp name, fsynced and renamed, sidecar first and image second: an
image under a real name always has complete metadata, and a crash leaves at worst a hidden temp
file or an orphan sidecar, both removed by the next `start()`.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import io
import json
import logging
import os
import re
import secrets
import stat
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from PIL import Image, PngImagePlugin

from .durable import FOR_PEOPLE, TMP_PREFIX, atomic_write_bytes, fsync_dir
from .forge.infotext import build_infotext, parse_infotext, prompt_with_loras
from .images import MAX_PIXELS, ImageTooLarge, open_capped
from .schema import DELIVERY_FIELDS

log = logging.getLogger(__name__)

THUMBS_DIR = ".thumbs"
SIDECAR_VERSION = 1
# batch_size (8) x n_iter (100) is at most 800 images, so three digits keep names sortable.
MAX_IMAGES_PER_JOB = 1000

_JOB_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
# Only names of this shape are ever deleted as orphan sidecars, so a user's own JSON is safe.
_OWN_SIDECAR_RE = re.compile(r"\d{8}-\d{6}_[A-Za-z0-9-]{1,64}_\d{3,}\.json")
# ':' is refused too: SMB shares and Windows clients cannot hold it, and `C:x.png` is a drive path.
_BAD_NAME_CHARS = re.compile(r"[/\\:\x00-\x1f\x7f]")
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
# Lists with one item per image: the sidecar keeps only this image's item.
_PER_IMAGE_LISTS = {
    "infotexts": None,
    "all_prompts": "prompt",
    "all_negative_prompts": "negative_prompt",
    "all_hr_prompts": "hr_prompt",
    "all_hr_negative_prompts": "hr_negative_prompt",
}
_MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".gguf", ".sft", ".bin")
# UnidentifiedImageError is an OSError; SyntaxError is what Pillow raises for some broken files.
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# Thumbnails decoded at once: each can take up to 256 MiB (an image at the pixel cap), and the
# work is CPU bound, so more would only add memory; the default executor stays free for saves.
THUMBNAIL_DECODES = 2


class GalleryError(Exception):
    """Something about the gallery folder or an image in it went wrong."""


class ImageNotFound(GalleryError):
    """No gallery image has this name."""


class UnsafeName(GalleryError):
    """A name that is not a plain gallery image name (traversal, separators, hidden, not .png)."""


class NoThumbnail(GalleryError):
    """The image is there but gets no thumbnail: it cannot be decoded or is over the pixel cap."""


@dataclass(slots=True)
class SavedImage:
    filename: str
    width: int
    height: int
    seed: int | None


@dataclass(slots=True)
class _Record:
    """One indexed image: its public entry plus what filters need."""

    entry: dict[str, Any]
    search: str
    job_id: str | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.entry["created"], self.entry["filename"])


@dataclass(slots=True)
class _Prepared:
    filename: str
    png: bytes
    sidecar: dict[str, Any]


# --- names and times --------------------------------------------------------------------------


def check_name(filename: str) -> str:
    """Return `filename` if it is a bare, visible `.png` name; raise UnsafeName otherwise.

    Any characters but separators, control characters and ':' are allowed, because a user's own
    images in the folder ("Holiday (2).png") must stay listable and deletable.
    """
    if not isinstance(filename, str) or not filename or filename in (".", ".."):
        raise UnsafeName(f"not an image name: {filename!r}")
    if _BAD_NAME_CHARS.search(filename) or filename.startswith(".") or filename != filename.strip():
        raise UnsafeName(f"not a plain image name: {filename!r}")
    if not filename.lower().endswith(".png") or len(filename) <= 4:
        raise UnsafeName(f"not a .png image name: {filename!r}")
    try:
        too_long = len(filename.encode("utf-8")) > 255
    except UnicodeEncodeError:  # lone surrogates from a badly decoded URL
        raise UnsafeName(f"not a plain image name: {filename!r}") from None
    if too_long:
        raise UnsafeName("image name longer than 255 bytes")
    return filename


def _is_listable_name(name: str) -> bool:
    try:
        check_name(name)
    except UnsafeName:
        return False
    return True


def _iso(moment: datetime) -> str:
    # One fixed format for every `created`, so plain string order is time order in the index.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _model_name_from_title(title: Any) -> str | None:
    """`sdxl/juggernautXL_v9.safetensors [a1b2c3d4e5]` -> `juggernautXL_v9`, like sd_model_name."""
    if not isinstance(title, str) or not title.strip():
        return None
    name = re.sub(r"\s*\[[0-9a-fA-F]+\]\s*$", "", title.strip())
    name = re.split(r"[/\\]", name)[-1]
    for ext in _MODEL_EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return name or None


# --- records ----------------------------------------------------------------------------------


def _make_record(
    filename: str,
    *,
    created: str,
    width: int,
    height: int,
    job_id: str | None,
    prompt: str,
    negative_prompt: str,
    seed: int | None,
    checkpoint: str | None,
    also_searched: Iterable[Any] = (),
) -> _Record:
    url = f"/gallery_files/{quote(filename)}"
    entry = {
        "filename": filename,
        "url": url,
        "thumb_url": f"{url}?thumb=1",
        "width": width,
        "height": height,
        "created": created,
        "mobilesd_job_id": job_id,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "checkpoint": checkpoint,
    }
    parts = [prompt, negative_prompt, checkpoint or "", filename]
    parts.extend(str(value) for value in also_searched if value)
    return _Record(entry=entry, search="\n".join(parts).casefold(), job_id=job_id)


def _record_from_sidecar(filename: str, data: Mapping[str, Any]) -> _Record:
    params = data.get("generation_params")
    params = params if isinstance(params, Mapping) else {}
    info = data.get("info")
    info = info if isinstance(info, Mapping) else {}
    created = _parse_time(data.get("created"))
    model_title = data.get("model_title")
    checkpoint = info.get("sd_model_name") or _model_name_from_title(model_title)
    checkpoint = checkpoint or params.get("checkpoint_name")
    job_id = data.get("mobilesd_job_id")
    return _make_record(
        filename,
        created=_iso(created) if created else _iso(datetime.fromtimestamp(0, UTC)),
        width=_as_int(data.get("width")) or 0,
        height=_as_int(data.get("height")) or 0,
        job_id=str(job_id) if job_id else None,
        prompt=str(params.get("prompt") or ""),
        negative_prompt=str(params.get("negative_prompt") or ""),
        seed=_as_int(data.get("seed")),
        checkpoint=str(checkpoint) if checkpoint else None,
        also_searched=(model_title, params.get("checkpoint_name")),
    )


def _record_from_png(path: Path, filename: str) -> _Record | None:
    """An image without a MobileSD sidecar: whatever its own `parameters` chunk says."""
    try:
        st = path.stat()
        # The PNG reader itself, not Image.open: listing reads the header only, so an image over
        # the pixel cap is still listed (with its size); only its thumbnail is refused.
        with PngImagePlugin.PngImageFile(path) as im:
            width, height = im.size
            # Only chunks before the pixel data: loading every pixel of a big folder is too slow,
            # and Forge (like Pillow) writes its text chunks before IDAT.
            text = im.info.get("parameters")
    except _IMAGE_ERRORS:
        return None
    fields = parse_infotext(text) if isinstance(text, str) and text.strip() else {}
    return _make_record(
        filename,
        created=_iso(datetime.fromtimestamp(st.st_mtime, UTC)),
        width=width,
        height=height,
        job_id=None,
        prompt=str(fields.get("prompt") or ""),
        negative_prompt=str(fields.get("negative_prompt") or ""),
        seed=_as_int(fields.get("Seed")),
        checkpoint=fields.get("Model") or None,
        also_searched=(fields.get("Model hash"),),
    )


def open_regular(path: Path) -> IO[bytes]:
    """Open a gallery file for reading: never through a symlink, never anything but a regular
    file (O_NONBLOCK: a FIFO planted under a gallery name must not hang the thread)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_own_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's data if it is one MobileSD wrote, else None (a user's JSON stays untouched).
    A sidecar that is a link is not read: its data would come from wherever the link points."""
    try:
        with open_regular(path) as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and "mobilesd_job_id" in data and "generation_params" in data:
        return data
    return None


def _without_delivery(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """`data` (a sidecar) without delivery settings (webhook URLs: they often hold a key) at its
    top level or in its `job`; None when it holds none. A sidecar keeps what reproduces an image,
    not where news of the job went."""
    job = data.get("job")
    in_job = isinstance(job, Mapping) and not DELIVERY_FIELDS.isdisjoint(job)
    if DELIVERY_FIELDS.isdisjoint(data) and not in_job:
        return None
    cleaned = {key: value for key, value in data.items() if key not in DELIVERY_FIELDS}
    if in_job:
        cleaned["job"] = {k: v for k, v in job.items() if k not in DELIVERY_FIELDS}  # type: ignore[union-attr]
    return cleaned


def _sidecar_bytes(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, indent=2, default=str).encode("utf-8")


def public_sidecar(raw: bytes) -> bytes:
    """A sidecar's bytes as they may leave the core (the zip): without delivery settings.
    Sidecars written before they were kept out still hold them; anything that is not a JSON
    object is passed on as it is."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw
    cleaned = _without_delivery(data) if isinstance(data, dict) else None
    return raw if cleaned is None else _sidecar_bytes(cleaned)


# --- encoding ---------------------------------------------------------------------------------


def _add_text(pnginfo: PngImagePlugin.PngInfo, key: str, value: str) -> None:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        pnginfo.add_itxt(key, value)
    else:
        pnginfo.add_text(key, value)


def _png_ready(im: Image.Image) -> Image.Image:
    if im.mode in _PNG_MODES:
        return im
    has_alpha = "A" in im.getbands() or "transparency" in im.info
    return im.convert("RGBA" if has_alpha else "RGB")


def _seed_for(index: int, info: Mapping[str, Any], params: Mapping[str, Any]) -> int | None:
    seeds = info.get("all_seeds")
    if isinstance(seeds, list) and index < len(seeds) and _as_int(seeds[index]) is not None:
        return _as_int(seeds[index])
    for base in (_as_int(info.get("seed")), _as_int(params.get("seed"))):
        if base is not None and base >= 0:
            return base + index
    return None


def _built_infotext(
    index: int,
    params: Mapping[str, Any],
    info: Mapping[str, Any],
    model_title: str | None,
    seed: int | None,
) -> str:
    subseed = _as_int(params.get("subseed"))
    subseeds = info.get("all_subseeds")
    if isinstance(subseeds, list) and index < len(subseeds):
        subseed = _as_int(subseeds[index])
    model_name = info.get("sd_model_name") or _model_name_from_title(model_title)
    model_name = model_name or _model_name_from_title(params.get("checkpoint_name"))
    hires = params.get("hires")
    return build_infotext(
        prompt=prompt_with_loras(str(params.get("prompt") or ""), params.get("loras") or []),
        negative_prompt=str(params.get("negative_prompt") or ""),
        steps=params.get("steps", 20),
        sampler_name=str(params.get("sampler_name") or "Euler"),
        scheduler=params.get("scheduler"),
        cfg_scale=params.get("cfg_scale", 7.0),
        distilled_cfg_scale=params.get("distilled_cfg_scale"),
        seed=seed if seed is not None else -1,
        width=params.get("width", 512),
        height=params.get("height", 512),
        model_name=model_name,
        model_hash=info.get("sd_model_hash") or None,
        subseed=subseed,
        subseed_strength=params.get("subseed_strength") or 0.0,
        clip_skip=params.get("clip_skip"),
        hires=hires if isinstance(hires, Mapping) else None,
        version=info.get("version") or None,
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_facts(data: bytes) -> tuple[int, int, str | None] | None:
    """Size and `parameters` text of an intact PNG, read from its chunks with every CRC checked
    and no pixel decoded (Forge's own images: the common case, on the hot path). None when the
    bytes are not such a PNG; Pillow then takes over."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    view = memoryview(data)
    pos, size, text = 8, None, None
    while pos + 12 <= len(data):
        length = int.from_bytes(view[pos : pos + 4], "big")
        end = pos + 12 + length
        if end > len(data):
            return None  # cut short
        kind = bytes(view[pos + 4 : pos + 8])
        body = view[pos + 8 : pos + 8 + length]
        if zlib.crc32(body, zlib.crc32(kind)) != int.from_bytes(view[end - 4 : end], "big"):
            return None
        if kind == b"IHDR" and length >= 8:
            size = (int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big"))
        elif kind == b"tEXt" and text is None:
            key, _, value = bytes(body).partition(b"\0")
            if key == b"parameters":
                text = value.decode("latin-1")
        elif kind == b"iTXt" and text is None:
            key, _, rest = bytes(body).partition(b"\0")
            # compression flag 0, method, language tag, translated keyword, then the text
            if key == b"parameters" and rest[:1] == b"\0":
                parts = rest[2:].split(b"\0", 2)
                if len(parts) == 3:
                    text = parts[2].decode("utf-8", errors="replace")
        elif kind == b"IEND":
            return (*size, text) if size else None
        pos = end
    return None


def _infotext_for(
    index: int,
    params: Mapping[str, Any],
    info: Mapping[str, Any],
    model_title: str | None,
    seed: int | None,
) -> str:
    infotexts = info.get("infotexts")
    text = infotexts[index] if isinstance(infotexts, list) and index < len(infotexts) else None
    if not isinstance(text, str) or not text.strip():
        text = _built_infotext(index, params, info, model_title, seed)
    return text


def _text_chunk(key: str, value: str) -> bytes:
    """A tEXt chunk, or an uncompressed iTXt one when the text is not Latin-1."""
    try:
        kind, body = b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")
    except UnicodeEncodeError:
        # keyword, compression flag and method, empty language tag and translated keyword
        kind, body = b"iTXt", key.encode("latin-1") + b"\0" * 5 + value.encode("utf-8")
    crc = zlib.crc32(body, zlib.crc32(kind))
    return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")


SOURCE_TEXT_KEY = "mobilesd_source"


def source_images_text(params: Mapping[str, Any]) -> str | None:
    """The images a job started from, by name and hash (`init: gallery:a.png sha256:...`), for
    a PNG text chunk of their own beside Forge's infotext; None for txt2img."""
    lines = []
    for block, ref, sha in (
        ("init", "image", "image_sha256"),
        ("init", "mask", "mask_sha256"),
        ("upscale", "image", "image_sha256"),
    ):
        part = params.get(block)
        if isinstance(part, Mapping) and part.get(ref):
            label = block if ref == "image" else f"{block} {ref}"
            lines.append(f"{label}: {part[ref]} sha256:{part.get(sha)}")
    return "\n".join(lines) or None


def _with_text_after_ihdr(data: bytes, key: str, value: str) -> bytes:
    """The PNG `data` with a text chunk inserted after IHDR: no pixel is decoded."""
    ihdr_end = 8 + 12 + int.from_bytes(data[8:12], "big")
    return data[:ihdr_end] + _text_chunk(key, value) + data[ihdr_end:]


def _encode_image(
    data: bytes,
    index: int,
    params: Mapping[str, Any],
    info: Mapping[str, Any],
    model_title: str | None,
    seed: int | None,
) -> tuple[bytes, int, int, str]:
    """PNG bytes carrying `parameters`, the image size, and that infotext."""
    facts = _png_facts(data)
    if facts is not None and facts[2] and facts[2].strip():
        return data, facts[0], facts[1], facts[2]  # Forge's own bytes, infotext included
    if facts is not None and data[12:16] == b"IHDR" and facts[0] * facts[1] > MAX_PIXELS:
        # An intact PNG too big to decode (a large upscale): the infotext goes in beside the
        # pixels, which are kept as they came.
        text = _infotext_for(index, params, info, model_title, seed)
        return _with_text_after_ihdr(data, "parameters", text), facts[0], facts[1], text
    try:
        with open_capped(io.BytesIO(data)) as im:
            size = im.size
            if im.format == "PNG":
                text = im.info.get("parameters")
                if not isinstance(text, str) or not text.strip():
                    text = im.text.get("parameters")  # loads pixels: the chunk may follow IDAT
                if isinstance(text, str) and text.strip():
                    # Forge's own bytes, infotext included, are kept as they are; verify() checks
                    # every chunk CRC without decoding, so a truncated download is still caught.
                    with Image.open(io.BytesIO(data)) as check:
                        check.verify()
                    return data, size[0], size[1], text
                others = {k: str(v) for k, v in im.text.items() if k != "parameters"}
            else:
                others = {}
            im.load()
            text = _infotext_for(index, params, info, model_title, seed)
            pnginfo = PngImagePlugin.PngInfo()
            for key, value in others.items():
                _add_text(pnginfo, key, value)
            _add_text(pnginfo, "parameters", text)
            out = io.BytesIO()
            _png_ready(im).save(out, format="PNG", pnginfo=pnginfo)
            return out.getvalue(), size[0], size[1], text
    except ImageTooLarge as exc:
        raise GalleryError(f"image {index} from the server cannot be saved: {exc}") from exc
    except _IMAGE_ERRORS as exc:
        raise GalleryError(f"image {index} from the server is not a readable image: {exc}") from exc


def _sidecar_info(info: Mapping[str, Any], index: int, seed: int | None) -> dict[str, Any]:
    trimmed = {key: value for key, value in info.items() if key not in _PER_IMAGE_LISTS}
    for key, single in _PER_IMAGE_LISTS.items():
        values = info.get(key)
        if single and isinstance(values, list) and index < len(values):
            trimmed[single] = values[index]
    subseeds = info.get("all_subseeds")
    if isinstance(subseeds, list) and index < len(subseeds):
        trimmed["subseed"] = subseeds[index]
    trimmed["seed"] = seed
    return trimmed


# --- files ------------------------------------------------------------------------------------


def _make_thumbnail(src: Path, dst: Path, size: int, src_mtime_ns: int) -> None:
    """Write a JPEG thumbnail whose mtime is the mtime of the image it was made from.
    ImageTooLarge, before any pixel is decoded, when the image is over the pixel cap."""
    # draft: a JPEG decodes at a reduced scale (a no-op for PNG), so only that size is capped.
    with open_capped(src, draft=size) as im:
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        if "A" in im.getbands() or "transparency" in im.info:
            rgba = im.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
        else:
            flat = im.convert("RGB")
    out = io.BytesIO()
    flat.save(out, format="JPEG", quality=85, optimize=True)
    tmp = dst.with_name(f"{TMP_PREFIX}{secrets.token_hex(4)}-{dst.name}")
    try:
        with open(tmp, "xb") as f:
            f.write(out.getvalue())
        # Stamped with the mtime read before the image was opened: if the image is replaced
        # while this runs, the thumbnail comes out older than the new image and is made again.
        os.utime(tmp, ns=(src_mtime_ns, src_mtime_ns))
        os.replace(tmp, dst)  # a cache: no fsync, a lost thumbnail is simply made again
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _thumbs_folder(root: Path) -> Path:
    """`.thumbs`, made if missing; a link there (made after start) is refused, as at start."""
    thumbs = root / THUMBS_DIR
    try:
        thumbs.mkdir(exist_ok=True)
        st = os.lstat(thumbs)
    except OSError as exc:
        raise GalleryError(f"cannot use {thumbs}: {exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise GalleryError(f"{thumbs} must be a folder inside the gallery, not a link")
    return thumbs


def _is_own_thumbnail(dst: Path, src_mtime_ns: int) -> bool:
    """Whether `dst` is a thumbnail MobileSD made of the image as it is now. Only MobileSD
    writes `.thumbs`, and never a link: a link (or a FIFO, a socket) found under the name is
    removed, not followed, so a fresh thumbnail replaces it."""
    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(st.st_mode):
        return st.st_mtime_ns >= src_mtime_ns
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{dst.name} in {THUMBS_DIR} is a folder")
    log.warning("gallery: removing %s from %s: not a thumbnail MobileSD made", dst.name, THUMBS_DIR)
    dst.unlink()
    return False


def _scrub_sidecar(path: Path, data: Mapping[str, Any]) -> bool:
    """Rewrite a sidecar that an older version wrote with delivery settings in it (the file is
    world-readable on a share); True when it was. A gallery that cannot be written keeps them
    on disk, and the zip still leaves them out."""
    cleaned = _without_delivery(data)
    if cleaned is None:
        return False
    try:
        atomic_write_bytes(path, _sidecar_bytes(cleaned), mode=FOR_PEOPLE, sync_folder=False)
    except OSError as exc:
        log.warning("gallery: cannot remove the webhook URL from %s: %s", path.name, exc)
        return False
    return True


def _unlink_entry(path: Path) -> None:
    """Remove a directory entry (a file or a symlink itself), never following a link."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)


# --- the gallery ------------------------------------------------------------------------------


class Gallery:
    """The images MobileSD saved (and any PNG a user put in the folder), with an in-memory index.

    The index is only read and changed on the event loop; every file operation runs in a thread.
    """

    def __init__(
        self,
        root: Path,
        *,
        thumb_size: int = 384,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.root = Path(root)
        self.thumb_size = thumb_size
        self._clock = clock or (lambda: datetime.now(UTC))
        self._real_root: Path | None = None
        self._records: dict[str, _Record] = {}
        # (created, filename) ascending; newest first is this list read backwards.
        self._order: list[tuple[str, str]] = []
        self._by_job: dict[str, set[str]] = {}
        # While a rescan runs in its thread, saves and deletes still happen; their names are
        # remembered so the scan's older view of them does not win.
        self._scanning = False
        self._touched: set[str] = set()
        self._thumb_tasks: dict[str, asyncio.Future[Path]] = {}
        self._thumb_slots = asyncio.Semaphore(THUMBNAIL_DECODES)
        # name -> (mtime of the image, why) when its thumbnail failed: the image is not decoded
        # again until it changes, and the log says it once, not on every request.
        self._no_thumbnail: dict[str, tuple[int, str]] = {}
        self._scan_lock = asyncio.Lock()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the folders, remove leftovers of interrupted writes, and build the index."""
        await self._scan(clean=True)

    async def rescan(self) -> None:
        """Rebuild the index from disk, picking up images a user added or removed by hand."""
        await self._scan(clean=False)

    async def _scan(self, *, clean: bool) -> None:
        async with self._scan_lock:
            self._scanning = True
            self._touched = set()
            try:
                records = await asyncio.to_thread(self._scan_folder, clean)
                for name in self._touched:
                    if name in self._records:
                        records[name] = self._records[name]
                    else:
                        records.pop(name, None)
                self._install(records)
            finally:
                self._scanning = False
                self._touched = set()
        log.info("gallery %s: %d images indexed", self.root, len(self._records))

    def _scan_folder(self, clean: bool) -> dict[str, _Record]:
        root = self._ensure_folders()
        with os.scandir(root) as it:
            entries = list(it)
        names = {entry.name for entry in entries}
        if clean:
            self._clean_leftovers(root, entries, names)
        records: dict[str, _Record] = {}
        scrubbed = 0
        for entry in entries:
            if not _is_listable_name(entry.name):
                continue
            path = Path(entry.path)
            try:
                if entry.is_symlink():
                    target = path.resolve(strict=True)
                    if not target.is_relative_to(root) or not target.is_file():
                        continue
                elif not entry.is_file(follow_symlinks=False):
                    continue
            except (OSError, RuntimeError):
                continue
            record = None
            if entry.name[:-4] + ".json" in names:
                sidecar = root / (entry.name[:-4] + ".json")
                data = _read_own_sidecar(sidecar)
                if data is not None:
                    if clean and _scrub_sidecar(sidecar, data):
                        scrubbed += 1
                    record = _record_from_sidecar(entry.name, data)
            if record is None:
                record = _record_from_png(path, entry.name)
            if record is not None:
                records[entry.name] = record
        if scrubbed:
            fsync_dir(root)
            log.info("gallery %s: removed webhook URLs from %d older sidecars", root, scrubbed)
        return records

    def _ensure_folders(self) -> Path:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            root = self.root.resolve(strict=True)
            thumbs = root / THUMBS_DIR
            thumbs.mkdir(exist_ok=True)
        except OSError as exc:
            raise GalleryError(f"cannot use gallery folder {self.root}: {exc}") from exc
        # A .thumbs that is a link elsewhere would make cleanup delete files outside the gallery.
        if thumbs.is_symlink() or not thumbs.is_dir():
            raise GalleryError(f"{thumbs} must be a folder inside the gallery, not a link")
        self._real_root = root
        return root

    def _clean_leftovers(
        self, root: Path, entries: list[os.DirEntry[str]], names: set[str]
    ) -> None:
        removed = 0
        for entry in entries:
            try:
                if entry.name.startswith(TMP_PREFIX) and not entry.is_dir(follow_symlinks=False):
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
                elif (
                    _OWN_SIDECAR_RE.fullmatch(entry.name)
                    and entry.name[:-5] + ".png" not in names
                    and entry.is_file(follow_symlinks=False)
                    and _read_own_sidecar(Path(entry.path)) is not None
                ):
                    # Sidecars are written before their image: this one's image never arrived.
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
            except OSError as exc:
                log.warning("gallery: cannot remove leftover %s: %s", entry.name, exc)
        thumbs = root / THUMBS_DIR
        with os.scandir(thumbs) as it:
            for entry in it:
                stale = entry.name.startswith(TMP_PREFIX) or (
                    entry.name.endswith(".jpg") and entry.name[:-4] not in names
                )
                if stale and not entry.is_dir(follow_symlinks=False):
                    try:
                        Path(entry.path).unlink(missing_ok=True)
                        removed += 1
                    except OSError as exc:
                        log.warning(
                            "gallery: cannot remove stale thumbnail %s: %s", entry.name, exc
                        )
        if removed:
            log.info("gallery %s: removed %d leftovers of interrupted writes", root, removed)

    def _root(self) -> Path:
        if self._real_root is None:
            self._real_root = self.root.resolve()
        return self._real_root

    # --- index (event loop only) --------------------------------------------------------------

    def _install(self, records: dict[str, _Record]) -> None:
        self._records = records
        self._order = sorted(record.key for record in records.values())
        self._by_job = {}
        for name, record in records.items():
            if record.job_id:
                self._by_job.setdefault(record.job_id, set()).add(name)

    def _put(self, record: _Record) -> None:
        name = record.entry["filename"]
        self._drop(name)
        self._records[name] = record
        bisect.insort(self._order, record.key)
        if record.job_id:
            self._by_job.setdefault(record.job_id, set()).add(name)

    def _drop(self, name: str) -> _Record | None:
        if self._scanning:
            self._touched.add(name)
        record = self._records.pop(name, None)
        if record is None:
            return None
        at = bisect.bisect_left(self._order, record.key)
        if at < len(self._order) and self._order[at] == record.key:
            del self._order[at]
        if record.job_id and record.job_id in self._by_job:
            self._by_job[record.job_id].discard(name)
            if not self._by_job[record.job_id]:
                del self._by_job[record.job_id]
        return record

    # --- saving -------------------------------------------------------------------------------

    def image_name(self, job: Mapping[str, Any], index: int) -> str:
        """`<job created:%Y%m%d-%H%M%S>_<job id>_<index:03d>.png`: the same job and index always
        give the same name, so a retry after a crash overwrites instead of adding a copy."""
        job_id = job.get("mobilesd_job_id")
        if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
            raise UnsafeName(f"job id {job_id!r} cannot be part of a file name")
        if isinstance(index, bool) or not isinstance(index, int):
            raise GalleryError(f"image index must be an integer, not {index!r}")
        if not 0 <= index < MAX_IMAGES_PER_JOB:
            raise GalleryError(f"image index {index} out of range 0..{MAX_IMAGES_PER_JOB - 1}")
        created = _parse_time(job.get("creation_timestamp"))
        if created is None:
            raise GalleryError(f"job {job_id} has no valid creation_timestamp")
        return f"{created.astimezone(UTC):%Y%m%d-%H%M%S}_{job_id}_{index:03d}.png"

    async def save_job_images(
        self,
        job: dict[str, Any],
        images: list[bytes],
        info: dict[str, Any],
        *,
        server_alias: str,
        timings: dict[str, float] | None = None,
        model_title: str | None = None,
    ) -> list[SavedImage]:
        """Save a finished job's images with their metadata; saving again overwrites.

        Every image is checked and encoded before the first file is written, so a bad image fails
        the save without leaving half of the job in the gallery.
        """
        if not images:
            return []
        info = info or {}
        names = [self.image_name(job, index) for index in range(len(images))]
        # The store keeps changing its job dict on the loop; the thread gets a frozen copy.
        snapshot = copy.deepcopy(job)
        created = _iso(self._clock())
        prepared = await asyncio.to_thread(
            self._prepare_and_write,
            names,
            list(images),
            snapshot,
            info,
            server_alias,
            timings,
            model_title,
            created,
        )
        saved = []
        for item in prepared:
            record = _record_from_sidecar(item.filename, item.sidecar)
            self._put(record)
            saved.append(
                SavedImage(
                    filename=item.filename,
                    width=item.sidecar["width"],
                    height=item.sidecar["height"],
                    seed=item.sidecar["seed"],
                )
            )
        log.info(
            "job %s: saved %d images from %s to the gallery",
            job.get("mobilesd_job_id"),
            len(saved),
            server_alias,
        )
        return saved

    def _prepare_and_write(
        self,
        names: list[str],
        images: list[bytes],
        job: dict[str, Any],
        info: Mapping[str, Any],
        server_alias: str,
        timings: dict[str, float] | None,
        model_title: str | None,
        created: str,
    ) -> list[_Prepared]:
        params = job.get("generation_params")
        params = params if isinstance(params, Mapping) else {}
        prepared = []
        for index, (name, data) in enumerate(zip(names, images, strict=True)):
            seed = _seed_for(index, info, params)
            png, width, height, infotext = _encode_image(
                data, index, params, info, model_title, seed
            )
            if seed is None:
                seed = _as_int(parse_infotext(infotext).get("Seed"))
            if source := source_images_text(params):  # img2img, inpaint, upscale (issue 19)
                png = _with_text_after_ihdr(png, SOURCE_TEXT_KEY, source)
            sidecar = {
                "sidecar_version": SIDECAR_VERSION,
                "filename": name,
                "mobilesd_job_id": job.get("mobilesd_job_id"),
                "index": index,
                "created": created,
                "width": width,
                "height": height,
                "seed": seed,
                "server_alias": server_alias,
                "model_title": model_title,
                "generation_params": params,
                "infotext": infotext,
                "info": _sidecar_info(info, index, seed),
                "timings": timings,
                "job": {k: v for k, v in job.items() if k not in DELIVERY_FIELDS},
            }
            prepared.append(_Prepared(filename=name, png=png, sidecar=sidecar))

        root = self._ensure_folders()
        thumbs = root / THUMBS_DIR
        for item in prepared:
            sidecar_bytes = _sidecar_bytes(item.sidecar)
            try:
                # Sidecar before image: an image under its real name always has its metadata.
                atomic_write_bytes(
                    root / (item.filename[:-4] + ".json"),
                    sidecar_bytes,
                    mode=FOR_PEOPLE,
                    sync_folder=False,
                )
                atomic_write_bytes(
                    root / item.filename, item.png, mode=FOR_PEOPLE, sync_folder=False
                )
                # The old thumbnail of an overwritten image may share its mtime second.
                (thumbs / (item.filename + ".jpg")).unlink(missing_ok=True)
            except OSError as exc:
                raise GalleryError(f"cannot write {item.filename} in {root}: {exc}") from exc
        fsync_dir(root)
        return prepared

    # --- reading ------------------------------------------------------------------------------

    async def list_images(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        q: str | None = None,
        job_id: str | None = None,
        job_range: tuple[str, str] | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of entries, newest first, and how many match in total.

        `q` is split into words; an image matches when each word occurs (case-insensitively) in
        its prompt, negative prompt, checkpoint or file name. `job_range` (first, last) keeps the
        images of jobs whose ids sort between the two, both included: a batch's jobs have
        consecutive ids, so this is how a notice links to a batch's images.
        """
        limit = max(0, limit)
        offset = max(0, offset)
        words = q.casefold().split() if q else []
        if job_range is not None:
            first, last = job_range
            job_ids = [j for j in self._by_job if first <= j <= last]
            if job_id is not None:
                job_ids = [j for j in job_ids if j == job_id]
            job_id = None
            range_names = [name for j in job_ids for name in self._by_job[j]]
        if job_id is None and not words and job_range is None:
            total = len(self._order)
            stop = max(0, total - offset)
            start = max(0, stop - limit)
            keys = self._order[start:stop][::-1]
            return [dict(self._records[name].entry) for _, name in keys], total

        if job_range is not None:
            candidates: Iterable[tuple[str, str]] = sorted(
                (self._records[name].key for name in range_names), reverse=True
            )
        elif job_id is not None:
            names = self._by_job.get(job_id, set())
            candidates = sorted((self._records[name].key for name in names), reverse=True)
        else:
            candidates = reversed(self._order)
        page: list[dict[str, Any]] = []
        total = 0
        for _, name in candidates:
            record = self._records[name]
            if words and not all(word in record.search for word in words):
                continue
            if offset <= total < offset + limit:
                page.append(dict(record.entry))
            total += 1
        return page, total

    def names_for_jobs(self, job_ids: Iterable[str]) -> list[str]:
        """The gallery images of these jobs, job by job in the given order, by name in a job."""
        return [name for job_id in job_ids for name in sorted(self._by_job.get(job_id, ()))]

    def sidecar_path(self, filename: str) -> Path | None:
        """The JSON sidecar beside an image, if there is one (blocking): a regular file in the
        gallery folder, never a link (its bytes would come from wherever it points)."""
        path = self._root() / (check_name(filename)[:-4] + ".json")
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return path if stat.S_ISREG(st.st_mode) else None

    async def get_entry(self, filename: str) -> dict[str, Any]:
        record = self._records.get(check_name(filename))
        if record is None:
            raise ImageNotFound(f"no gallery image named {filename!r}")
        return dict(record.entry)

    def image_path(self, filename: str) -> Path:
        """The real path of a gallery image; never a path outside the gallery folder."""
        return self._resolve(check_name(filename))

    def _resolve(self, name: str) -> Path:
        root = self._root()
        try:
            real = (root / name).resolve(strict=True)
        except FileNotFoundError:
            raise ImageNotFound(f"no gallery image named {name!r}") from None
        except (OSError, RuntimeError) as exc:  # symlink loops, permission errors
            raise UnsafeName(f"cannot resolve {name!r}: {exc}") from None
        # A link may point at another image in the gallery, never anywhere else.
        if not real.is_relative_to(root) or real == root:
            raise UnsafeName(f"{name!r} points outside the gallery")
        if not real.is_file():
            raise ImageNotFound(f"no gallery image named {name!r}")
        return real

    async def thumbnail_path(self, filename: str) -> Path:
        """A JPEG thumbnail (longest side at most thumb_size), made once and then reused.

        Concurrent requests for one image share one piece of work.
        """
        name = check_name(filename)
        task = self._thumb_tasks.get(name)
        if task is None:
            task = asyncio.ensure_future(self._thumbnail_in_thread(name))
            self._thumb_tasks[name] = task

            def _forget(done: asyncio.Future[Path], name: str = name) -> None:
                if self._thumb_tasks.get(name) is done:
                    del self._thumb_tasks[name]
                if not done.cancelled():
                    done.exception()  # retrieved, so an unawaited failure is not logged twice

            task.add_done_callback(_forget)
        # shield: one cancelled request must not cancel the work others are waiting for.
        return await asyncio.shield(task)

    async def _thumbnail_in_thread(self, name: str) -> Path:
        async with self._thumb_slots:
            return await asyncio.to_thread(self._ensure_thumbnail, name)

    def _ensure_thumbnail(self, name: str) -> Path:
        src = self._resolve(name)
        dst = _thumbs_folder(self._root()) / (name + ".jpg")
        try:
            src_mtime = src.stat().st_mtime_ns
            if _is_own_thumbnail(dst, src_mtime):
                return dst
        except OSError as exc:
            raise GalleryError(f"cannot make a thumbnail of {name!r}: {exc}") from exc
        failed = self._no_thumbnail.get(name)
        if failed is not None and failed[0] == src_mtime:
            raise NoThumbnail(f"no thumbnail for {name!r}: {failed[1]}")
        try:
            _make_thumbnail(src, dst, self.thumb_size, src_mtime)
        except _IMAGE_ERRORS as exc:  # ImageTooLarge is a ValueError
            if isinstance(exc, OSError) and exc.errno is not None:
                # The disk (full, read-only), not the image: try again next time. Pillow's own
                # decoding errors are OSErrors without an errno.
                raise GalleryError(f"cannot make a thumbnail of {name!r}: {exc}") from exc
            self._no_thumbnail[name] = (src_mtime, str(exc))
            log.warning("gallery: no thumbnail for %s: %s", name, exc)
            raise NoThumbnail(f"no thumbnail for {name!r}: {exc}") from exc
        self._no_thumbnail.pop(name, None)
        return dst

    # --- deleting -----------------------------------------------------------------------------

    async def delete_image(self, filename: str) -> dict[str, Any]:
        """Remove the image, its sidecar and its thumbnail; return the entry it had."""
        name = check_name(filename)
        indexed = self._records.get(name)
        removed = await asyncio.to_thread(self._delete_files, name, indexed is None)
        record = self._drop(name) or removed
        if record is None:  # a concurrent delete of the same image won the race
            raise ImageNotFound(f"no gallery image named {filename!r}")
        log.info("gallery: deleted %s", name)
        return dict(record.entry)

    async def delete_job_images(self, job_id: str) -> list[str]:
        """Remove every image of a job (with sidecars and thumbnails); return their names."""
        names = sorted(self._by_job.get(job_id, ()))
        if not names:
            return []
        deleted = await asyncio.to_thread(self._delete_many, names)
        for name in deleted:
            self._drop(name)
        log.info("job %s: deleted %d gallery images", job_id, len(deleted))
        return deleted

    def _delete_many(self, names: list[str]) -> list[str]:
        deleted = []
        for name in names:
            try:
                self._delete_files(name, False)
            except GalleryError as exc:
                # One image that cannot go (a link out of the gallery, a permission error) must
                # not keep the rest of the job's images.
                log.warning("gallery: not deleting %s: %s", name, exc)
                continue
            deleted.append(name)
        return deleted

    def _delete_files(self, name: str, want_record: bool) -> _Record | None:
        """Delete one image's files. `want_record`: it is not indexed, so read its entry first."""
        root = self._root()
        image = root / name  # the directory entry itself: a link is removed, not its target
        try:
            self._resolve(name)  # refuses a name whose target lies outside the gallery
        except ImageNotFound:
            if want_record:
                raise
            # Indexed but removed by hand: still clear its sidecar, thumbnail and index entry.
        sidecar = root / (name[:-4] + ".json")
        own = _read_own_sidecar(sidecar)
        record = None
        if want_record:
            record = _record_from_sidecar(name, own) if own else _record_from_png(image, name)
            if record is None:
                raise ImageNotFound(f"{name!r} is not an image")
        try:
            # Image first: a sidecar left by a crash here is an orphan that start() removes.
            _unlink_entry(image)
            if own is not None:
                _unlink_entry(sidecar)
            _unlink_entry(root / THUMBS_DIR / (name + ".jpg"))
        except OSError as exc:
            raise GalleryError(f"cannot delete {name!r}: {exc}") from exc
        return record
