"""Hardening of the input paths: images (huge, 16-bit, empty), arrays, calibration batches, and
the bench feed. Through the real CLI, except the Python API's own argument checks."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib

import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error
from PIL import Image

from edgecnn.errors import BadInput
from edgecnn.runtime import Engine

LENET_SHAPE = (1, 28, 28)


def write_png(path, width: int, height: int, bit_depth: int, color_type: int, rows) -> None:
    """A PNG written chunk by chunk, so a huge image never exists in memory (``rows``: one
    bytes object per row, without the filter byte)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(b"\x00" + row) for row in rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
                     + chunk(b"IEND", b""))


def bomb_png(path, side: int = 30000):
    """A valid 1-bit black PNG of side x side pixels (about 100 KB on disk)."""
    row = bytes((side + 7) // 8)
    write_png(path, side, side, 1, 0, (row for _ in range(side)))
    return path


def grey_pictures(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(count)]


def save_grey(folder, pictures: list[np.ndarray], sixteen_bit: bool) -> list:
    """Each 8-bit picture as an 8-bit PNG, or as the 16-bit PNG with the same brightness
    (value * 257 maps 0..255 onto 0..65535)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, picture in enumerate(pictures):
        path = folder / f"{index:03d}.png"
        if sixteen_bit:
            Image.fromarray(picture.astype(np.uint16) * 257).save(path)
            assert Image.open(path).mode == "I;16"
        else:
            Image.fromarray(picture).save(path)
        paths.append(path)
    return paths


def initializers(path) -> dict[str, np.ndarray]:
    return {init.name: onnx.numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}


# ---- item 5: oversized inputs ---------------------------------------------------------------

def test_decompression_bomb_is_bad_input_in_run_calibration_and_api(cli, zoo_onnx, tmp_path):
    lenet = zoo_onnx("lenet")
    folder = tmp_path / "calib"
    folder.mkdir()
    bomb = bomb_png(folder / "bomb.png")
    assert bomb.stat().st_size < 1_000_000
    assert_one_line_error(cli("run", lenet, bomb), 2, "bomb.png", "900000000 pixels")
    assert_one_line_error(cli("quantize", lenet, "-o", tmp_path / "q.onnx", "--calibration", folder),
                          2, "none of the 1 image files could be read", "900000000 pixels")
    with pytest.raises(BadInput, match="900000000 pixels"):
        Engine(lenet, "cpu").predict(bomb)


def test_bench_refuses_a_feed_of_hundreds_of_gib(cli, zoo_onnx):
    result = cli("bench", zoo_onnx("lenet"), "--batch", "100000000", "--runs", "1", "--warmup", "0")
    assert_one_line_error(result, 2, "--batch 100000000", "292.1 GiB")


def test_bench_input_is_built_in_its_dtype(zoo_onnx):
    from edgecnn.runtime.bench import random_inputs

    engine = Engine(zoo_onnx("lenet"), "cpu")
    tracemalloc.start()
    try:
        feed = random_inputs(engine, batch=20000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (array,) = feed.values()
    assert array.dtype == np.float32 and array.shape == (20000, *LENET_SHAPE)
    assert peak < 1.2 * array.nbytes, (peak, array.nbytes)  # no float64 copy on the way


# ---- item 6: calibration with a partial last batch ------------------------------------------

@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_every_method_calibrates_on_a_count_not_a_multiple_of_the_batch(cli, zoo_onnx, tmp_path,
                                                                        method):
    inputs = np.random.default_rng(0).standard_normal((21, *LENET_SHAPE)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", inputs=inputs)
    output = tmp_path / f"{method}.onnx"
    result = cli("quantize", zoo_onnx("lenet"), "-o", output, "--calibration",
                 tmp_path / "inputs.npz", "--method", method, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["quantization"]["method"] == method, report
    assert report["quantization"]["calibration_size"] == 21, report
    engine = Engine(output, "cpu")
    assert engine.precision == "int8"
    (scores,) = engine.run(inputs[:3]).values()
    assert scores.shape == (3, 10) and np.all(np.isfinite(scores))


def test_calibration_batches_are_equal_sized_without_repeats():
    from edgecnn.export.calibration import CALIBRATION_BATCH, calibration_batches

    inputs = np.arange(21, dtype=np.float32).reshape(21, 1, 1, 1)
    chunks = calibration_batches(inputs, None)
    assert len({len(chunk) for chunk in chunks}) == 1
    assert all(len(chunk) <= CALIBRATION_BATCH for chunk in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), inputs)  # each sample once, in order


# ---- item 8: 16-bit images ------------------------------------------------------------------

def test_16_bit_png_is_scaled_in_run_and_predict(cli, zoo_onnx, tmp_path):
    lenet = zoo_onnx("lenet")
    pictures = grey_pictures(2)
    eight = save_grey(tmp_path / "8", pictures, sixteen_bit=False)
    sixteen = save_grey(tmp_path / "16", pictures, sixteen_bit=True)
    reports = []
    for paths in (eight, sixteen):
        result = cli("run", lenet, *paths, "--top-k", "10", "--json", "--provider", "cpu")
        assert result.code == 0, result.stderr
        reports.append([entry["top_k"] for entry in json.loads(result.stdout)["results"]])
    assert reports[0] == reports[1]
    engine = Engine(lenet, "cpu")
    assert engine.predict(sixteen, top_k=10) == engine.predict(eight, top_k=10)
    as_pil = Image.fromarray(pictures[0].astype(np.uint16) * 257)
    assert engine.predict(as_pil, top_k=10) == engine.predict(pictures[0], top_k=10)


def test_16_bit_png_folder_calibrates_like_its_8_bit_twin(cli, zoo_onnx, tmp_path):
    lenet = zoo_onnx("lenet")
    pictures = grey_pictures(8, seed=3)
    scales = []
    for depth in ("8", "16"):
        save_grey(tmp_path / depth / "calib", pictures, sixteen_bit=depth == "16")
        output = tmp_path / depth / "int8.onnx"
        result = cli("quantize", lenet, "-o", output, "--calibration", tmp_path / depth / "calib")
        assert result.code == 0, result.stderr
        scales.append({name: value for name, value in initializers(output).items()
                       if name.endswith("_scale")})
    assert scales[0].keys() == scales[1].keys() and scales[0]
    for name, value in scales[0].items():
        np.testing.assert_array_equal(scales[1][name], value, err_msg=name)


def test_32_bit_image_outside_the_8_bit_range_is_refused(zoo_onnx):
    engine = Engine(zoo_onnx("lenet"), "cpu")
    wide = Image.fromarray(np.full((28, 28), 70000, np.int32))
    with pytest.raises(BadInput, match="0..255"):
        engine.predict(wide)


# ---- item 12: object arrays in an .npz ------------------------------------------------------

def test_npz_with_object_arrays_is_one_line_exit_2(cli, zoo_onnx, tmp_path):
    inputs = np.empty(2, dtype=object)
    inputs[:] = [np.zeros(LENET_SHAPE, np.float32), np.zeros(LENET_SHAPE, np.float32)]
    np.savez(tmp_path / "objects.npz", inputs=inputs)
    result = cli("quantize", zoo_onnx("lenet"), "-o", tmp_path / "q.onnx",
                 "--calibration", tmp_path / "objects.npz")
    assert_one_line_error(result, 2, "objects.npz", "allow_pickle")


# ---- item 13: predict's arguments -----------------------------------------------------------

@pytest.mark.parametrize("images, kwargs, fragment", [
    (np.zeros((0, 0, 3), np.uint8), {}, "expected an image of at least 1x1 pixels, got 0x0"),
    (Image.new("RGB", (0, 0)), {}, "expected an image of at least 1x1 pixels, got 0x0"),
    (np.zeros((28, 28), np.uint8), {"batch_size": -1}, "batch_size must be an integer >= 1, got -1"),
    (np.zeros((28, 28), np.uint8), {"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    (5, {}, "expected an image (path, PIL image or uint8 array) or a list of them, got int"),
    (b"\x89PNG...", {}, "expected an image (path, PIL image or uint8 array) or a list of them, "
                        "got bytes"),
])
def test_predict_arguments_are_bad_input(zoo_onnx, images, kwargs, fragment):
    engine = Engine(zoo_onnx("lenet"), "cpu")
    with pytest.raises(BadInput) as raised:
        engine.predict(images, **kwargs)
    assert fragment in str(raised.value)
