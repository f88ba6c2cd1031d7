"""Hostile data files: arrays whose header declares more than the file holds, and FIFOs where
images or arrays are expected. Each is one line and exit 2, in bounded time and memory.

(The model file itself: tests/test_hostile_model_files.py.)
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error, run_console_script
from tiny_models import tiny_model

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
