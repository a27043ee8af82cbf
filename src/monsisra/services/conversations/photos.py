"""Photos posted to a conversation (often straight from a phone camera): turned upright,
resized, re-encoded without any metadata (EXIF, GPS, maker notes), with a thumbnail.

The original upload is never attached: only the cleaned copy is, so that a wound photo does
not carry the nurse's position or the phone's serial number to every participant.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps

PHOTO_TYPES = {"image/jpeg", "image/png", "image/webp", "image/gif", "image/heic", "image/heif", "image/tiff",
               "image/bmp"}
MAX_SIDE = 2048
THUMB_SIDE = 320
MAX_PIXELS = 80_000_000  # a decompression bomb is refused, not decoded


class BadPhoto(Exception):
    """The bytes are not an image Pillow can read."""


def _encode(img: Image.Image, keep_png: bool) -> tuple[bytes, str]:
    out = io.BytesIO()
    if keep_png:
        img.save(out, format="PNG", optimize=True)  # no info dict passed: no text chunks, no EXIF
        return out.getvalue(), "image/png"
    if img.mode not in ("RGB", "L"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        rgba = img.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        img = background
    img.save(out, format="JPEG", quality=85, optimize=True)  # no exif= argument: none written
    return out.getvalue(), "image/jpeg"


def clean(data: bytes, content_type: str) -> tuple[bytes, str, bytes]:
    """(cleaned image, its type, JPEG thumbnail) of a photo; :class:`BadPhoto` otherwise."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as src:
            src.load()
            img = ImageOps.exif_transpose(src)
    except Exception as exc:  # Pillow raises many types for bad input
        raise BadPhoto(str(exc)) from None
    # A fresh image holds the pixels only: no info, no EXIF, no ICC, no XMP copied over.
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if "A" in img.getbands() or img.mode == "P" else "RGB")
    pixels = Image.new(img.mode, img.size)
    pixels.paste(img)
    pixels.thumbnail((MAX_SIDE, MAX_SIDE))
    keep_png = content_type == "image/png"
    body, kind = _encode(pixels, keep_png)
    thumb = pixels.copy()
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    thumb_bytes, _ = _encode(thumb, False)
    return body, kind, thumb_bytes


def renamed(filename: str, content_type: str) -> str:
    stem = filename.rsplit(".", 1)[0] if "." in filename else filename
    return f"{stem or 'photo'}.{'png' if content_type == 'image/png' else 'jpg'}"
