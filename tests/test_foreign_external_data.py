"""External data (torch >= 2.9 writes weights to model.onnx.data): vetted before it is read.

A location that leaves the model's folder (``../x``, an absolute path, a symlink pointing
outside) is refused in one line before any byte of it is read: the outside "data file" in these
tests is a FIFO, which blocks whoever opens it, so a command that opened it would hang (the
subprocess's timeout fails the test). Missing and truncated data files are one line too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error
from foreign_models import TinyClassifier, export_dynamo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def dynamo_model(tmp_path_factory) -> Path:
    """A dynamo export of TinyClassifier (fixed 1x3x32x32) with its weights in model.onnx.data."""
    folder = tmp_path_factory.mktemp("dynamo")
    return export_dynamo(TinyClassifier(), folder / "model.onnx", (torch.randn(1, 3, 32, 32),))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), np.uint8)).save(path)
    return path


def _with_location(source: Path, target: Path, location: str) -> Path:
    """``source`` saved at ``target`` with every external tensor pointing at ``location``."""
    model = onnx.load(str(source), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def _escaping_model(tmp_path: Path, dynamo_model: Path, form: str) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(parents=True)
    os.mkfifo(outside / "secret.data")  # opening it for reading blocks until a writer comes
    folder = tmp_path / "models"
    folder.mkdir()
    if form == "parent":
        location = "../outside/secret.data"
    elif form == "absolute":
        location = str(outside / "secret.data")
    else:
        (folder / "link.data").symlink_to(outside / "secret.data")
        location = "link.data"
    return _with_location(dynamo_model, folder / "model.onnx", location)


_PROBE = """
import json, sys
from edgecnn.cli import main
from edgecnn.errors import BadInput
from edgecnn.runtime import Engine
from edgecnn.runtime.onnx_file import load_model
model, image = sys.argv[1], sys.argv[2]
refused = {}
for name, call in (("engine", lambda: Engine(model)), ("load_model", lambda: load_model(model))):
    try:
        call()
        refused[name] = None
    except BadInput as error:
        refused[name] = str(error)
codes = {command: main(args) for command, args in (
    ("info", ["info", model]), ("run", ["run", model, image, "--mean", "0.5", "0.5", "0.5"]),
    ("bench", ["bench", model, "--runs", "1", "--warmup", "0"]))}
print(json.dumps({"refused": refused, "codes": codes}))
"""


@pytest.mark.parametrize("form", ["parent", "absolute", "symlink"])
def test_a_location_outside_the_folder_is_refused_before_it_is_read(tmp_path, dynamo_model,
                                                                     photo, form):
    model = _escaping_model(tmp_path, dynamo_model, form)
    done = subprocess.run([sys.executable, "-c", _PROBE, str(model), str(photo)],
                          capture_output=True, text=True, timeout=120)  # a hang: something read it
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["codes"] == {"info": 2, "run": 2, "bench": 2}, done.stderr
    for message in report["refused"].values():
        assert message is not None and "outside" in message or "out of the model's folder" in message
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors), done.stderr
    assert all("must be beside the model" in line for line in errors), done.stderr


def _function_default_model(path, location: str) -> None:
    """A graph calling a local function whose body is Constant(value=@value): the default of
    ``value`` (FunctionProto.attribute_proto) is a tensor in external data at ``location``,
    which onnxruntime reads when it inlines the call."""
    from onnx import TensorProto, helper

    constant = helper.make_node("Constant", [], ["c"])
    constant.attribute.append(onnx.AttributeProto(name="value", ref_attr_name="value",
                                                  type=onnx.AttributeProto.TENSOR))
    function = helper.make_function("my.domain", "Leak", [], ["y"],
                                    [constant, helper.make_node("Cast", ["c"], ["y"], to=1)],
                                    [helper.make_opsetid("", 18)])
    default = onnx.AttributeProto(name="value", type=onnx.AttributeProto.TENSOR)
    default.t.name, default.t.data_type = "leak", TensorProto.UINT8
    default.t.dims.append(8)
    default.t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        default.t.external_data.add(key=key, value=value)
    function.attribute_proto.append(default)
    graph = helper.make_graph(
        [helper.make_node("Leak", [], ["raw"], domain="my.domain"),
         helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
         helper.make_node("Add", ["raw", "total"], ["logits"])], "leak",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [8])])
    model = helper.make_model(graph, functions=[function], opset_imports=[
        helper.make_opsetid("", 18), helper.make_opsetid("my.domain", 1)])
    model.ir_version = 9
    onnx.save(model, path)


def test_a_function_attribute_default_in_external_data_is_vetted(tmp_path):
    """FunctionProto.attribute_proto holds tensors too: the walk refused locations on the
    graph's tensors and the nodes' attributes, and let this one through (onnxruntime 1.17 read
    the file it named)."""
    from edgecnn.errors import BadInput
    from edgecnn.runtime.external_data import check_external_data

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.data").write_bytes(b"root:x:0:0:root")
    folder = tmp_path / "models"
    folder.mkdir()
    _function_default_model(folder / "model.onnx", "../outside/secret.data")
    with pytest.raises(BadInput, match="goes up out of the model's folder"):
        check_external_data(folder / "model.onnx")


def _length_field(number: int, payload: bytes) -> bytes:
    tag, size = number << 3 | 2, len(payload)
    varints = b""
    for value in (tag, size):
        while value >= 0x80:
            varints += bytes([value & 0x7F | 0x80])
            value >>= 7
        varints += bytes([value])
    return varints + payload


def _split_constant_model(path, location: str) -> None:
    """Constant(value=t) whose tensor t is written as two occurrences of the singular field
    AttributeProto.t: the first external at good.data, the second holding only a location.
    protobuf merges them into one tensor whose last location, ``location``, is read."""
    from onnx import TensorProto, helper

    first = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[1, 4],
                        data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "good.data"), ("offset", "0"), ("length", "16")):
        first.external_data.add(key=key, value=value)
    second = TensorProto()
    second.external_data.add(key="location", value=location)
    attribute = (helper.make_attribute("value", first).SerializeToString()
                 + _length_field(5, second.SerializeToString()))
    node = _length_field(2, b"logits") + _length_field(4, b"Constant") + _length_field(5, attribute)
    rest = helper.make_graph([], "g", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, [1, 4])]).SerializeToString()
    model = helper.make_model(onnx.GraphProto(), opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    model.ClearField("graph")
    path.write_bytes(model.SerializeToString() + _length_field(7, _length_field(1, node) + rest))


def test_a_tensor_split_over_two_occurrences_is_vetted_as_protobuf_merges_it(tmp_path):
    """The walk checked each occurrence alone: the first named good.data, the second was not
    external, and onnxruntime 1.17 read the merged tensor from ../outside/secret.data."""
    from edgecnn.errors import BadInput
    from edgecnn.runtime.external_data import check_external_data

    outside, folder = tmp_path / "outside", tmp_path / "models"
    outside.mkdir()
    folder.mkdir()
    (outside / "secret.data").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (folder / "good.data").write_bytes(bytes(16))
    _split_constant_model(folder / "model.onnx", "../outside/secret.data")
    merged = onnx.load(folder / "model.onnx", load_external_data=False)
    tensor = merged.graph.node[0].attribute[0].t
    assert [entry.value for entry in tensor.external_data if entry.key == "location"][-1] == (
        "../outside/secret.data")  # what a reader sees: the second location, last
    with pytest.raises(BadInput, match="goes up out of the model's folder"):
        check_external_data(folder / "model.onnx")
    _split_constant_model(folder / "model.onnx", "good.data")
    assert list(check_external_data(folder / "model.onnx")) == ["good.data"]


@pytest.mark.parametrize("command", [["quantize", "--mode", "fp16"], ["annotate"]])
@pytest.mark.parametrize("target", ["model.onnx", "model.onnx.data", "other.onnx"])
def test_an_output_over_the_input_or_its_data_is_refused(cli, tmp_path, dynamo_model, command,
                                                         target):
    """Writing the output as the model's own data file replaced the weights being read (the
    model then ran on garbage); ``other.onnx`` would get its data as other.onnx.data, so it
    names the data file the input reads when that is other.onnx.data. annotate writes the
    model alone (its data stays shared), so only the data file's own name is refused there."""
    folder = tmp_path / "models"
    folder.mkdir()
    location = "other.onnx.data" if target == "other.onnx" else "model.onnx.data"
    model = _with_location(dynamo_model, folder / "model.onnx", location)
    shutil.copy(dynamo_model.parent / "model.onnx.data", folder / location)
    if command[0] == "annotate" and target != "model.onnx.data":  # writes the model only
        assert cli("annotate", model, "-o", folder / target).code == 0  # (sharing the data)
        return
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    result = cli(command[0], model, "-o", folder / target, *command[1:])
    assert_one_line_error(result, 2, "would overwrite", "give another output path")
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_each_escaping_form_names_what_is_wrong(tmp_path, dynamo_model):
    from edgecnn.errors import BadInput
    from edgecnn.runtime.external_data import check_external_data

    for form, words in (("parent", "goes up out of the model's folder"),
                        ("absolute", "an absolute path"), ("symlink", "a link to")):
        model = _escaping_model(tmp_path / form, dynamo_model, form)
        with pytest.raises(BadInput, match=words):
            check_external_data(model)


def test_a_symlink_inside_the_folder_is_fine(tmp_path, dynamo_model):
    from edgecnn.runtime import Engine

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(dynamo_model.parent / "model.onnx.data", folder / "weights.bin")
    (folder / "link.data").symlink_to("weights.bin")
    model = _with_location(dynamo_model, folder / "model.onnx", "link.data")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = TinyClassifier()(torch.from_numpy(x)).numpy()
    outputs = Engine(model, "cpu").run(x)
    np.testing.assert_allclose(next(iter(outputs.values())), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
@pytest.mark.parametrize("command", ["info", "run", "bench"])
def test_missing_or_truncated_data_is_one_line(cli, tmp_path, dynamo_model, photo, damage,
                                               command):
    folder = tmp_path / "models"
    shutil.copytree(dynamo_model.parent, folder)
    data = folder / "model.onnx.data"
    if damage == "missing":
        data.unlink()
    else:
        data.write_bytes(data.read_bytes()[:100])
    args = {"info": [], "run": [photo, "--mean", "0.5", "0.5", "0.5"],
            "bench": ["--runs", "1", "--warmup", "0"]}[command]
    result = cli(command, folder / "model.onnx", *args)
    assert_one_line_error(result, 2, "model.onnx.data" if damage == "truncated" else "missing",
                          damage)


def test_serialized_bytes_with_external_data_are_refused(dynamo_model):
    from edgecnn.errors import BadInput
    from edgecnn.runtime.session import open_session

    with pytest.raises(BadInput, match="refers to external data"):
        open_session(dynamo_model.read_bytes())


def _disguised(model: Path, disguise: str) -> Path:
    """The escaping ``model`` rewritten so a naive walker gives up on it: protobuf parsers
    (onnxruntime's, the onnx package's) skip an unknown group field, and onnxruntime reads a
    tensor name that is not UTF-8; a checker that stops at either sees no external data."""
    data = model.read_bytes()
    if disguise == "group":
        data += bytes([0xA3, 0x06, 0xA4, 0x06])  # field 100: start group, end group
    else:
        loaded = onnx.load(str(model), load_external_data=False)
        name = loaded.graph.initializer[0].name
        data = data.replace(name.encode(), b"\xff" * len(name.encode()))  # every use of it
    model.write_bytes(data)
    return model


@pytest.mark.parametrize("disguise", ["group", "undecodable_name"])
def test_a_disguised_file_does_not_hide_an_escaping_location(tmp_path, dynamo_model, disguise):
    from edgecnn.errors import BadInput
    from edgecnn.runtime.external_data import check_external_data

    model = _disguised(_escaping_model(tmp_path, dynamo_model, "parent"), disguise)
    with pytest.raises(BadInput, match="goes up out of the model's folder"):
        check_external_data(model)


def test_a_location_that_is_not_utf8_is_refused(tmp_path, dynamo_model):
    from edgecnn.errors import BadInput
    from edgecnn.runtime.external_data import check_external_data

    model = _with_location(dynamo_model, tmp_path / "model.onnx", "Q" * 12)
    model.write_bytes(model.read_bytes().replace(b"Q" * 12, b"..\xff/secret.x"))
    with pytest.raises(BadInput, match="without a usable location"):
        check_external_data(model)


@pytest.mark.parametrize("tail, words", [(bytes([0xA3, 0x06]) * 10_000, "nested too deeply"),
                                         (bytes([0xA3, 0x06, 0xAC, 0x06]), "mismatched"),
                                         (bytes([0x0F]), "wire type 7")])
def test_a_file_that_is_not_protobuf_is_one_bounded_error(tmp_path, dynamo_model, tail, words):
    from edgecnn.errors import BadInput
    from edgecnn.runtime.external_data import check_external_data

    model = tmp_path / "model.onnx"
    model.write_bytes(dynamo_model.read_bytes() + tail)
    with pytest.raises(BadInput, match=f"as an ONNX model: not protobuf .*{words}"):
        check_external_data(model)


def test_a_file_of_zeros_is_refused_at_its_first_byte(tmp_path):
    """Field number 0 does not exist in protobuf: a sparse 1 GB file of zeros is refused at
    once, not walked byte by byte (it took seconds per 20 MB)."""
    import time

    from edgecnn.errors import BadInput
    from edgecnn.runtime.external_data import check_external_data

    zeros = tmp_path / "zeros.onnx"
    with open(zeros, "wb") as handle:
        handle.truncate(2**30)
    started = time.perf_counter()
    with pytest.raises(BadInput, match="not protobuf .*field number 0"):
        check_external_data(zeros)
    assert time.perf_counter() - started < 1
