"""Images -> the model's input tensor, from the model's metadata. Torch-free (numpy + Pillow).

``preprocess_images(images, input_info)`` does what a torchvision-style evaluation transform
does: resize (bilinear, keeping the aspect ratio) so the image covers the input size divided by
``crop_fraction``, center-crop to the input size, scale (e.g. /255), subtract the mean, divide by
the std, and lay the batch out as NCHW (or NHWC). The crop fraction comes from the metadata:
0.875 for the ImageNet models (a 224x224 model sees ``Resize(256) + CenterCrop(224)``, the
ImageNet evaluation recipe), 1.0 for full-frame inputs such as the MNIST-style models (the
shorter side is resized straight to the input size, no border lost).

Images are file paths, PIL images, or uint8 arrays (HxWxC with C = 1, 3 or 4, or HxW grey).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import stat
import struct
import warnings
from typing import Iterable, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgecnn.errors import BadInput, first_line, require_count
from edgecnn.runtime.files import file_kind
from edgecnn.runtime.metadata import COLOR_CHANNELS, MIN_CROP_FRACTION, InputInfo

# Resizing the whole image first (torchvision's order) up to this many pixels (48 MB of RGB).
MAX_RESIZED_PIXELS = 2**24
DEFAULT_CROP_FRACTION = InputInfo.crop_fraction  # ImageNet eval: Resize(256) + CenterCrop(224)
PIL_MODES = {"RGB": "RGB", "BGR": "RGB", "GRAY": "L"}  # BGR: RGB, channels reversed after
SIXTEEN_BIT = ("PNG", "PPM")  # formats whose "I" images hold at most 16 bits
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # 89,478,485 (Pillow's; about 9459 x 9459)
# The formats decoded: those whose header gives the size of what decoding makes, so that
# max_pixels holds (.ico: _icon_size). Pillow also opens ICNS, BLP and others, whose inner
# image it decodes at full size whatever their header said.
DECODED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA", "ICO",
                   "AVIF")
# _open refuses images over max_pixels itself, so Pillow's warning between its limit and twice
# it (then Image.open raises) would only add a second line to that error.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


def is_single_image(images) -> bool:
    """True for one image (path, PIL image, 2-D or 3-D array); False for a list or NHWC batch."""
    if isinstance(images, np.ndarray):
        return images.ndim in (2, 3)
    return isinstance(images, (str, os.PathLike, Image.Image))


def as_image_list(images) -> list:
    """One image or an iterable (or NHWC uint8 array) of them -> a list of single images."""
    if is_single_image(images):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise BadInput(f"expected an HxWxC image or an NxHxWxC batch, got an array of shape "
                       f"{images.shape}")
    # bytes iterate as ints; encoded image data is opened by the caller, e.g. with io.BytesIO
    if isinstance(images, (bytes, bytearray, memoryview)) or not isinstance(images, Iterable):
        raise BadInput(f"expected an image (path, PIL image or uint8 array) or a list of them, "
                       f"got {type(images).__name__}")
    return list(images)


def load_image(image: ImageLike, color: str = "RGB", *,
               max_pixels: int | None = None) -> Image.Image:
    """A PIL image in ``color``'s mode from a path, a PIL image or a uint8 array: RGB for "RGB"
    and "BGR" (``preprocess_images`` reverses the channels of BGR), luma for "GRAY"."""
    if color not in PIL_MODES:
        raise BadInput(f"unsupported color {color!r} in the model metadata (expected RGB, BGR "
                       "or GRAY)")
    if isinstance(image, Image.Image):
        picture = image
    elif isinstance(image, np.ndarray):
        picture = _from_array(image)
    elif isinstance(image, (str, os.PathLike)):
        picture = _open(image, max_pixels)
    else:
        raise BadInput(f"expected an image path, a PIL image or a uint8 array, got "
                       f"{type(image).__name__}")
    if picture.width == 0 or picture.height == 0:
        raise BadInput(f"expected an image of at least 1x1 pixels, got {picture.width}x"
                       f"{picture.height}")
    picture = _to_8_bit(picture)
    return picture if picture.mode == PIL_MODES[color] else picture.convert(PIL_MODES[color])


def _to_8_bit(picture: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images as 8-bit "L". Pillow's own conversion clips them to 255
    (a 16-bit PNG turns almost white), so 16-bit values are scaled down (0..65535 onto 0..255,
    rounded); 32-bit ones have no known range, so only values already in 0..255 are accepted.
    Pillow reads 16-bit RGB(A) PNGs as 8-bit already, and 16-bit grey ones as "I;16" (older
    versions as "I"); 16-bit PGMs as "I". A PNG or PGM holds at most 16 bits, so an "I" one is
    16-bit too."""
    if picture.mode.startswith("I;16") or (picture.mode == "I" and picture.format in SIXTEEN_BIT):
        return _band_by_band(picture, _16_bit_to_8)
    if picture.mode in ("I", "F"):
        def in_0_255(values: np.ndarray) -> np.ndarray:
            low, high = values.min(), values.max()  # NaN carries through both
            if not (low >= 0 and high <= 255):
                raise BadInput(f"expected 8-bit or 16-bit pixel values, got a 32-bit image "
                               f"(mode {picture.mode}) with values {low}..{high} outside "
                               "0..255; scale it to 8 bits first")
            return np.rint(values)

        return _band_by_band(picture, in_0_255)
    return picture


def _16_bit_to_8(values: np.ndarray) -> np.ndarray:
    wide = values.astype(np.uint32)
    wide += 128
    wide //= 257
    return wide  # round(v / 257)


_BAND_PIXELS = 2**18  # a band of rows at a time: a 9400 x 9400 image needs no wide copy


def _band_by_band(picture: Image.Image, to_0_255) -> Image.Image:
    """An "L" image of ``to_0_255`` applied to ``picture``'s values, a band of rows at a time,
    so the wider (16- or 32-bit) copies numpy makes stay a band's size."""
    width, height = picture.size
    rows = max(1, _BAND_PIXELS // width)
    eight_bit = np.empty((height, width), np.uint8)
    for top in range(0, height, rows):
        band = np.asarray(picture.crop((0, top, width, min(top + rows, height))))
        eight_bit[top:top + rows] = to_0_255(band)
    return Image.fromarray(eight_bit)


def _refuse_over(path, size: tuple[int, int] | None, limit: int) -> None:
    if size is not None and size[0] * size[1] > limit:
        raise BadInput(f"cannot read image {path}: {size[0]}x{size[1]} is {size[0] * size[1]} "
                       f"pixels, over max_pixels={limit}")


_ICON_MAGIC, _PNG_MAGIC = b"\0\0\1\0", b"\x89PNG\r\n\x1a\n"


def _icon_size(path) -> tuple[int, int] | None:
    """The largest image an .ico file holds, read from each entry's own header (the directory's
    sizes stop at 256 and need not be true), or None for a file that is not an icon."""
    with open(path, "rb") as handle:
        head = handle.read(6)
        if len(head) < 6 or head[:4] != _ICON_MAGIC:
            return None
        directory = handle.read(16 * struct.unpack("<H", head[4:])[0])
        largest = (0, 0)
        for entry in range(len(directory) // 16):
            handle.seek(struct.unpack_from("<I", directory, 16 * entry + 12)[0])
            header = handle.read(24)
            if header[:8] == _PNG_MAGIC and len(header) == 24:
                width, height = struct.unpack(">II", header[16:24])  # the PNG's IHDR
            elif len(header) >= 12:  # a bitmap: its height counts the AND mask too
                width, height = struct.unpack("<ii", header[4:12])
                width, height = abs(width), abs(height) // 2
            else:
                continue
            largest = max(largest, (width, height), key=lambda size: size[0] * size[1])
    return largest


def _open(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file as a viewer shows it (docs/runtime.md, "Image decoding"): the
    first frame of an animation, turned by its EXIF orientation; refused from its header alone
    when it has more than ``max_pixels`` (default Pillow's limit, DEFAULT_MAX_PIXELS)."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    require_count("max_pixels", limit)
    with contextlib.suppress(OSError):  # a missing file: Image.open's error, below
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a FIFO would block the read
            raise BadInput(f"cannot read image {path}: {file_kind(mode)}, not a regular file")
    try:
        _refuse_over(path, _icon_size(path), limit)  # Pillow decodes an icon in Image.open
        # Image.open reads the header only (and raises past twice Pillow's own limit).
        with Image.open(path, formats=_decoded_formats()) as picture:
            _refuse_over(path, picture.size, limit)
            picture.load()  # decode now (frame 0), so a truncated file fails here with its name
            ImageOps.exif_transpose(picture, in_place=True)
            return picture
    except BadInput:
        raise
    except FileNotFoundError:
        raise BadInput(f"image not found: {path}") from None
    except UnidentifiedImageError as error:
        raise BadInput(f"cannot read image {path}: {_other_format(path) or first_line(error)}"
                       ) from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise BadInput(f"cannot read image {path}: {first_line(error)}") from None


@functools.cache
def _decoded_formats() -> tuple[str, ...]:
    Image.init()  # registers the plugins of this Pillow
    return tuple(name for name in DECODED_FORMATS if name in Image.OPEN)


def _other_format(path) -> str | None:
    """What an image of a format edgecnn does not decode is (its header read, nothing
    decoded), or None for a file no format identifies."""
    try:
        with Image.open(path) as picture:
            name = picture.format
    except Exception:  # noqa: BLE001 - any plugin's failure: no format identifies it
        return None
    return (f"{name} is not a format edgecnn decodes (it decodes "
            f"{', '.join(_decoded_formats())})")


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (
            array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise BadInput(f"image arrays must be uint8 HxW or HxWxC with C in (1, 3, 4), got "
                       f"{array.dtype} with shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def resize_and_crop(picture: Image.Image, height: int, width: int,
                    crop_fraction: float = DEFAULT_CROP_FRACTION) -> Image.Image:
    """Resize (bilinear, aspect kept) to cover (H, W) / crop_fraction, then center-crop H x W.

    For a square input this is torchvision's ``Resize(floor(H / f))`` (shorter side) followed by
    ``CenterCrop(H)``, with the same rounding.
    """
    if not MIN_CROP_FRACTION <= crop_fraction <= 1:
        raise BadInput(f"crop_fraction must be in [{MIN_CROP_FRACTION}, 1], got {crop_fraction}")
    cover_h, cover_w = math.floor(height / crop_fraction), math.floor(width / crop_fraction)
    image_w, image_h = picture.size
    if cover_h / image_h >= cover_w / image_w:  # the height decides the scale
        new_h, new_w = cover_h, max(cover_w, int(cover_h * image_w / image_h))
    else:
        new_h, new_w = max(cover_h, int(cover_w * image_h / image_w)), cover_w
    top = int(round((new_h - height) / 2.0))
    left = int(round((new_w - width) / 2.0))
    if new_w * new_h > MAX_RESIZED_PIXELS:  # a 1 x 80,000 image: 256 x 20 million resized
        # Only the part kept is resized, from the same source area: the same sampling, up to
        # the rounding of the box's coordinates.
        scale_x, scale_y = image_w / new_w, image_h / new_h
        return picture.resize((width, height), Image.BILINEAR,
                              box=(left * scale_x, top * scale_y, (left + width) * scale_x,
                                   (top + height) * scale_y))
    if (new_w, new_h) != picture.size:
        picture = picture.resize((new_w, new_h), Image.BILINEAR)
    return picture.crop((left, top, left + width, top + height))


def check_image_channels(input_info: InputInfo, source: str = "model") -> None:
    """BadInput unless images can feed ``input_info``: RGB or BGR for 3 channels, GRAY for 1."""
    if COLOR_CHANNELS.get(input_info.color.upper()) != input_info.channels:
        raise BadInput(f"{source}: input {input_info.name!r} takes {input_info.channels} "
                       f"channels ({input_info.color}), and images give RGB or BGR (3) or GRAY "
                       "(1); feed it arrays (Engine.run) instead")


def preprocess_images(images: ImageLike | Iterable[ImageLike], input_info: InputInfo, *,
                      crop_fraction: float | None = None,
                      max_pixels: int | None = None) -> np.ndarray:
    """A float32 batch (N, C, H, W) (or (N, H, W, C) for an NHWC model) ready for the model.

    ``crop_fraction`` overrides the metadata's ``input_info.crop_fraction``.
    """
    if crop_fraction is None:
        crop_fraction = input_info.crop_fraction
    check_image_channels(input_info)
    color = input_info.color.upper()
    layout = input_info.layout.upper()
    if layout not in ("NCHW", "NHWC"):
        raise BadInput(f"unsupported layout {input_info.layout!r} in the model metadata")
    height, width = input_info.height_width
    pictures = [resize_and_crop(load_image(image, color, max_pixels=max_pixels), height, width,
                                crop_fraction) for image in as_image_list(images)]
    if not pictures:
        raise BadInput("no images given")
    batch = np.stack([np.asarray(picture, dtype=np.float32) for picture in pictures])
    batch = batch.reshape(len(pictures), height, width, input_info.channels)  # grey gets its C
    if color == "BGR":
        batch = batch[..., ::-1]
    mean = np.asarray(input_info.mean, dtype=np.float32)
    std = np.asarray(input_info.std, dtype=np.float32)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # Engine reports Inf
        batch = (batch / np.float32(input_info.scale) - mean) / std
    if layout == "NHWC":
        return np.ascontiguousarray(batch)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
