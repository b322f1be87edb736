"""Image bytes for tests: small PNGs with or without infotext, and decompression bombs."""

from __future__ import annotations

import io
import zlib

from PIL import Image, PngImagePlugin


def png_bytes(
    width: int = 64,
    height: int = 72,
    color: tuple[int, int, int] = (200, 40, 40),
    parameters: str | None = None,
    mode: str = "RGB",
) -> bytes:
    im = Image.new(mode, (width, height), color if mode == "RGB" else (*color, 128))
    pnginfo = None
    if parameters is not None:
        pnginfo = PngImagePlugin.PngInfo()
        pnginfo.add_text("parameters", parameters)
    out = io.BytesIO()
    im.save(out, format="PNG", pnginfo=pnginfo)
    return out.getvalue()


def blank_png(width: int, height: int) -> bytes:
    """A grey-scale PNG of zeros: a few hundred KB on disk, width x height bytes once decoded
    (a decompression bomb). Built without decoding or holding those bytes: the same deflate
    block repeated (a full flush resets the compressor, so each block stands alone)."""
    row = bytes(1 + width)  # filter byte 0, then zeros
    per_block = max(1, (1 << 20) // len(row))
    blocks, rest = divmod(height, per_block)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(row * per_block) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    end = tail.compress(row * rest) + tail.flush()
    total = len(row) * height
    adler = (total % 65521) << 16 | 1  # of all-zero bytes: a = 1, b = their count
    idat = b"\x78\x01" + block * blocks + end + adler.to_bytes(4, "big")

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(body, zlib.crc32(kind))
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
