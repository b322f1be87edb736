"""PNG encoding: every gallery image is a PNG carrying the A1111 `parameters` text chunk, so
Forge's PNG Info tab and Civitai read it without MobileSD. Forge's own PNGs are kept byte for byte;
anything else is re-encoded with the infotext added."""

from __future__ import annotations

import io
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from ..forge.infotext import build_infotext, prompt_with_loras
from ..images import MAX_PIXELS, ImageTooLarge, open_capped
from .errors import GalleryError
from .values import as_int, model_name_from_title

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
# UnidentifiedImageError is an OSError; SyntaxError is what Pillow raises for some broken files.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_header(path: Path) -> tuple[int, int, str | None]:
    """Size and `parameters` text of a PNG file, from the chunks before its pixel data.
    Raises one of IMAGE_ERRORS when it is not a readable PNG."""
    # The PNG reader itself, not Image.open: listing reads the header only, so an image over
    # the pixel cap is still listed (with its size); only its thumbnail is refused.
    with PngImagePlugin.PngImageFile(path) as im:
        width, height = im.size
        # Only chunks before the pixel data: loading every pixel of a big folder is too slow,
        # and Forge (like Pillow) writes its text chunks before IDAT.
        text = im.info.get("parameters")
    return width, height, text if isinstance(text, str) else None


def seed_for(index: int, info: Mapping[str, Any], params: Mapping[str, Any]) -> int | None:
    """The seed of image `index` of a batch: Forge's own list, else the base seed plus index."""
    seeds = info.get("all_seeds")
    if isinstance(seeds, list) and index < len(seeds) and as_int(seeds[index]) is not None:
        return as_int(seeds[index])
    for base in (as_int(info.get("seed")), as_int(params.get("seed"))):
        if base is not None and base >= 0:
            return base + index
    return None


def encode_image(
    data: bytes,
    index: int,
    params: Mapping[str, Any],
    info: Mapping[str, Any],
    model_title: str | None,
    seed: int | None,
) -> tuple[bytes, int, int, str]:
    """PNG bytes carrying `parameters`, the image size, and that infotext."""
    facts = png_facts(data)
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
            others: dict[str, str] = {}
            if isinstance(im, PngImagePlugin.PngImageFile):
                found = im.info.get("parameters")
                if not isinstance(found, str) or not found.strip():
                    found = im.text.get("parameters")  # loads pixels: the chunk may follow IDAT
                if isinstance(found, str) and found.strip():
                    # Forge's own bytes, infotext included, are kept as they are; verify() checks
                    # every chunk CRC without decoding, so a truncated download is still caught.
                    with Image.open(io.BytesIO(data)) as check:
                        check.verify()
                    return data, size[0], size[1], found
                others = {k: str(v) for k, v in im.text.items() if k != "parameters"}
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
    except IMAGE_ERRORS as exc:
        raise GalleryError(f"image {index} from the server is not a readable image: {exc}") from exc


def png_facts(data: bytes) -> tuple[int, int, str | None] | None:
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


def _built_infotext(
    index: int,
    params: Mapping[str, Any],
    info: Mapping[str, Any],
    model_title: str | None,
    seed: int | None,
) -> str:
    subseed = as_int(params.get("subseed"))
    subseeds = info.get("all_subseeds")
    if isinstance(subseeds, list) and index < len(subseeds):
        subseed = as_int(subseeds[index])
    model_name = info.get("sd_model_name") or model_name_from_title(model_title)
    model_name = model_name or model_name_from_title(params.get("checkpoint_name"))
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
        modules=params.get("modules") or None,
        subseed=subseed,
        subseed_strength=params.get("subseed_strength") or 0.0,
        clip_skip=params.get("clip_skip"),
        hires=hires if isinstance(hires, Mapping) else None,
        version=info.get("version") or None,
    )


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


def with_source_text(png: bytes, params: Mapping[str, Any]) -> bytes:
    """`png` with the source images' chunk (img2img, inpaint, upscale), or as it is."""
    source = source_images_text(params)
    return png if source is None else _with_text_after_ihdr(png, SOURCE_TEXT_KEY, source)


def _with_text_after_ihdr(data: bytes, key: str, value: str) -> bytes:
    """The PNG `data` with a text chunk inserted after IHDR: no pixel is decoded."""
    ihdr_end = 8 + 12 + int.from_bytes(data[8:12], "big")
    return data[:ihdr_end] + _text_chunk(key, value) + data[ihdr_end:]
