"""Image loading: formats, bit depths, layouts, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from fabguard.anomaly.augment import Augmentation
from fabguard.anomaly.images import check_batch, fingerprint, load_dataset, load_image, split
from fabguard.errors import InputError
from fabguard.runtime.parity import float32_bound


def _png(array, path):
    Image.fromarray(array).save(path)
    return path


def test_8bit_png_gray_and_rgb_scale_to_unit_range(tmp_path):
    gray = np.full((10, 12), 51, np.uint8)
    out = load_image(_png(gray, tmp_path / "g.png"), 8)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    # 51 / 255 rounded to float32 once, then a 12x10 -> 8x8 resize: two passes of at most 5 taps whose
    # weights sum to 1 (scale 0.2), each rounded to float32
    np.testing.assert_allclose(out, 0.2, rtol=0, atol=float32_bound(0.2, 1) + 2 * float32_bound(0.2, 5))
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    out = load_image(_png(rgb, tmp_path / "c.png"), 8)
    np.testing.assert_allclose(out[0], 1.0)
    np.testing.assert_allclose(out[1:], 0.0)


def test_16bit_png_and_tiff_use_full_16bit_range(tmp_path):
    a = np.full((8, 8), 32768, np.uint16)
    a[0, 0] = 65535
    png = load_image(_png(a, tmp_path / "a.png"), 8)
    tifffile.imwrite(tmp_path / "a.tif", a)
    tif = load_image(tmp_path / "a.tif", 8)
    tifffile.imwrite(tmp_path / "big_endian.tif", a, byteorder=">")
    big_endian = load_image(tmp_path / "big_endian.tif", 8)
    for out in (png, tif, big_endian):
        assert out[0, 0, 0] == 1.0  # 65535 / 65535, exact
        assert out[0, 4, 4] == pytest.approx(32768 / 65535, rel=0, abs=float32_bound(0.5, 1))  # one rounding


def test_rgb_16bit_tiff_planar_and_float_tiff(tmp_path):
    planar = np.zeros((3, 16, 16), np.uint16)
    planar[2] = 65535
    tifffile.imwrite(tmp_path / "p.tif", planar, photometric="rgb", planarconfig="separate")
    out = load_image(tmp_path / "p.tif", 16)
    np.testing.assert_allclose(out[2], 1.0)
    np.testing.assert_allclose(out[:2], 0.0)
    tifffile.imwrite(tmp_path / "f.tif", np.full((16, 16), 0.25, np.float32))
    np.testing.assert_allclose(load_image(tmp_path / "f.tif", 16), 0.25)


def test_resize_and_bytes_equal_file(tmp_path):
    rng = np.random.default_rng(0)
    path = _png(rng.integers(0, 256, (40, 30), dtype=np.uint8), tmp_path / "r.png")
    from_file = load_image(path, 16)
    from_bytes = load_image(path.read_bytes(), 16)
    assert from_file.shape == (3, 16, 16)
    np.testing.assert_array_equal(from_file, from_bytes)


@pytest.mark.parametrize("grey", [True, False])
def test_resize_of_a_grey_image_resizes_one_channel_with_the_same_result(grey):
    """The grey shortcut must equal resizing each channel (bit for bit: the same PIL call on the same data);
    an image whose channels differ in one pixel takes the per-channel path."""
    from fabguard.anomaly.images import resize

    rng = np.random.default_rng(1)
    chw = np.repeat(rng.random((1, 40, 30), dtype=np.float32), 3, axis=0)
    if not grey:
        chw[2, 5, 5] = 1.0 - chw[2, 5, 5]
    per_channel = np.clip(np.stack([np.asarray(Image.fromarray(c, mode="F").resize((16, 16), Image.BILINEAR))
                                    for c in chw]), 0.0, 1.0)
    out = resize(chw, 16)
    np.testing.assert_array_equal(out, per_channel)
    assert out.shape == (3, 16, 16) and out.flags.c_contiguous
    assert np.array_equal(out[0], out[2]) == grey


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n garbage", "cannot decode"),
    (b"II*\x00garbage-tiff", "cannot decode TIFF"),
    (b"", "cannot decode"),
])
def test_corrupt_files_raise_input_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / ("bad.tif" if content.startswith(b"II") else "bad.png")
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        load_image(path, 8)
    assert str(path) in str(err.value)


def test_unsupported_extension_missing_file_nan_and_channels(tmp_path):
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(InputError, match="unsupported image type"):
        load_image(tmp_path / "x.gif", 8)
    with pytest.raises(InputError, match="no such image file"):
        load_image(tmp_path / "missing.png", 8)
    nan = np.full((8, 8), np.nan, np.float32)
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    with pytest.raises(InputError, match="NaN"):
        load_image(tmp_path / "nan.tif", 8)
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((8, 8, 5), np.uint8), planarconfig="contig")
    with pytest.raises(InputError, match="shape"):
        load_image(tmp_path / "five.tif", 8)
    tifffile.imwrite(tmp_path / "big.tif", np.full((8, 8), 2.0, np.float32))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        load_image(tmp_path / "big.tif", 8)
    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((2, 8, 8), np.uint8), photometric="minisblack",
                     metadata=None)
    with pytest.raises(InputError, match="multi-page"):
        load_image(tmp_path / "pages.tif", 8)


def test_mvtec_layout_labels_and_masks(synthetic_root):
    test = load_dataset(synthetic_root, 32, "test")
    assert set(test.defect_types) == {"good", "scratch", "particle"}
    assert test.images.shape == (len(test), 3, 32, 32)
    good = np.array(test.defect_types) == "good"
    assert (test.labels == ~good).all()
    assert not test.masks[good].any()
    assert all(m.any() for m in test.masks[~good])  # every defect has a non-empty mask
    train = load_dataset(synthetic_root, 32, "train")
    assert (train.labels == 0).all() and train.masks is None


def test_plain_folder_and_its_errors(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    with pytest.raises(InputError, match="no images"):
        load_dataset(folder, 8, "train")
    (folder / "notes.txt").write_text("ignored")
    _png(np.zeros((8, 8), np.uint8), folder / "a.png")
    assert len(load_dataset(folder, 8, "train")) == 1
    with pytest.raises(InputError, match="MVTec layout"):
        load_dataset(folder, 8, "test")
    with pytest.raises(InputError, match="no such dataset folder"):
        load_dataset(tmp_path / "nope", 8)


def test_missing_ground_truth_is_named(synthetic_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    victim = next((root / "ground_truth" / "scratch").iterdir())
    victim.unlink()
    with pytest.raises(InputError, match="missing ground-truth mask") as err:
        load_dataset(root, 16, "test")
    assert victim.name in str(err.value)


def test_split_is_seeded_disjoint_and_80_20():
    train, val = split(100, 0.2, seed=3)
    assert len(train) == 80 and len(val) == 20 and not set(train) & set(val)
    again = split(100, 0.2, seed=3)
    np.testing.assert_array_equal(train, again[0])
    assert not np.array_equal(val, split(100, 0.2, seed=4)[1])
    with pytest.raises(InputError):
        split(1, 0.2, 0)
    with pytest.raises(InputError):
        split(10, 1.0, 0)


def test_check_batch_rejects_bad_batches():
    good = np.zeros((2, 3, 8, 8), np.float32)
    assert check_batch(good, 8).shape == good.shape
    for bad, message in [(np.zeros((2, 1, 8, 8)), "shape"), (np.zeros((2, 3, 8, 8)), "size 4x4"),
                         (np.full((1, 3, 8, 8), np.nan), "NaN"), (np.full((1, 3, 8, 8), 2.0), r"\[0, 1\]")]:
        with pytest.raises(InputError, match=message):
            check_batch(bad, 4 if message == "size 4x4" else 8)


def test_fingerprint_changes_with_data():
    a = np.zeros((2, 3, 4, 4), np.float32)
    b = a.copy()
    b[0, 0, 0, 0] = 0.5
    assert fingerprint(a) == fingerprint(a.copy()) != fingerprint(b)


def test_augmentation_is_switchable_seeded_and_in_range():
    import torch

    batch = torch.rand(4, 3, 16, 16)
    assert Augmentation.preset("none")(batch, torch.Generator()) is batch
    flip = Augmentation(hflip=True)
    out = flip(batch, torch.Generator().manual_seed(0))
    for i in range(4):  # each image is either unchanged or mirrored
        assert torch.equal(out[i], batch[i]) or torch.equal(out[i], batch[i].flip(-1))
    wafer = Augmentation.preset("wafer")
    a = wafer(batch, torch.Generator().manual_seed(1))
    b = wafer(batch, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, batch)
    assert a.min() >= 0 and a.max() <= 1
    with pytest.raises(InputError, match="unknown augmentation"):
        Augmentation.preset("colour")
