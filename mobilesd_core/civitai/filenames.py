"""Safe file names for downloaded models: a name from Civitai is untrusted input.

A name (from `files[].name` or a Content-Disposition header) becomes a single path component:
basename only, no `..`, no control or Windows-forbidden characters, no leading dot (hidden files
are skipped by the library scan), no Windows reserved device name, at most `MAX_NAME_BYTES` of
UTF-8 with the extension kept, and an extension the library recognises. `inside` then refuses
any resolved path that would leave the target folder (a symlinked subfolder, say).
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

# 255 is the usual file system limit; the margin leaves room for `.part` and for sidecars
# (`<stem>.civitai.info`, `<stem>.preview.jpeg`), whose suffixes are longer than `.safetensors`.
MAX_NAME_BYTES = 240
_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³]|conin\$|conout\$)$", re.I)
# Civitai's metadata.format -> the extension such a file has.
FORMAT_EXTENSIONS = {"safetensor": ".safetensors", "pickletensor": ".ckpt", "gguf": ".gguf"}


class UnsafePath(ValueError):
    """A resolved path left the folder it must stay in."""


def _truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, never inside a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def safe_component(raw: str | None, *, fallback: str) -> str:
    """One safe path component (a folder or file name) from untrusted text."""
    text = unicodedata.normalize("NFC", raw or "")
    # Basename only, whichever separator the sender used.
    text = re.split(r"[/\\]", text)[-1]
    text = _FORBIDDEN.sub("_", text)
    # Leading dots hide a file (and `.` alone is the folder); trailing dots and spaces are
    # dropped by Windows, so two names would collide on a share.
    text = text.strip().lstrip(".").rstrip(". ")
    text = text.replace("..", "_")
    stem = text.split(".", 1)[0]
    if _RESERVED.match(stem.strip()):
        text = "_" + text
    text = _truncate(text, MAX_NAME_BYTES).rstrip(". ")
    return text or fallback


def safe_filename(
    raw: str | None, *, extensions: frozenset[str], default_ext: str, fallback_stem: str
) -> str:
    """A safe model file name whose extension is one of `extensions` (else `default_ext` is
    appended), at most MAX_NAME_BYTES long with the extension kept."""
    name = safe_component(raw, fallback=fallback_stem + default_ext)
    stem, ext = os.path.splitext(name)
    if ext.lower() not in extensions:
        stem, ext = name, default_ext
    stem = _truncate(stem, MAX_NAME_BYTES - len(ext.encode("utf-8"))).rstrip(". ")
    if not stem or _RESERVED.match(stem):
        stem = f"_{stem}" if stem else fallback_stem
    return stem + ext


def default_extension(metadata: dict[str, object] | None, extensions: frozenset[str]) -> str:
    fmt = str((metadata or {}).get("format") or "").lower()
    ext = FORMAT_EXTENSIONS.get(fmt, ".safetensors")
    if ext == ".ckpt" and ".ckpt" not in extensions:
        ext = ".pt"
    return ext if ext in extensions else ".safetensors"


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, resolved, or UnsafePath when that leaves `folder`."""
    root = folder.resolve()
    target = (root / name).resolve()
    if target.parent != root:
        raise UnsafePath(f"{name!r} would leave {root}")
    return target


def free_name(folder: Path, name: str, taken: set[str]) -> str:
    """`name`, or `stem_2.ext`, `stem_3.ext`... : the first that is neither on disk (nor its
    `.part`) nor in `taken` (names other downloads will write)."""
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while (
        candidate in taken
        or (folder / candidate).exists()
        or (folder / (candidate + ".part")).exists()
    ):
        n += 1
        suffix = f"_{n}"
        candidate = _truncate(stem, MAX_NAME_BYTES - len((suffix + ext).encode())) + suffix + ext
    return candidate


_DISPOSITION_STAR = re.compile(r"filename\*\s*=\s*([^;]+)", re.I)
_DISPOSITION_PLAIN = re.compile(r'filename\s*=\s*("(?:\\.|[^"\\])*"|[^;]+)', re.I)


def disposition_filename(header: str | None) -> str | None:
    """The file name of a Content-Disposition header (RFC 6266): `filename*=UTF-8''...` wins
    over `filename="..."`. Untrusted: pass it through `safe_filename`."""
    if not header:
        return None
    star = _DISPOSITION_STAR.search(header)
    if star:
        value = star.group(1).strip()
        charset, _, rest = value.partition("'")
        _, _, encoded = rest.partition("'")
        if encoded:
            try:
                return unquote(encoded, encoding=charset or "utf-8", errors="strict")
            except (LookupError, UnicodeDecodeError):
                pass
    plain = _DISPOSITION_PLAIN.search(header)
    if plain:
        value = plain.group(1).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        return value or None
    return None
