"""Request images: the pixel count checked from the header before decoding (a decompression bomb is
refused without being expanded), then decoded by :mod:`fabguard.anomaly.images`; heatmap overlays."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

from fabguard.errors import InputError


class UnsupportedImage(InputError):
    """Bytes that are not a PNG or TIFF image this service decodes (HTTP 415)."""


class TooManyPixels(InputError):
    """An image whose header declares more pixels than allowed (HTTP 413)."""


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def header_pixels(data: bytes) -> int:
    """Width x height (x samples) that the image header declares, read without decoding pixel data; a
    TIFF of more than one page is refused here, before its pages are walked."""
    if data[:4] in TIFF_MAGIC:
        from fabguard.anomaly.images import open_tiff, tiff_page

        try:
            with open_tiff(data) as tiff:
                return int(np.prod(tiff_page(tiff, "image").shape))
        except InputError as exc:
            raise UnsupportedImage(str(exc)) from None
        except Exception as exc:  # tifffile raises many types for damaged files
            raise UnsupportedImage(f"image: cannot read the TIFF header ({exc})") from None
    if data[:8] != PNG_MAGIC:
        raise UnsupportedImage("image: not a PNG or TIFF file (send the raw PNG or TIFF bytes)")
    if len(data) < 24 or data[12:16] != b"IHDR":  # the PNG standard puts IHDR first, width and height at 16
        raise UnsupportedImage("image: damaged PNG (no IHDR header chunk)")
    width, height = struct.unpack(">II", data[16:24])
    return width * height


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """The image as (3, H, W) float32 in [0, 1], refused with a 4xx-mapped error when it is not a PNG or
    TIFF, larger than ``max_pixels``, or damaged."""
    from fabguard.anomaly.images import decode as decode_pixels, to_rgb, to_unit_float

    pixels = header_pixels(data)
    if pixels > max_pixels:
        raise TooManyPixels(f"image: {pixels} pixels declared, the limit is {max_pixels}")
    try:
        return to_rgb(to_unit_float(decode_pixels(data, "image"), "image"), "image")
    except InputError as exc:
        raise UnsupportedImage(str(exc)) from None


def heatmap_planes(pixels: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """What an inspection's heatmap overlay is drawn from, in 8 bits: the model's input in grey and the
    heatmap relative to its own maximum, (2, S, S) uint8. Kept per inspection instead of the PNG: saving
    it takes a fraction of a PNG encoding's time (a 256 x 256 overlay takes ~8 ms to encode), which would
    otherwise compete with the next request; the PNG is drawn when someone asks for it."""
    grey = np.clip(pixels.mean(axis=0), 0, 1)
    alpha = np.clip(np.asarray(heatmap, np.float32) / max(float(np.max(heatmap)), 1e-12), 0, 1)
    return np.round(np.stack([grey, alpha]) * 255).astype(np.uint8)


def overlay_png(planes: np.ndarray) -> bytes:
    """The image in grey with the heatmap in red on top (:func:`heatmap_planes`), opacity relative to the
    heatmap's maximum (capped at 0.7): it shows where the image differs most, not how much (the score
    says that)."""
    grey, alpha = planes.astype(np.float32) / 255
    alpha *= 0.7
    rgb = np.stack([grey * (1 - alpha) + alpha, grey * (1 - alpha), grey * (1 - alpha)], axis=-1)
    out = io.BytesIO()
    Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(out, format="PNG", compress_level=1)
    return out.getvalue()
