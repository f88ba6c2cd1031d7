"""Untrusted files: the edgecnn metadata is validated (schema, and against the graph), and
names, labels and paths from files reach the terminal with their control characters escaped."""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from conftest import CONSOLE_SCRIPT, CliResult, assert_one_line_error
from edgecnn.errors import BadInput
from edgecnn.runtime.metadata import METADATA_KEY, ModelMetadata
from tiny_models import tiny_model

CLEAR_SCREEN = "\x1b[2J"
MEMORY_LIMIT = 6 * 2 ** 30  # far below what the absurd shapes below would allocate


def with_metadata(source: Path, target: Path, **changes) -> Path:
    """Copy the .onnx ``source`` to ``target`` with its edgecnn metadata changed: each keyword
    is a field name ('input__shape' for input.shape) and its new JSON value."""
    model = onnx.load(str(source))
    (entry,) = [prop for prop in model.metadata_props if prop.key == METADATA_KEY]
    data = json.loads(entry.value)
    for key, value in changes.items():
        *parents, name = key.split("__")
        node = data
        for parent in parents:
            node = node[parent]
        node[name] = value
    entry.value = json.dumps(data)
    onnx.save(model, str(target))
    return target


@pytest.fixture(scope="module")
def lenet(zoo_onnx) -> Path:
    return zoo_onnx("lenet")  # input [batch, 1, 28, 28], output [batch, 10], GRAY


@pytest.fixture
def digit(tmp_path) -> Path:
    path = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)).save(path)
    return path


def limited_cli(*args, timeout: float = 300) -> CliResult:
    """`edgecnn ...` in a process that cannot allocate more than MEMORY_LIMIT: what trusted the
    metadata fails there with MemoryError instead of taking the machine down."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    done = subprocess.run([*CONSOLE_SCRIPT, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)
    return CliResult(done.returncode, done.stdout, done.stderr)


# -- schema --------------------------------------------------------------------------------

MALFORMED = [
    ("input__shape", [3, 100000, 100000], "input.shape"),
    ("input__shape", [1, -28, 28], "input.shape"),
    ("input__shape", [1, 28], "input.shape"),
    ("input__shape", [3, 12000, 12000], "input.shape"),  # each side fine, C*H*W too large
    ("input__shape", "28x28", "input.shape"),
    ("input__crop_fraction", "all", "input.crop_fraction"),
    ("input__crop_fraction", 1.5, "input.crop_fraction"),
    ("input__mean", "0.5", "input.mean"),
    ("input__mean", [0.1, 0.2, 0.3], "input.mean"),  # one channel
    ("input__mean", [float("nan")], "input.mean"),
    ("input__std", [-1], "input.std"),
    ("input__std", [0], "input.std"),
    ("input__scale", 0, "input.scale"),
    ("input__scale", "255", "input.scale"),
    ("input__scale", 10 ** 400, "input.scale"),
    ("input__layout", "CHWN", "input.layout"),
    ("input__color", "CMYK", "input.color"),
    ("input__color", "RGB", "input.color"),  # on a 1-channel input
    ("input__name", 7, "input.name"),
    ("input", [1, 28, 28], "input"),
    ("labels", 5, "labels"),
    ("labels", [1, 2, 3], "labels"),
    ("quantization", "lots", "quantization"),
    ("precision", "fp64", "precision"),
    ("deform_lowering", "fast", "deform_lowering"),
    ("opset", "18", "opset"),
    ("task", 3, "task"),
    ("model", None, "model"),
    ("tolerances", {"fp16": -1e-3}, "tolerances.fp16"),
    ("tolerances", {"fp16": float("inf")}, "tolerances.fp16"),
    ("tolerances", {"int4": 1e-3}, "tolerances"),  # bf16 is a key: see TOLERANCE_KEYS
    ("tolerances", [1e-3], "tolerances"),
    ("weights", 5, "weights"),
]


@pytest.mark.parametrize("key, value, field", MALFORMED,
                         ids=[f"{key}={value!r}" for key, value, _ in MALFORMED])
def test_malformed_metadata_is_one_line_naming_the_field(cli, lenet, tmp_path, key, value, field):
    model = with_metadata(lenet, tmp_path / "bad.onnx", **{key: value})
    result = cli("info", model)
    assert_one_line_error(result, 2, str(model), f"edgecnn metadata field '{field}' must be")
    assert "internal error" not in result.stderr


def test_metadata_that_is_not_an_object_or_lacks_a_field_is_bad_input():
    with pytest.raises(BadInput, match="m.onnx: edgecnn metadata entry must be a JSON object"):
        ModelMetadata.from_json("[1, 2]", "m.onnx")
    with pytest.raises(BadInput, match="m.onnx: edgecnn metadata has no field 'input'"):
        ModelMetadata.from_json('{"model": "x", "task": "classification"}', "m.onnx")
    with pytest.raises(BadInput, match="m.onnx: edgecnn metadata is not valid JSON"):
        ModelMetadata.from_json("{", "m.onnx")


def test_new_fields_load_and_old_files_without_them_still_do(cli, lenet, tmp_path):
    written_before_them = {"model": "lenet", "task": "classification", "labels": None,
                           "precision": "fp32", "opset": 18, "edgecnn_version": "0.1.0",
                           "deform_lowering": None, "quantization": None,
                           "input": {"name": "input", "shape": [1, 28, 28], "color": "GRAY",
                                     "mean": [0.5], "std": [0.5], "crop_fraction": 1.0}}
    old = ModelMetadata.from_json(json.dumps(written_before_them))
    assert old.tolerances is None and old.weights is None
    model = with_metadata(lenet, tmp_path / "new.onnx", tolerances={"fp32": 1e-5, "int8": 0.1},
                          weights="random (seed 0)", written_by_a_newer_edgecnn=True)
    result = cli("info", model, "--json")
    assert result.code == 0, result.stderr
    described = json.loads(result.stdout)["metadata"]
    assert described["tolerances"] == {"fp32": 1e-5, "int8": 0.1}
    assert described["weights"] == "random (seed 0)"


# -- against the graph ---------------------------------------------------------------------

def test_run_refuses_an_absurd_shape_before_allocating(lenet, digit, tmp_path):
    model = with_metadata(lenet, tmp_path / "huge.onnx", input__shape=[3, 100000, 100000],
                          input__color="RGB", input__mean=[0.5] * 3, input__std=[0.5] * 3)
    assert_one_line_error(limited_cli("run", model, digit), 2, "'input.shape'")


def test_quantize_fp16_refuses_an_absurd_shape_before_allocating(lenet, tmp_path):
    model = with_metadata(lenet, tmp_path / "huge.onnx", input__shape=[1, 100000, 100000])
    output = tmp_path / "out.onnx"
    result = limited_cli("quantize", model, "-o", output, "--mode", "fp16")
    assert_one_line_error(result, 2, "'input.shape'")
    assert not output.exists()


def test_run_refuses_a_shape_the_graph_does_not_have(cli, lenet, digit, tmp_path):
    model = with_metadata(lenet, tmp_path / "wrong.onnx", input__shape=[1, 32, 32])
    assert_one_line_error(cli("run", model, digit), 2, "'input.shape'", "[?, 1, 28, 28]")


def test_run_refuses_nhwc_metadata_on_an_nchw_graph(cli, lenet, digit, tmp_path):
    model = with_metadata(lenet, tmp_path / "nhwc.onnx", input__layout="NHWC")
    assert_one_line_error(cli("run", model, digit), 2, "'input.shape'", "NHWC")


def test_run_refuses_metadata_naming_another_input(cli, lenet, digit, tmp_path):
    model = with_metadata(lenet, tmp_path / "name.onnx", input__name="image")
    assert_one_line_error(cli("run", model, digit), 2, "'input.name'", "'image'")


def test_run_refuses_labels_of_the_wrong_length(cli, lenet, digit, tmp_path):
    model = with_metadata(lenet, tmp_path / "labels.onnx", labels=["zero", "one", "two"])
    assert_one_line_error(cli("run", model, digit), 2, "'labels'", "one per class (10",
                          "got 3 labels")


def test_run_refuses_segmentation_labels_of_the_wrong_length(cli, digit, tmp_path):
    model = tiny_model(tmp_path / "seg.onnx", task="segmentation", classes=3, labels=["a", "b"])
    assert_one_line_error(cli("run", model.path, digit), 2, "'labels'", "one per class (3",
                          "got 2 labels")


def test_check_graph_accepts_dynamic_axes_and_matching_labels():
    metadata = ModelMetadata.from_json(json.dumps({
        "model": "m", "task": "classification", "labels": ["a", "b"],
        "input": {"shape": [3, 8, 8], "layout": "NHWC"}}))
    metadata.check_graph({"input": ["batch", 8, None, 3]}, ["batch", 2])
    metadata.check_graph({"input": [None, None, None, None]}, [None, None])


def test_quantize_does_not_copy_malformed_metadata_and_names_the_metadata(cli, lenet, tmp_path):
    model = with_metadata(lenet, tmp_path / "std.onnx", input__std=[-1])
    output = tmp_path / "out.onnx"
    result = cli("quantize", model, "-o", output, "--mode", "fp16")
    assert_one_line_error(result, 2, "edgecnn metadata field 'input.std' must be > 0")
    assert "--std" not in result.stderr  # a flag the user never gave
    assert not output.exists()


def test_quantize_refuses_a_shape_the_graph_does_not_have(cli, lenet, tmp_path):
    model = with_metadata(lenet, tmp_path / "wrong.onnx", input__shape=[1, 32, 32])
    output = tmp_path / "out.onnx"
    result = cli("quantize", model, "-o", output, "--mode", "fp16")
    assert_one_line_error(result, 2, "'input.shape'", "[?, 1, 28, 28]")
    assert not output.exists()


# -- terminal escapes ----------------------------------------------------------------------

def assert_no_escape_reaches_the_terminal(result: CliResult) -> None:
    for stream in (result.stdout, result.stderr):
        assert not any(ord(c) < 0x20 and c not in "\n" or 0x7f <= ord(c) <= 0x9f for c in stream), \
            repr(stream)


@pytest.fixture
def hostile(lenet, tmp_path) -> Path:
    """lenet with a clear-screen in its file name, model name and labels."""
    labels = [f"digit{CLEAR_SCREEN}{index}" for index in range(10)]
    return with_metadata(lenet, tmp_path / f"evil{CLEAR_SCREEN}.onnx",
                         model=f"lenet{CLEAR_SCREEN}\x9b2J", labels=labels)


def test_info_escapes_names_and_paths(cli, hostile):
    result = cli("info", hostile)
    assert result.code == 0, result.stderr
    assert_no_escape_reaches_the_terminal(result)
    assert "evil\\x1b[2J.onnx" in result.stdout
    assert "lenet\\x1b[2J\\x9b2J" in result.stdout


def test_run_escapes_names_labels_and_image_paths(cli, hostile, digit, tmp_path):
    image = tmp_path / f"seven{CLEAR_SCREEN}.png"
    image.write_bytes(digit.read_bytes())
    result = cli("run", hostile, image, "--top-k", "10")
    assert result.code == 0, result.stderr
    assert_no_escape_reaches_the_terminal(result)
    assert result.stdout.startswith("lenet\\x1b[2J\\x9b2J (classification")
    assert "seven\\x1b[2J.png" in result.stdout
    assert sum("digit\\x1b[2J" in line for line in result.stdout.splitlines()) == 10


def test_quantize_escapes_the_output_path(cli, lenet, tmp_path):
    output = tmp_path / f"out{CLEAR_SCREEN}.onnx"
    result = cli("quantize", lenet, "-o", output, "--mode", "fp16")
    assert result.code == 0, result.stderr
    assert output.exists()
    assert_no_escape_reaches_the_terminal(result)
    assert "out\\x1b[2J.onnx" in result.stdout


@pytest.mark.parametrize("command", [["info"], ["run"], ["check", "lenet"],
                                     ["quantize", "--mode", "fp16"]])
def test_errors_escape_file_names(cli, tmp_path, command):
    missing = tmp_path / f"missing{CLEAR_SCREEN}\n.onnx"
    extra = [str(tmp_path / "digit.png")] if command == ["run"] else []
    result = cli(*command, missing, *extra)
    assert_one_line_error(result, 2, "missing\\x1b[2J\\x0a.onnx")
    assert_no_escape_reaches_the_terminal(result)


def test_escaped_metadata_values_in_errors(cli, lenet, tmp_path):
    model = with_metadata(lenet, tmp_path / "bad.onnx", input__layout=f"N{CLEAR_SCREEN}CHW")
    result = cli("info", model)
    assert_one_line_error(result, 2, "'input.layout'")
    assert_no_escape_reaches_the_terminal(result)
