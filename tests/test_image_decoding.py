"""How image files are decoded (docs/runtime.md, "Image decoding"): one test per decision."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_one_line_error
from PIL import Image
from tiny_models import tiny_model

from edgecnn.errors import BadInput
from edgecnn.runtime.preprocess import load_image


def picture(height=12, width=20, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def pixels(path, color="RGB", **options) -> np.ndarray:
    return np.asarray(load_image(path, color, **options))


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(picture())
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.png"
    image.save(path, exif=exif)
    loaded = pixels(path)
    assert loaded.shape == (20, 12, 3)  # as a viewer shows it: portrait
    np.testing.assert_array_equal(loaded, np.asarray(image.transpose(Image.Transpose.ROTATE_270)))


def test_cmyk_becomes_rgb(tmp_path):
    rgb = picture()
    path = tmp_path / "print.tif"
    Image.fromarray(rgb).convert("CMYK").save(path)
    np.testing.assert_array_equal(pixels(path), rgb)


def test_alpha_is_dropped_and_palettes_are_expanded(tmp_path):
    rgb = picture()
    alpha = np.zeros((12, 20, 1), np.uint8)  # fully transparent: the colours still count
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1)).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(pixels(tmp_path / "rgba.png"), rgb)
    grey = rgb[:, :, 0]
    Image.fromarray(np.stack([grey, grey], axis=-1), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(pixels(tmp_path / "la.png"), np.stack([grey] * 3, axis=-1))
    palette = Image.fromarray(rgb).quantize(16)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(pixels(tmp_path / "p.png"), np.asarray(palette.convert("RGB")))


def test_grey_is_replicated_into_rgb_and_rgb_is_luma_for_grey_models(tmp_path):
    grey = picture()[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(pixels(tmp_path / "grey.png"), np.stack([grey] * 3, axis=-1))
    Image.fromarray(picture()).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(pixels(tmp_path / "rgb.png", "GRAY"),
                                  np.asarray(Image.fromarray(picture()).convert("L")))


def test_animations_give_their_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    for name in ("anim.gif", "anim.webp"):
        assert tuple(pixels(tmp_path / name)[4, 4]) == (255, 0, 0), name


def test_pixel_bound_is_checked_from_the_header(cli, tmp_path):
    Image.fromarray(picture(40, 40)).save(tmp_path / "big.png")
    Image.fromarray(picture(10, 10)).save(tmp_path / "small.png")
    with pytest.raises(BadInput, match="40x40 is 1600 pixels, over max_pixels=1000"):
        load_image(tmp_path / "big.png", max_pixels=1000)
    model = tiny_model(tmp_path / "tiny.onnx")
    assert_one_line_error(cli("run", model.path, tmp_path / "big.png", "--max-pixels", "1000"),
                          2, "big.png", "over --max-pixels 1000")
    result = cli("run", model.path, tmp_path, "--max-pixels", "1000", "--json")
    assert result.code == 3  # the small one ran, the big one is listed
    failures = json.loads(result.stdout)["failures"]
    assert [failure["image"] for failure in failures] == [str(tmp_path / "big.png")]
    assert_one_line_error(cli("run", model.path, tmp_path, "--max-pixels", "0"), 2,
                          "--max-pixels must be an integer >= 1")
