"""Images in, float arrays out: PNG / TIFF / JPEG / BMP, 8 or 16 bit, MVTec layout or a plain folder.

Every image becomes an RGB float32 array (3, S, S) in [0, 1] at the model's input size: one batch
format (N, 3, S, S) for all detectors and for the exported ONNX graphs, which turn it into grayscale
themselves where the model wants it (the VAE, PCA). Grayscale files are replicated to three channels,
so nothing is lost. Resizing is done here (PIL, antialiased bilinear) because the files of one batch
may differ in size; everything after it happens inside the model.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from fabguard.errors import InputError
from fabguard.params import POSITIVE_INT, check, check_memory

EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
FORMATS = ("PNG", "TIFF", "JPEG", "BMP")
TIFF_EXTENSIONS = (".tif", ".tiff")
NORMAL = "good"  # MVTec's name for the defect-free class


def to_unit_float(array: np.ndarray, where: str) -> np.ndarray:
    """Pixel values as float32 in [0, 1]: uint8 / 255, uint16 / 65535, floats must already be in [0, 1]."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype in (np.int32, np.int64) and array.size and array.min() >= 0 and array.max() <= 65535:
        return array.astype(np.float32) / 65535.0  # PIL opens some 16-bit files as 32-bit integers
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise InputError(f"{where}: image contains NaN or infinite values")
        if values.size and (values.min() < 0.0 or values.max() > 1.0):
            raise InputError(
                f"{where}: float image values must lie in [0, 1], got [{values.min():.4g}, {values.max():.4g}]"
            )
        return values
    raise InputError(f"{where}: unsupported pixel type {array.dtype} (use 8- or 16-bit integers or floats in [0, 1])")


def to_rgb(array: np.ndarray, where: str) -> np.ndarray:
    """(H, W), (H, W, 1|2|3|4) or planar (3|4, H, W) -> (3, H, W); an alpha channel is dropped. A view of
    ``array``, read-only: a grey image's three channels are one plane (stride 0), which :func:`resize` sees
    without comparing them, and which is not copied three times per request."""
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar TIFF
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"{where}: expected a grayscale or RGB(A) image, got an array of shape {array.shape}")
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise InputError(f"{where}: image of size {array.shape[1]}x{array.shape[0]} is too small")
    colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
    return np.broadcast_to(colour, colour.shape[:2] + (3,)).transpose(2, 0, 1)


def resize(chw: np.ndarray, size: int) -> np.ndarray:
    """Bilinear, antialiased resize of a float (C, H, W) array to (C, size, size)."""
    if chw.shape[1:] == (size, size):
        return np.ascontiguousarray(chw, dtype=np.float32)
    # a grey image replicated to three channels (most inspection images) is resized once: a third of the
    # time, and the comparison costs a few percent of one resize (none for :func:`to_rgb`'s shared plane)
    grey = len(chw) > 1 and (chw.strides[0] == 0 or all(np.array_equal(chw[0], c) for c in chw[1:]))
    channels = [
        np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
        for c in (chw[:1] if grey else chw)
    ]
    out = np.clip(np.stack(channels), 0.0, 1.0)
    return np.repeat(out, len(chw), axis=0) if grey else out


def prepare(array: np.ndarray, size: int, where: str = "array") -> np.ndarray:
    """One image as a numpy array (any supported layout and pixel type) -> (3, size, size) float32 in [0, 1]."""
    check("size", size, POSITIVE_INT, owner="image loading")
    return resize(to_rgb(to_unit_float(np.asarray(array), where), where), size)


def decode(source: str | os.PathLike | bytes, where: str | None = None) -> np.ndarray:
    """Pixel array of one image file or of raw encoded bytes, in the file's own pixel type."""
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    where = where or ("bytes" if is_bytes else str(source))
    if not is_bytes:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{where}: no such image file")
        if path.suffix.lower() not in EXTENSIONS:
            raise InputError(f"{where}: unsupported image type {path.suffix!r} (supported: {', '.join(EXTENSIONS)})")
        data = path.read_bytes()
    else:
        data = bytes(source)
    if not data:
        raise InputError(f"{where}: cannot decode image: empty (0 bytes)")
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _decode_tiff(data, where)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGB")
            return np.asarray(image)
    except UnidentifiedImageError:  # its message names PIL's in-memory buffer, not the file
        raise InputError(f"{where}: cannot decode image: not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} file, "
                         "or a damaged one") from None
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{where}: cannot decode image ({exc})") from None


def open_tiff(data: bytes):
    """``tifffile.TiffFile`` over ``data``, read lazily: the LSM and NDPI readers, which walk every page when
    the file is opened, are off (they are microscope formats, no inspection camera's)."""
    import tifffile

    return tifffile.TiffFile(io.BytesIO(data), is_lsm=False, is_ndpi=False)


def tiff_page(tiff, where: str):
    """The one page of an :func:`open_tiff` file; refused when it has none or more than one, found without
    counting the pages: that walks the whole chain of them, and a crafted file of 150,000 tiny pages took
    seconds of CPU to count."""
    try:
        first = tiff.pages.first
    except IndexError:
        raise InputError(f"{where}: cannot decode TIFF (no image in the file)") from None
    if tiff.pages.is_multipage:
        raise InputError(f"{where}: multi-page TIFF is not supported (one image per file)")
    return first


def _decode_tiff(data: bytes, where: str) -> np.ndarray:
    try:
        with open_tiff(data) as tiff:
            return tiff_page(tiff, where).asarray()
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InputError(f"{where}: cannot decode TIFF ({exc})") from None


def load_image(source: str | os.PathLike | bytes, size: int, where: str | None = None) -> np.ndarray:
    """One image file or raw encoded bytes -> (3, size, size) float32 in [0, 1]; ``where`` names it in
    errors (default: the path, or "bytes")."""
    where = where or ("bytes" if isinstance(source, (bytes, bytearray, memoryview)) else str(source))
    return prepare(decode(source, where), size, where)


def load_images(sources: Sequence[str | os.PathLike | bytes], size: int) -> np.ndarray:
    """Several images -> (N, 3, size, size) float32 batch; an error names the file, or the item number of
    raw bytes."""
    if len(sources) == 0:
        raise InputError("no images given")
    return np.stack([load_image(s, size, f"bytes item {i}" if isinstance(s, (bytes, bytearray, memoryview))
                                else None) for i, s in enumerate(sources)])


def load_mask(path: Path, size: int) -> np.ndarray:
    """A ground-truth mask (any non-zero pixel is defect) -> (size, size) bool, resized nearest-neighbour."""
    pixels = decode(path)
    if pixels.ndim == 3:
        pixels = pixels.max(axis=-1)
    mask = Image.fromarray((pixels > 0).astype(np.uint8) * 255)
    return np.asarray(mask.resize((size, size), Image.NEAREST)) > 0


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted; other files are ignored, none at all is an error."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(EXTENSIONS)}) in this folder")
    return files


@dataclass
class ImageSet:
    """Images with what is known about them. ``labels`` 1 = defective; ``masks`` only for labelled test sets."""

    images: np.ndarray  # (N, 3, S, S) float32 in [0, 1]
    paths: list[str]
    labels: np.ndarray  # (N,) int
    defect_types: list[str]
    masks: np.ndarray | None = None  # (N, S, S) bool

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray) -> "ImageSet":
        index = np.asarray(index)
        return ImageSet(
            self.images[index],
            [self.paths[i] for i in index],
            self.labels[index],
            [self.defect_types[i] for i in index],
            None if self.masks is None else self.masks[index],
        )


def is_mvtec(root: Path) -> bool:
    return (root / "train" / NORMAL).is_dir() or (root / "test").is_dir()


def load_dataset(root: str | os.PathLike, size: int, part: str = "train", progress: bool = False) -> ImageSet:
    """Images of a dataset folder at the model input size.

    ``part="train"``: the normal training images: ``train/good`` of an MVTec-layout folder, or every image
    directly inside a plain folder. ``part="test"``: every ``test/<type>`` image of an MVTec-layout folder,
    label 1 unless the type is ``good``, with its ``ground_truth/<type>/<name>_mask.png``.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    entries = dataset_entries(root, part)
    check_memory(4.0 * len(entries) * (3 + (part == "test")) * size ** 2,
                 f"{len(entries)} images of {root} at {size}x{size}", "use a smaller size")
    images, masks = [], []
    for path, kind, mask in tqdm(entries, desc=f"loading {root.name}/{part}", disable=not progress, leave=False):
        images.append(load_image(path, size))
        if part == "test":
            masks.append(load_mask(mask, size) if mask is not None else np.zeros((size, size), bool))
    return ImageSet(
        images=np.stack(images),
        paths=[str(p) for p, _, _ in entries],
        labels=np.array([int(k != NORMAL) for _, k, _ in entries]),
        defect_types=[k for _, k, _ in entries],
        masks=np.stack(masks) if part == "test" else None,
    )


def dataset_entries(root: str | os.PathLike, part: str = "train") -> list[tuple[Path, str, Path | None]]:
    """(image, defect type, mask or None) of every image of a dataset part, without reading any image:
    what :func:`load_dataset` will load, so its size can be checked first."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such dataset folder")
    if part not in ("train", "test"):
        raise InputError(f"dataset part must be 'train' or 'test', got {part!r}")
    entries: list[tuple[Path, str, Path | None]] = []
    if part == "train":
        folder = root / "train" / NORMAL if is_mvtec(root) else root
        entries = [(p, NORMAL, None) for p in list_images(folder)]
    else:
        if not (root / "test").is_dir():
            raise InputError(f"{root}: a labelled test set needs the MVTec layout test/<type>/ (with ground_truth/)")
        types = sorted(d.name for d in (root / "test").iterdir() if d.is_dir())
        if not types:
            raise InputError(f"{root / 'test'}: no defect-type folders")
        for kind in types:
            for path in list_images(root / "test" / kind):
                mask = None
                if kind != NORMAL:
                    mask = root / "ground_truth" / kind / f"{path.stem}_mask.png"
                    if not mask.is_file():
                        raise InputError(f"{path}: missing ground-truth mask {mask}")
                entries.append((path, kind, mask))
    return entries


def check_batch(images: np.ndarray, size: int | None = None, where: str = "images") -> np.ndarray:
    """A model batch must be float (N, 3, S, S), finite, in [0, 1]; returns it as contiguous float32."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise InputError(f"{where}: expected a batch of shape (N, 3, S, S), got {images.shape}")
    if size is not None and images.shape[2] != size:
        raise InputError(f"{where}: expected images of size {size}x{size}, got {images.shape[2]}x{images.shape[3]}")
    if len(images) == 0:
        raise InputError(f"{where}: empty batch")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if not np.isfinite(images).all():
        raise InputError(f"{where}: batch contains NaN or infinite values")
    if images.min() < 0.0 or images.max() > 1.0:
        raise InputError(f"{where}: pixel values must lie in [0, 1]")
    return images


def split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random train / validation index split; both parts are non-empty."""
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"validation fraction must be in (0, 1), got {val_fraction}")
    if n < 2:
        raise InputError(f"need at least 2 normal images to split into train and validation, got {n}")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def fingerprint(images: np.ndarray) -> str:
    """Short SHA-256 of a preprocessed batch: which training data a model saw."""
    digest = hashlib.sha256(str(images.shape).encode())
    digest.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]
