"""Hostile data files: arrays whose header declares more than the file holds, and FIFOs where
images or arrays are expected. Each is one line and exit 2, in bounded time and memory.

(The model file itself: tests/test_hostile_model_files.py.)
"""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from conftest import assert_one_line_error, run_console_script
from tiny_models import tiny_model

from edgecnn.errors import BadInput
from edgecnn.runtime import InputInfo, datasets
from edgecnn.runtime.datasets import check_inputs
from edgecnn.runtime.preprocess import _to_8_bit, preprocess_images

QUICK = 60  # seconds: a FIFO that is opened blocks; the test fails instead of hanging CI


def _npy_declaring(shape: tuple, payload: bytes = b"\0" * 64) -> bytes:
    """An .npy of float32 ``shape`` that holds only ``payload`` after its header."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (117 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


@pytest.fixture
def model(tmp_path) -> Path:
    return tiny_model(tmp_path / "tiny.onnx").path  # [batch, 3, 8, 8], 4 classes


def _quantize(model: Path, calibration: Path, tmp_path: Path):
    return run_console_script("quantize", model, "-o", tmp_path / "out.onnx", "--mode", "int8",
                              "--calibration", calibration, timeout=QUICK)


def test_an_npy_declaring_715_gib_is_refused_from_its_header(model, tmp_path):
    calibration = tmp_path / "huge.npy"
    calibration.write_bytes(_npy_declaring((10 ** 9, 3, 8, 8)))
    result = _quantize(model, calibration, tmp_path)
    assert_one_line_error(result, 2, str(calibration), "768,000,000,000 bytes",
                          "more than the file holds")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_an_npz_member_declaring_715_gib_is_refused_from_its_header(model, tmp_path,
                                                                     compression):
    validation = tmp_path / "huge.npz"
    with zipfile.ZipFile(validation, "w", compression) as archive:
        archive.writestr("inputs.npy", _npy_declaring((10 ** 9, 3, 8, 8)))
        archive.writestr("labels.npy", _npy_declaring((10 ** 9,)))
    result = run_console_script("evaluate", model, validation, timeout=QUICK)
    assert_one_line_error(result, 2, "array 'inputs'", "more than the file holds")


def test_an_honest_npz_still_loads(model, tmp_path):
    validation = tmp_path / "set.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(validation, inputs=rng.standard_normal((8, 3, 8, 8), np.float32),
                        labels=rng.integers(0, 4, 8))
    result = run_console_script("evaluate", model, validation, timeout=QUICK)
    assert result.code == 0, result.stderr
    assert "top-1" in result.stdout


def test_a_fifo_as_the_calibration_file_is_refused_without_opening_it(model, tmp_path):
    calibration = tmp_path / "fifo.npy"
    os.mkfifo(calibration)
    result = _quantize(model, calibration, tmp_path)
    assert_one_line_error(result, 2, "is a FIFO, not a regular file", str(calibration))


def test_a_fifo_as_an_image_is_refused_without_opening_it(model, tmp_path):
    image = tmp_path / "fifo.png"
    os.mkfifo(image)
    result = run_console_script("run", model, image, "--strict", timeout=QUICK)
    assert_one_line_error(result, 2, "a FIFO, not a regular file", str(image))


def test_a_fifo_among_the_images_of_a_labelled_set_does_not_block_it(model, tmp_path):
    folder = tmp_path / "set"
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8))
    for label in "abcd":
        (folder / label).mkdir(parents=True)
        picture.save(folder / label / "one.png")
    os.mkfifo(folder / "a" / "two.png")
    result = run_console_script("evaluate", model, folder, timeout=QUICK)
    assert result.code == 0, result.stderr
    assert "top-1" in result.stdout


def _icon(path: Path, side: int, declared: int = 16) -> Path:
    """An .ico whose one entry says ``declared`` pixels a side and holds a ``side`` PNG."""
    png = io.BytesIO()
    Image.new("RGB", (side, side), (10, 20, 30)).save(png, format="PNG")
    entry = struct.pack("<BBBBHHII", declared % 256, declared % 256, 0, 0, 1, 32,
                        len(png.getvalue()), 22)
    path.write_bytes(struct.pack("<HHH", 0, 1, 1) + entry + png.getvalue())
    return path


def test_an_icon_larger_than_its_directory_says_is_refused_before_decoding(cli, model,
                                                                           tmp_path):
    icon = _icon(tmp_path / "big.ico", side=300)
    result = cli("run", model, icon, "--strict", "--max-pixels", "10000")
    assert_one_line_error(result, 2, "300x300 is 90000 pixels, over --max-pixels 10000")
    assert result.stderr.count("cannot read image") == 1


def test_an_honest_icon_still_runs(cli, model, tmp_path):
    result = cli("run", model, _icon(tmp_path / "small.ico", side=16), "--strict")
    assert result.code == 0 and not result.stderr, result.stderr


def _lying_icns(path: Path, side: int) -> Path:
    """An .icns (named .png: Pillow goes by the content) whose header says 128x128 and whose
    one icon is a ``side`` x ``side`` PNG, decoded at full size when the image loads."""
    png = io.BytesIO()
    Image.new("RGB", (side, side), (1, 2, 3)).save(png, format="PNG")
    icon = b"ic07" + struct.pack(">I", 8 + len(png.getvalue())) + png.getvalue()
    path.write_bytes(b"icns" + struct.pack(">I", 8 + len(icon)) + icon)
    return path


def _lying_blp(path: Path, side: int) -> Path:
    """A BLP1 whose header says 16x16 and whose JPEG is ``side`` x ``side``."""
    jpeg = io.BytesIO()
    Image.new("RGB", (side, side)).save(jpeg, format="JPEG")
    header = b"BLP1" + struct.pack("<iIIIii", 0, 0, 16, 16, 5, 0)
    path.write_bytes(header + struct.pack("<16I", 160, *[0] * 15)
                     + struct.pack("<16I", len(jpeg.getvalue()), *[0] * 15)
                     + struct.pack("<I", 0) + jpeg.getvalue())
    return path


@pytest.mark.parametrize("make, name", [(_lying_icns, "ICNS"), (_lying_blp, "BLP")])
def test_formats_whose_header_does_not_bound_the_pixels_are_not_decoded(cli, model, tmp_path,
                                                                        make, name):
    """Pillow decodes the inner image of an ICNS or BLP at load, whatever its header said:
    13000x13000 pixels got past --max-pixels (746 MB); a BLP was scored, exit 0."""
    image = make(tmp_path / "icon.png", 300)
    result = cli("run", model, image, "--strict", "--max-pixels", "1000")
    assert_one_line_error(result, 2, "icon.png", f"{name} is not a format edgecnn decodes",
                          "JPEG, PNG")


def test_pillows_warnings_about_an_image_add_no_line(cli, model, tmp_path):
    """Pillow warns of a corrupt EXIF block or an icon of another size than declared; the image
    decodes, and a warning naming no file would only add a line to the run's output."""
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[0x8769] = 999_999  # the EXIF block's offset: past the end of the file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns while writing it too
        Image.new("RGB", (16, 16), (5, 5, 5)).save(tmp_path / "exif.tif", tiffinfo=info)
    for image in (tmp_path / "exif.tif", _icon(tmp_path / "other.ico", side=32)):
        result = cli("run", model, image, "--strict")
        assert result.code == 0 and not result.stderr, (image, result.stderr)


@pytest.mark.parametrize("suffix", [".pgm", ".png"])
def test_a_16_bit_grey_image_is_scaled_to_8_bits(tmp_path, suffix):
    values = np.random.default_rng(1).integers(0, 256, (24, 24), dtype=np.uint16)
    Image.fromarray(values.astype(np.uint8)).save(tmp_path / "eight.png")
    Image.fromarray(values * 257).save(tmp_path / f"sixteen{suffix}")
    info = InputInfo(name="input", shape=[1, 24, 24], color="GRAY", crop_fraction=1.0)
    expected = preprocess_images(tmp_path / "eight.png", info)
    np.testing.assert_array_equal(preprocess_images(tmp_path / f"sixteen{suffix}", info),
                                  expected)


def _peak_bytes(function, *args) -> int:
    """The most memory ``function(*args)`` held at once beyond what it returns (numpy reports
    its arrays to tracemalloc)."""
    tracemalloc.start()
    try:
        function(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_checking_an_array_of_inputs_makes_no_full_size_copy():
    """A 3 MB .npz of zeros inflates to a 3 GB array: checking it for NaN and float32 range
    must not need a second and third array of that size on top."""
    inputs = np.zeros((160, 3, 128, 128), np.float32)  # 31 MB
    info = InputInfo(name="input", shape=[3, 128, 128])
    assert _peak_bytes(check_inputs, inputs, info, "set") < inputs.nbytes / 8


def test_scaling_a_16_bit_image_to_8_bits_makes_no_wide_copies():
    picture = Image.fromarray(np.full((2048, 4096), 40000, np.uint16))  # 16 MB as "I;16"
    eight_bit = np.full((2048, 4096), 156, np.uint8)  # round(40000 / 257)
    assert _peak_bytes(_to_8_bit, picture) < 2 * eight_bit.nbytes
    np.testing.assert_array_equal(np.asarray(_to_8_bit(picture)), eight_bit)


def test_an_array_larger_than_the_memory_available_is_refused_from_its_header(
        tmp_path, monkeypatch):
    """An .npz member of 64 MB of zeros deflates to 64 KB; where the machine has less memory
    free than the array needs, the header alone refuses it (numpy would allocate it first)."""
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, inputs=np.zeros((512, 3, 128, 64), np.float32))
    assert path.stat().st_size < 200_000
    monkeypatch.setattr(datasets, "available_memory", lambda: 16 * 2**20)
    info = InputInfo(name="input", shape=[3, 128, 64])
    with pytest.raises(BadInput, match=r"array 'inputs'.*50,331,648 bytes.*more than the "
                                       r"16,777,216 bytes of memory available"):
        datasets.load_arrays(path, info, with_labels=False)
    monkeypatch.setattr(datasets, "available_memory", lambda: 2**40)
    assert datasets.load_arrays(path, info, with_labels=False)[0].shape == (512, 3, 128, 64)


def test_an_npz_member_is_checked_where_numpy_reads_it(tmp_path):
    """A zip holding 'inputs.npy' (small) and 'inputs' (declaring 768 GB): the check read the
    first, numpy loads the second."""
    path = tmp_path / "twins.npz"
    small = io.BytesIO()
    np.save(small, np.zeros((2, 3, 8, 8), np.float32))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("inputs.npy", small.getvalue())
        archive.writestr("inputs", _npy_declaring((10 ** 9, 3, 8, 8)))
    info = InputInfo(name="input", shape=[3, 8, 8])
    with pytest.raises(BadInput, match=r"array 'inputs'.*768,000,000,000 bytes"):
        datasets.load_arrays(path, info, with_labels=False)


def test_the_memory_available_is_read_from_the_machine():
    available = datasets.available_memory()
    assert available is None or 0 < available <= os.sysconf("SC_PHYS_PAGES") * os.sysconf(
        "SC_PAGE_SIZE")


def test_32_bit_images_in_0_255_are_rounded_and_others_refused():
    values = np.random.default_rng(2).uniform(0, 255, (700, 900)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(_to_8_bit(Image.fromarray(values))),
                                  np.rint(values).astype(np.uint8))
    integers = values.astype(np.int32)
    np.testing.assert_array_equal(np.asarray(_to_8_bit(Image.fromarray(integers))),
                                  integers.astype(np.uint8))
    one_nan = np.full((3, 4), 100.0, np.float32)
    one_nan[1, 2] = np.nan  # Pillow's extrema skip a NaN that is not the first pixel
    for bad in (np.full((3, 3), np.nan, np.float32), np.full((3, 3), 300.0, np.float32),
                one_nan):
        with pytest.raises(BadInput, match="outside 0..255; scale it to 8 bits first"):
            _to_8_bit(Image.fromarray(bad))


def test_a_containers_page_cache_counts_as_available(tmp_path, monkeypatch):
    """cgroup v2's memory.current includes the page cache the kernel drops on demand: a
    container that had just read a large file looked full."""
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{8 * 2**30}\n")
    (cgroup / "memory.current").write_text(f"{7 * 2**30}\n")
    (cgroup / "memory.stat").write_text(f"anon 1024\ninactive_file {6 * 2**30}\n")
    real_path = datasets.Path
    monkeypatch.setattr(datasets, "Path", lambda name: cgroup if name == "/sys/fs/cgroup"
                        else real_path(name))
    monkeypatch.setattr("builtins.open", _no_meminfo(open))
    assert datasets.available_memory() == 7 * 2**30


def _no_meminfo(real_open):
    def opener(name, *args, **kwargs):
        if str(name) == "/proc/meminfo":
            raise OSError("no meminfo here")
        return real_open(name, *args, **kwargs)
    return opener
