"""preprocess_images: torchvision-style resize + center crop, scale, mean/std, grey, layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgecnn.errors import BadInput
from edgecnn.runtime import InputInfo, preprocess_images
from edgecnn.runtime.preprocess import resize_and_crop

RGB = InputInfo(shape=[3, 224, 224])


def coordinates_image(height: int, width: int) -> np.ndarray:
    """Pixel (y, x) holds (y, x, y + x) mod 256, so a crop's offset is readable from it."""
    y, x = np.mgrid[0:height, 0:width]
    return (np.stack([y, x, y + x], axis=-1) % 256).astype(np.uint8)


def test_imagenet_recipe_is_resize_256_then_center_crop_224():
    """torchvision: Resize(256) makes 500x375 -> 341x256 (int(256*500/375)); CenterCrop(224)
    starts at left round(117/2) = 58 (round half to even), top round(32/2) = 16."""
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), np.uint8))
    expected = picture.resize((341, 256), Image.BILINEAR).crop((58, 16, 282, 240))
    got = resize_and_crop(picture, 224, 224)
    assert got.size == (224, 224)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    # A portrait image: the width decides the scale.
    assert resize_and_crop(picture.transpose(Image.TRANSPOSE), 224, 224).size == (224, 224)


def test_center_crop_offsets_and_normalization_by_formula():
    """With crop_fraction 1 a 30x40 image is not resized for a 30x30 model, only cropped at
    left 5; the values are (pixel / 255 - mean) / std per channel, in NCHW."""
    info = InputInfo(shape=[3, 30, 30], mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 0.125])
    image = coordinates_image(30, 40)
    batch = preprocess_images(image, info, crop_fraction=1.0)
    assert batch.shape == (1, 3, 30, 30) and batch.dtype == np.float32
    crop = image[:, 5:35].astype(np.float64)
    expected = ((crop / 255 - np.array(info.mean)) / np.array(info.std)).transpose(2, 0, 1)
    np.testing.assert_allclose(batch[0], expected, rtol=1e-6, atol=1e-6)


def test_grey_models_get_luma_and_nhwc_layout_is_honoured():
    image = coordinates_image(16, 16)
    grey = InputInfo(shape=[1, 16, 16], color="GRAY", mean=[0.5], std=[0.5])
    batch = preprocess_images([image, image], grey, crop_fraction=1.0)
    luma = np.asarray(Image.fromarray(image).convert("L"), dtype=np.float64)
    assert batch.shape == (2, 1, 16, 16)
    np.testing.assert_allclose(batch[1, 0], (luma / 255 - 0.5) / 0.5, atol=1e-6)
    nhwc = InputInfo(shape=[3, 16, 16], layout="NHWC")
    nchw = preprocess_images(image, InputInfo(shape=[3, 16, 16]), crop_fraction=1.0)
    np.testing.assert_array_equal(preprocess_images(image, nhwc, crop_fraction=1.0),
                                  nchw.transpose(0, 2, 3, 1))


def test_rgba_grey_and_single_channel_arrays_are_images():
    rgb = coordinates_image(8, 8)
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 255, np.uint8)], axis=-1)
    info = InputInfo(shape=[3, 8, 8])
    np.testing.assert_array_equal(preprocess_images(rgba, info, crop_fraction=1.0),
                                  preprocess_images(rgb, info, crop_fraction=1.0))
    grey = rgb[:, :, 0]
    np.testing.assert_array_equal(preprocess_images(grey, info, crop_fraction=1.0),
                                  preprocess_images(grey[:, :, None], info, crop_fraction=1.0))


@pytest.mark.parametrize("images, message", [
    (np.zeros((8, 8, 3), np.float32), "must be uint8"),
    (np.zeros((8, 8, 2), np.uint8), "must be uint8 HxW or HxWxC with C in"),
    (np.zeros((8,), np.uint8), "expected an HxWxC image or an NxHxWxC batch"),
    ([], "no images given"),
    ([42], "expected an image path, a PIL image or a uint8 array, got int"),
])
def test_bad_images(images, message):
    with pytest.raises(BadInput, match=message):
        preprocess_images(images, RGB)


def test_bad_crop_fraction_and_metadata():
    with pytest.raises(BadInput, match="crop_fraction must be in"):
        preprocess_images(coordinates_image(8, 8), RGB, crop_fraction=0)
    with pytest.raises(BadInput, match=r"takes 3 channels \(GRAY\)"):
        preprocess_images(coordinates_image(8, 8), InputInfo(shape=[3, 8, 8], color="GRAY"))
