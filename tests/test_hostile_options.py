"""Numbers and shapes that would drive memory, threads or time without a bound, and files whose
declared shapes or types a command cannot use: each is one line and exit 2 (or works, bounded).

(Files: tests/test_hostile_model_files.py, test_hostile_data_files.py, test_hostile_run_inputs.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from conftest import assert_one_line_error
from tiny_models import computing_12_classes, tiny_model


@pytest.fixture
def model(tmp_path) -> Path:
    return tiny_model(tmp_path / "tiny.onnx").path  # [batch, 3, 8, 8], 4 classes


def _image(path: Path, side: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), 100, np.uint8)).save(path)
    return path


def _identity(path: Path, elem_type: int = TensorProto.FLOAT, dims=("batch", 3, 8, 8),
              shape: bool = True) -> Path:
    """A graph that returns its input: dims and type as given (shape=False: no shape at all)."""
    value = (helper.make_tensor_value_info("x", elem_type, list(dims)) if shape else
             helper.make_tensor_value_info("x", elem_type, None))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [value],
                              [helper.make_tensor_value_info("y", elem_type, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), path)
    return path


# ---- evaluate, run: the class count, the batch and the decode threads ------------------------

def test_evaluate_counts_a_hundred_thousand_classes_without_a_dense_matrix(cli, tmp_path):
    """A 2.4 MB file declaring 100,000 classes made evaluate allocate a 74.5 GiB confusion
    matrix; past 1,000 classes the matrix is given as its non-zero cells."""
    classes = 100_000
    model = tiny_model(tmp_path / "wide.onnx", classes=classes,
                       labels=[f"c{index}" for index in range(classes)]).path
    _image(tmp_path / "set" / "c0" / "one.png")
    _image(tmp_path / "set" / "c1" / "two.png")
    result = cli("evaluate", model, tmp_path / "set", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)["models"][0]
    assert report["samples"] == 2 and report["confusion"] is None
    assert sum(count for _, _, count in report["confusion_cells"]) == 2
    # the rows of the classes with samples: 100,000 rows of nothing cost 2.7 KB each
    assert [row["class"] for row in report["per_class"]] == ["c0", "c1"]


def test_evaluate_refuses_more_classes_than_it_counts(cli, tmp_path):
    """10**9 declared classes (computed at run time, no weights needed) took 3.4 GB before
    the first image; evaluate counts up to MAX_EVALUATE_CLASSES."""
    from edgecnn.runtime.evaluate import MAX_EVALUATE_CLASSES

    model = computing_12_classes(tmp_path / "wide.onnx", declared=MAX_EVALUATE_CLASSES + 1)
    _image(tmp_path / "set" / "0" / "one.png")
    assert_one_line_error(cli("evaluate", model, tmp_path / "set"), 2,
                          f"declares {MAX_EVALUATE_CLASSES + 1:,} classes",
                          f"up to {MAX_EVALUATE_CLASSES:,}")


def test_evaluate_keeps_the_dense_matrix_for_a_few_classes(cli, model, tmp_path):
    for label in ("0", "1", "2", "3"):
        _image(tmp_path / "set" / label / "one.png")
    result = cli("evaluate", model, tmp_path / "set", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)["models"][0]
    assert np.asarray(report["confusion"]).shape == (4, 4) and report["confusion_cells"] is None


@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_a_batch_the_lookahead_cannot_hold_is_refused_up_front(cli, tmp_path, command):
    model = tiny_model(tmp_path / "big.onnx", size=(224, 224)).path
    for label in "0123":
        _image(tmp_path / "set" / label / "one.png")
    folder = tmp_path / "set" / "0"
    target = tmp_path / "set" if command == "evaluate" else folder
    assert_one_line_error(cli(command, model, target, "--batch", "100000"), 2, "--batch",
                          "4 GiB")


@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_decode_workers_are_bounded(cli, model, tmp_path, command):
    for label in "0123":
        _image(tmp_path / "set" / label / "one.png")
    folder = tmp_path / "set" / "0"
    target = tmp_path / "set" if command == "evaluate" else folder
    assert_one_line_error(cli(command, model, target, "--workers", "100000"), 2,
                          "--workers must be at most")


# ---- bench -------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--runs", "--warmup"])
def test_bench_runs_and_warmup_are_bounded(cli, model, flag):
    assert_one_line_error(cli("bench", model, flag, "1000000000"), 2, f"{flag} must be",
                          "100,000")


def test_bench_refuses_an_input_with_an_axis_of_size_0(cli, tmp_path):
    source = _identity(tmp_path / "zero.onnx", dims=(0, 3, 8, 8))
    assert_one_line_error(cli("bench", source, "--runs", "1", "--warmup", "0"), 2,
                          "an axis of size 0")


@pytest.mark.parametrize("shape", [True, False], ids=["rank-0", "no-shape"])
def test_bench_feeds_a_scalar_to_an_input_of_rank_0(cli, tmp_path, shape):
    """onnxruntime shows an input without a shape as rank 0 too: a scalar is what it takes."""
    source = _identity(tmp_path / "scalar.onnx", dims=(), shape=shape)
    result = cli("bench", source, "--runs", "2", "--warmup", "0", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["throughput"] > 0


def test_a_bench_matrix_cell_that_fails_says_error_once(tmp_path):
    from edgecnn.errors import BadInput
    from edgecnn.runtime.bench_matrix import run_cell

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(BadInput) as caught:
        run_cell(broken, "cpu", None, None, 0, 1, tmp_path / "out.npy")
    assert "failed: error:" not in str(caught.value) and "broken.onnx" in str(caught.value)


# ---- quantize ----------------------------------------------------------------------------------

def test_calibration_values_float32_cannot_hold_are_refused(cli, model, tmp_path):
    data = tmp_path / "huge.npy"
    np.save(data, np.full((4, 3, 8, 8), 1e300))  # finite in float64, inf in float32
    assert_one_line_error(cli("quantize", model, "-o", tmp_path / "q.onnx", "--calibration",
                              data), 2, "float32")
    assert not (tmp_path / "q.onnx").exists()


def test_a_negative_seed_is_refused(cli, model, tmp_path):
    assert_one_line_error(cli("quantize", model, "-o", tmp_path / "q.onnx", "--calibration",
                              "random", "--seed", "-1"), 2, "--seed must be")


@pytest.mark.parametrize("elem_type, dims, fragment", [
    (TensorProto.UINT8, ("batch", 3, 8, 8), "float"),
    (TensorProto.FLOAT, (0, 3, 8, 8), "an axis of size 0"),
    (TensorProto.FLOAT, ("batch", 0, 8, 8), "an axis of size 0"),
], ids=["uint8-input", "zero-batch", "zero-channels"])
def test_quantize_refuses_inputs_it_cannot_calibrate(cli, tmp_path, elem_type, dims, fragment):
    source = _identity(tmp_path / "odd.onnx", elem_type, dims)
    assert_one_line_error(cli("quantize", source, "-o", tmp_path / "q.onnx", "--input-size", "8",
                              "--mode", "fp16"), 2, fragment)
    assert not (tmp_path / "q.onnx").exists()


# ---- metadata: the task, and a channel count no image has ---------------------------------------

def test_a_segmentation_task_needs_a_class_map_output(cli, model, tmp_path):
    assert_one_line_error(cli("annotate", model, "-o", tmp_path / "seg.onnx", "--task",
                              "segmentation"), 2, "segmentation", "output")
    assert not (tmp_path / "seg.onnx").exists()


def test_an_unknown_task_in_the_metadata_is_refused(cli, tmp_path):
    from edgecnn.runtime.metadata import METADATA_KEY

    tiny = tiny_model(tmp_path / "tiny.onnx")
    proto = onnx.load(tiny.path)
    entry = next(prop for prop in proto.metadata_props if prop.key == METADATA_KEY)
    fields = json.loads(entry.value)
    fields["task"] = "banana"
    entry.value = json.dumps(fields)
    onnx.save(proto, tmp_path / "banana.onnx")
    assert_one_line_error(cli("info", tmp_path / "banana.onnx"), 2, "task", "banana")


def test_a_channel_count_of_2_62_is_refused_before_allocating(cli, tmp_path):
    source = _identity(tmp_path / "wide.onnx", dims=("batch", 2**62, 8, 8))
    assert_one_line_error(cli("annotate", source, "-o", tmp_path / "a.onnx", "--input-size",
                              "8"), 2, "channels")


# ---- what the terminal shows --------------------------------------------------------------------

@pytest.mark.parametrize("character", ["\u2028", "\u2029", "\u202e", "\u200b", "\ufeff",
                                       "\u2066"])
def test_line_breaks_and_invisible_characters_print_escaped(character):
    from edgecnn.cli._app import printable

    shown = printable(f"label{character}x")
    assert character not in shown and f"\\u{ord(character):04x}" in shown
