"""Graphs whose first output is probabilities already: a Softmax over the classes, or a Sigmoid
(multi-label classifiers), at the end of the graph. ``model_file.probability_op`` reads it from
the file; the Engine, `run` and `info` then report the values as they are, never softmaxed a
second time (tests/test_foreign_files.py has the exported files that end in Softmax)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save
from PIL import Image

from edgecnn.runtime import Engine
from edgecnn.runtime import model_file
from edgecnn.runtime.model_file import probability_op
from edgecnn.runtime.preprocess import preprocess_images

GRAPH_DIMS = [1, 4]  # _graph_file's output
CLASSES = 5
MEAN, STD = ["0.5", "0.4", "0.3"], ["0.25", "0.2", "0.3"]


def _graph_file(tmp_path: Path, nodes, opset: int = 13) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "g.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def _chain(ops: list[str], axis: int | None) -> list:
    names = ["x", *(f"t{k}" for k in range(len(ops) - 1)), "y"]
    return [helper.make_node(op, [names[k]], [names[k + 1]],
                             **({"axis": axis} if "Softmax" in op and axis is not None else {}))
            for k, op in enumerate(ops)]


@pytest.mark.parametrize("ops, axis, expected", [
    (["Softmax"], None, "Softmax"), (["Softmax"], -1, "Softmax"), (["Softmax"], 1, "Softmax"),
    (["Softmax"], 0, None),  # over the batch: not class probabilities
    (["Softmax", "Identity", "Flatten"], 1, "Softmax"),
    (["LogSoftmax"], 1, None),  # log probabilities: softmax of them is the softmax of the logits
    (["Softmax", "Relu"], 1, None),
    (["Softmax"] + ["Identity"] * 8, 1, None),  # walks back 8 nodes at most
    (["Sigmoid"], None, "Sigmoid"),  # multi-label: one probability per class, each on its own
    (["Sigmoid", "Cast", "Identity"], None, "Sigmoid"),
    (["HardSigmoid"], None, None),  # not a probability model's last op; left as scores
    (["Sigmoid", "Relu"], None, None),
])
def test_probability_op_reads_the_graph(tmp_path, ops, axis, expected):
    assert probability_op(_graph_file(tmp_path, _chain(ops, axis)), "y", GRAPH_DIMS) == expected


@pytest.mark.parametrize("dims, op, axis, expected", [
    ([1, 4, 1, 1], "Softmax", 1, "Softmax"), ([1, 4, 1, 1], "Softmax", -3, "Softmax"),
    ([1, 4, 1, 1], "Softmax", -1, None),  # over a 1-wide axis: every value 1
    ([1, 4, 1, 1], "Softmax", None, None),  # axis 1 before opset 13, -1 after: not said
    ([1, 4, 3], "Softmax", 1, None), ([1, 4, 2, 2], "Softmax", 1, None),  # not one per class
    ([1, 4, 1, 1], "Sigmoid", None, "Sigmoid"),
    ([1, 4, 2, 2], "Sigmoid", None, None),  # a segmentation map's: not a class vector
])
def test_probability_op_takes_the_class_axis_of_the_output_dims(tmp_path, dims, op, axis,
                                                                expected):
    path = _graph_file(tmp_path, _chain([op], axis))
    assert probability_op(path, "y", dims) == expected


def test_probability_op_survives_files_it_cannot_read(tmp_path):
    path = _graph_file(tmp_path, [helper.make_node("Softmax", ["x"], ["y"], axis=1)])
    whole = path.read_bytes()
    assert probability_op(path, "y", GRAPH_DIMS) == "Softmax"
    assert probability_op(path, "other", GRAPH_DIMS) is None
    for cut in (whole[:8], b"\xff" * 64, b""):
        path.write_bytes(cut)
        assert probability_op(path, "y", GRAPH_DIMS) is None
    assert probability_op(tmp_path / "missing.onnx", "y", GRAPH_DIMS) is None
    long_name = "y" * 5000  # names past 4096 bytes are not read: no match, no large read
    path = _graph_file(tmp_path, [helper.make_node("Softmax", ["x"], [long_name], axis=1),
                                  helper.make_node("Identity", [long_name], ["y"])])
    assert probability_op(path, "y", GRAPH_DIMS) is None


def test_probability_op_reads_a_bounded_number_of_nodes(tmp_path, monkeypatch):
    """An unsorted graph (onnxruntime sorts what it loads) would make every step back a pass
    over all the nodes: 100,000 took 17 s; the walk reads 4,096 nodes at most, and notes where
    the last 4,096 lie (a file of a billion empty nodes would have taken 16 GB)."""
    names = ["x", *(f"t{k}" for k in range(5999)), "y"]
    nodes = [helper.make_node("Identity", [names[k]], [names[k + 1]]) for k in range(6000)]
    nodes[0] = helper.make_node("Softmax", ["x"], ["t0"], axis=1)
    path = _graph_file(tmp_path, nodes[::-1])  # the output's producer first
    reads = []
    real = model_file._node_writing
    monkeypatch.setattr(model_file, "_node_writing", lambda *a: reads.append(1) or real(*a))
    assert probability_op(path, "y", GRAPH_DIMS) is None
    assert len(reads) <= 4096
    with open(path, "rb") as stream:  # and holds the offsets of that many, not of all
        assert len(model_file._last_node_spans(stream)) == 4096
    reads.clear()
    path = _graph_file(tmp_path, nodes[-6:])  # sorted: a few reads (t5994 is then an input)
    assert probability_op(path, "y", GRAPH_DIMS) is None and len(reads) <= 7


def _multi_label_classifier(tmp_path: Path) -> Path:
    """conv -> global pooling -> Flatten -> Sigmoid: one independent probability per label."""
    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((CLASSES, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Sigmoid", ["flat"], ["labels"])]
    graph = helper.make_graph(
        nodes, "multi_label",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("labels", TensorProto.FLOAT, [1, CLASSES])], [weight])
    path = tmp_path / "multi_label.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_a_multi_label_model_reports_its_sigmoid_probabilities(cli, tmp_path):
    """Each label's probability as the graph's Sigmoid gives it (a softmax over them made
    0.9, 0.8 and 0.7 of three labels 0.37, 0.33 and 0.30)."""
    path = _multi_label_classifier(tmp_path)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), np.uint8)).save(photo)
    engine = Engine(path, "cpu", preprocessing={"mean": [*map(float, MEAN)],
                                                "std": [*map(float, STD)]})
    assert engine.scores_are_probabilities
    expected = np.sort(engine.scores(preprocess_images([photo], engine.metadata.input))[0])[::-1]
    assert not np.isclose(expected.sum(), 1, atol=0.05)  # independent, not a distribution
    best = engine.predict(photo, top_k=CLASSES, labelled=False)
    np.testing.assert_allclose([p for _, p in best], expected, rtol=1e-6)
    result = cli("run", path, photo, "--json", "--top-k", CLASSES, "--mean", *MEAN, "--std", *STD)
    assert result.code == 0, result.stderr
    top = json.loads(result.stdout)["results"][0]["top_k"]
    np.testing.assert_allclose([entry["probability"] for entry in top], expected, atol=1e-6)
    info = cli("info", path)
    assert info.code == 0 and "(probabilities: the graph ends in Sigmoid)" in info.stdout
    first = json.loads(cli("info", path, "--json").stdout)["outputs"][0]
    assert first["probabilities"] is True and first["probability_op"] == "Sigmoid"


def test_one_logit_is_a_binary_classifiers_probability():
    """A single-logit head (binary, BCEWithLogits-trained) reports sigmoid(logit): a softmax over
    one class said 1.0 for every image."""
    from edgecnn.runtime.postprocess import top_k

    logits = np.array([[2.0], [-1.0]], np.float32)
    assert [row[0][0] for row in top_k(logits, 5)] == [0, 0]
    np.testing.assert_allclose([row[0][1] for row in top_k(logits, 5)],
                               1 / (1 + np.exp(-logits[:, 0])), rtol=1e-6)
    np.testing.assert_allclose(top_k(logits, 1, probabilities=True)[1][0][1], -1.0)  # as given


def test_graph_precision_survives_files_it_cannot_read(tmp_path):
    from edgecnn.runtime.model_file import graph_precision

    fp16 = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])],
        [numpy_helper.from_array(np.ones((1, 4), np.float16), "w")])
    path = tmp_path / "fp16.onnx"
    save(helper.make_model(fp16, opset_imports=[helper.make_opsetid("", 13)]), path)
    assert graph_precision(path) == "fp16"
    for cut in (b"\xff" * 64, b"", path.read_bytes()[:20]):
        path.write_bytes(cut)
        assert graph_precision(path) == "fp32"
    assert graph_precision(tmp_path / "missing.onnx") == "fp32"


def _length_field(number: int, payload: bytes) -> bytes:
    varints = b""
    for value in (number << 3 | 2, len(payload)):
        while value >= 0x80:
            varints += bytes([value & 0x7F | 0x80])
            value >>= 7
        varints += bytes([value])
    return varints + payload


def test_a_field_written_twice_is_read_as_its_last_copy(tmp_path):
    """protobuf keeps the last copy of a singular field: a node whose op_type is written as
    Conv, then QLinearConv, is a QLinearConv to onnx and onnxruntime; the walk read Conv, and
    quantize's already-quantized refusal let the file through."""
    import onnx

    from edgecnn.runtime.model_file import graph_precision

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    node = (_length_field(1, b"x") + _length_field(2, b"z") + _length_field(4, b"Conv")
            + _length_field(4, b"QLinearConv"))
    path = tmp_path / "twice.onnx"
    path.write_bytes(model.SerializeToString() + _length_field(7, _length_field(1, node)))
    assert onnx.load(path).graph.node[-1].op_type == "QLinearConv"
    assert graph_precision(path) == "int8"
