"""Hostile .onnx files: each is one clear line and exit 2 from every command that reads it, in
bounded time and memory; nothing is written for a file that cannot be used.

The files are tiny models (tests/tiny_models.py) with one part made hostile: a special file in
place of the model, metadata nested a hundred thousand deep, graphs nested past protobuf's
limit, a field whose declared length is 2**62, names too long for the file system, a graph
without outputs, types numpy has no name for, absurd fixed axes and invalid text.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from conftest import assert_one_line_error, run_console_script
from edgecnn.runtime.metadata import METADATA_KEY
from tiny_models import computing_12_classes, tiny_model

QUICK = 60  # seconds: every refusal here is immediate; a hang fails the test instead of CI


def _tiny(tmp_path: Path, name: str = "tiny.onnx", **options) -> Path:
    return tiny_model(tmp_path / name, **options).path


def _edited(source: Path, target: Path, edit) -> Path:
    """``source`` with ``edit(model)`` applied, saved unchecked to ``target``."""
    model = onnx.load(str(source))
    edit(model)
    onnx.save(model, str(target))
    return target


def _set_metadata(model: onnx.ModelProto, value: str) -> None:
    (entry,) = [prop for prop in model.metadata_props if prop.key == METADATA_KEY]
    entry.value = value


def _metadata(model: onnx.ModelProto) -> dict:
    (entry,) = [prop for prop in model.metadata_props if prop.key == METADATA_KEY]
    return json.loads(entry.value)


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8)).save(path)
    return path


@pytest.fixture
def labelled_set(tmp_path, image) -> Path:
    folder = tmp_path / "set"
    for label in ("a", "b", "c", "d"):  # the tiny models' four classes
        (folder / label).mkdir(parents=True)
        (folder / label / "one.png").write_bytes(image.read_bytes())
    return folder


def _commands(model: Path, image: Path, labelled_set: Path, tmp_path: Path) -> dict:
    return {"info": ["info", model],
            "run": ["run", model, image],
            "bench": ["bench", model, "--provider", "auto", "--runs", "1", "--warmup", "0"],
            "evaluate": ["evaluate", model, labelled_set, "--provider", "auto"],
            "quantize": ["quantize", model, "-o", tmp_path / "out-fp16.onnx", "--mode", "fp16"],
            "annotate": ["annotate", model, "-o", tmp_path / "out-annotated.onnx"]}


def _assert_refused(command: list, *fragments: str, tmp_path: Path) -> None:
    result = run_console_script(*map(str, command), timeout=QUICK)
    assert_one_line_error(result, 2, *fragments)
    assert not list(tmp_path.glob("out-*")), f"{command[0]} wrote output for a file it refused"


# ---- the model path is not a regular file --------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("command", ["info", "run", "bench", "evaluate", "quantize", "annotate"])
def test_a_special_file_as_the_model_is_refused_without_reading_it(tmp_path, image,
                                                                  labelled_set, kind, command):
    model = tmp_path / f"{kind}.onnx"
    if kind == "fifo":
        os.mkfifo(model)  # reading it would wait forever for a writer
    else:
        os.mknod(model, stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero's numbers: endless
    _assert_refused(_commands(model, image, labelled_set, tmp_path)[command],
                    "not a regular file", str(model), tmp_path=tmp_path)


# ---- nesting past every parser's limits ----------------------------------------------------

@pytest.mark.parametrize("command", ["info", "run", "bench"])
def test_metadata_json_nested_a_hundred_thousand_deep_is_one_line(tmp_path, image, command):
    model = _edited(_tiny(tmp_path), tmp_path / "deep.onnx",
                    lambda model: _set_metadata(model, "[" * 100_000))
    _assert_refused(_commands(model, image, tmp_path, tmp_path)[command], "metadata",
                    "nested", tmp_path=tmp_path)


def _deep_quantization_record(model: onnx.ModelProto) -> None:
    data = _metadata(model)
    data["quantization"] = json.loads('{"a":' * 900 + "1" + "}" * 900)
    _set_metadata(model, json.dumps(data))


@pytest.mark.parametrize("command", ["info", "run", "quantize"])
def test_a_quantization_record_nested_900_deep_is_one_line(tmp_path, image, command):
    model = _edited(_tiny(tmp_path), tmp_path / "deep.onnx", _deep_quantization_record)
    _assert_refused(_commands(model, image, tmp_path, tmp_path)[command], "metadata",
                    "nested", tmp_path=tmp_path)


def test_annotate_replaces_metadata_nested_too_deep(cli, tmp_path):
    model = _edited(_tiny(tmp_path), tmp_path / "deep.onnx", _deep_quantization_record)
    output = tmp_path / "annotated.onnx"
    result = cli("annotate", model, "-o", output, "--input-size", "8")
    assert result.code == 0, result.stderr
    assert _metadata(onnx.load(str(output)))["quantization"] is None


def _varint(number: int) -> bytes:
    out = bytearray()
    while number >= 0x80:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    return bytes(out + bytes([number]))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _nested_graphs(depth: int) -> bytes:
    """ModelProto bytes that add to the graph an If node whose then-branch holds an If node ...
    ``depth`` graphs deep: written by hand, as the protobuf library refuses to build it."""
    graph = b""
    for _ in range(depth):
        branch = _field(1, b"then_branch") + _field(6, graph) + _varint(20 << 3) + _varint(5)
        node = _field(1, b"cond") + _field(4, b"If") + _field(5, branch)  # input, op_type
        graph = _field(1, node)  # GraphProto.node
    return _field(7, graph)  # ModelProto.graph: a second occurrence merges into the first


@pytest.mark.parametrize("command", ["info", "run", "quantize"])
def test_graphs_nested_past_protobufs_limit_are_one_line(tmp_path, image, command):
    model = tmp_path / "nested.onnx"
    model.write_bytes(_tiny(tmp_path).read_bytes() + _nested_graphs(400))
    _assert_refused(_commands(model, image, tmp_path, tmp_path)[command], str(model),
                    "nested", tmp_path=tmp_path)


def _fanout(path: Path, depth: int) -> Path:
    """Local functions F0 .. F{depth-1}, each calling the next twice (the last: Identity),
    called once on the image: 2**(depth-1) nodes once onnxruntime inlines them (+2: pool, flatten)."""
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)]
    functions = [helper.make_function(
        "local", f"F{level}", ["x"], ["y"],
        [helper.make_node(f"F{level + 1}", ["x"], ["a"], domain="local"),
         helper.make_node(f"F{level + 1}", ["a"], ["y"], domain="local")]
        if level < depth - 1 else [helper.make_node("Identity", ["x"], ["y"])], opsets)
        for level in range(depth)]
    graph = helper.make_graph(
        [helper.make_node("F0", ["input"], ["x"], domain="local"),
         helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["scores"])], "fanout",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("command", ["run", "bench", "evaluate", "quantize"])
def test_functions_that_inline_to_2_39_nodes_are_refused_before_a_session(tmp_path, image,
                                                                        labelled_set, command):
    """A 2.5 KB file; onnxruntime inlined it forever, in native code that no signal stops."""
    model = _fanout(tmp_path / "fanout.onnx", 40)
    _assert_refused(_commands(model, image, labelled_set, tmp_path)[command], str(model),
                    "expand to 549,755,813,890 nodes once inlined", tmp_path=tmp_path)


def test_functions_a_real_model_calls_are_counted_and_run(tmp_path):
    from edgecnn.runtime import Engine
    from edgecnn.runtime.function_calls import _inlined_nodes

    model = _fanout(tmp_path / "small.onnx", 4)  # 8 Identity nodes, once inlined
    with open(model, "rb") as stream:
        assert _inlined_nodes(stream) == 8 + 2
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32)
    (scores,) = Engine(model, "cpu").run(x).values()
    np.testing.assert_allclose(scores, x.mean(axis=(2, 3)), rtol=1e-5)


def _zero_axis(model: onnx.ModelProto) -> None:
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 0


def _string_output(model: onnx.ModelProto) -> None:
    last = model.graph.output[0]
    model.graph.node.append(helper.make_node("Cast", [last.name], ["words"],
                                             to=TensorProto.STRING))
    last.name, last.type.tensor_type.elem_type = "words", TensorProto.STRING


def _no_classes(model: onnx.ModelProto) -> None:
    last = model.graph.output[0]
    model.graph.initializer.extend([helper.make_tensor(name, TensorProto.INT64, [1], [value])
                                    for name, value in (("zero", 0), ("one", 1))])
    model.graph.node.append(helper.make_node("Slice", [last.name, "zero", "zero", "one"],
                                             ["none"]))
    last.name = "none"
    last.type.tensor_type.shape.dim[1].dim_value = 0


@pytest.mark.parametrize("edit, fragment", [
    (_zero_axis, "input 'input' declares axis 2 of size 0"),
    (_string_output, "its first output 'words' holds strings, not scores"),
    (_no_classes, "its first output 'none' has 0 classes"),
])
@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_graphs_that_load_but_cannot_score_images_are_bad_input(tmp_path, image, labelled_set,
                                                                 edit, fragment, command):
    """They were internal errors (exit 1): onnxruntime's invalid dimensions, numpy's str
    subtraction, a maximum of an empty array (evaluate refuses 0 classes for 4 folders)."""
    if edit is _no_classes and command == "evaluate":
        fragment = "and the model 0 classes"
    model = _edited(_tiny(tmp_path), tmp_path / "edited.onnx", edit)
    _assert_refused(_commands(model, image, labelled_set, tmp_path)[command], fragment,
                    tmp_path=tmp_path)


# ---- lengths and names beyond the file and the file system ---------------------------------

@pytest.mark.parametrize("command", ["info", "run", "bench"])
def test_a_field_declaring_2_62_bytes_is_one_line(tmp_path, image, command):
    model = tmp_path / "long.onnx"
    # field 7 (the graph), wire type 2, then its declared length and a few bytes
    model.write_bytes(_tiny(tmp_path).read_bytes() + _varint(7 << 3 | 2) + _varint(2 ** 62)
                      + b"xy")
    _assert_refused(_commands(model, image, tmp_path, tmp_path)[command], str(model),
                    tmp_path=tmp_path)


@pytest.mark.parametrize("command", ["info", "run", "bench"])
def test_an_external_data_location_too_long_for_the_file_system_is_one_line(tmp_path, image,
                                                                            command):
    def edit(model):
        weight = model.graph.initializer[0]
        weight.data_location = TensorProto.EXTERNAL
        weight.ClearField("raw_data")
        weight.ClearField("float_data")
        for key, value in (("location", "a" * 5000), ("offset", "0"), ("length", "48")):
            weight.external_data.add(key=key, value=value)

    model = _edited(_tiny(tmp_path), tmp_path / "external.onnx", edit)
    _assert_refused(_commands(model, image, tmp_path, tmp_path)[command], "tensor 'W'",
                    "cannot be opened", tmp_path=tmp_path)


@pytest.mark.parametrize("command", ["run", "bench", "quantize"])
def test_what_onnxruntime_logs_before_refusing_a_file_stays_off_the_terminal(tmp_path, image,
                                                                             command):
    def edit(model):  # W claims 2**62 elements: onnxruntime logs an overflow, then raises
        weight = model.graph.initializer[0]
        del weight.dims[:]
        weight.dims.extend([2 ** 31, 2 ** 31, 1, 1])

    model = _edited(_tiny(tmp_path), tmp_path / "overflow.onnx", edit)
    result = run_console_script(*map(str, _commands(model, image, tmp_path, tmp_path)[command]),
                                timeout=QUICK)
    assert_one_line_error(result, 2, "cannot load", str(model))
    assert "\x1b" not in result.stderr and "onnxruntime_src" not in result.stderr


# ---- graphs onnxruntime loads but nothing can use ------------------------------------------

@pytest.mark.parametrize("command", ["run", "bench", "evaluate", "quantize"])
def test_a_graph_without_outputs_is_one_line(tmp_path, image, labelled_set, command):
    model = _edited(_tiny(tmp_path), tmp_path / "silent.onnx",
                    lambda model: model.graph.ClearField("output"))
    _assert_refused(_commands(model, image, labelled_set, tmp_path)[command], "no outputs",
                    tmp_path=tmp_path)


def _retype_input(elem_type: int | None, sequence: bool = False):
    def edit(model):
        value = model.graph.input[0]
        if sequence:
            element = onnx.TypeProto()
            element.CopyFrom(value.type)
            value.type.Clear()
            value.type.sequence_type.elem_type.CopyFrom(element)
        elif elem_type is None:
            value.type.Clear()
        else:
            value.type.tensor_type.elem_type = elem_type
    return edit


@pytest.mark.parametrize("case", ["undefined", "unknown", "cleared", "sequence"])
def test_info_describes_inputs_of_types_numpy_has_no_name_for(tmp_path, cli, case):
    edit = {"undefined": _retype_input(0), "unknown": _retype_input(999),
            "cleared": _retype_input(None), "sequence": _retype_input(None, sequence=True)}[case]
    model = _edited(_tiny(tmp_path), tmp_path / "typed.onnx", edit)
    result = cli("info", model, "--json")
    assert result.code == 0, result.stderr
    (described,) = json.loads(result.stdout)["inputs"]
    assert described["name"] == "input"
    assert described["dtype"] == {"undefined": "undefined", "unknown": "unknown type 999",
                                  "cleared": "unknown", "sequence": "sequence"}[case]


def test_quantize_refuses_a_negative_input_dimension(tmp_path):
    def edit(model):
        model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = -8

    model = _edited(_tiny(tmp_path), tmp_path / "negative.onnx", edit)
    _assert_refused(["quantize", model, "-o", tmp_path / "out-int8.onnx", "--mode", "int8",
                     "--calibration", "random"], "input 'input'", "-8", tmp_path=tmp_path)


def test_quantize_calls_declared_output_shapes_that_contradict_the_graph_bad_input(tmp_path):
    def edit(model):
        dims = model.graph.output[0].type.tensor_type.shape.dim
        dims.add().dim_value = 7  # logits declared [batch, 4, 7]: the graph makes [batch, 4]

    model = _edited(_tiny(tmp_path), tmp_path / "misdeclared.onnx", edit)
    _assert_refused(["quantize", model, "-o", tmp_path / "out-fp16.onnx", "--mode", "fp16"],
                    str(model), tmp_path=tmp_path)


@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_an_output_computing_more_classes_than_declared_is_bad_input(tmp_path, image,
                                                                     labelled_set, command):
    """run with labels (four, as declared) indexed past them, evaluate past its tally: an
    IndexError, shown as an internal error."""
    model = computing_12_classes(tmp_path / "lies.onnx", declared=4,
                                 labels=list("abcd") if command == "run" else None)
    commands = {"run": ["run", model, image], "evaluate": ["evaluate", model, labelled_set]}
    _assert_refused(commands[command], "computes 12 classes", "declares 4", tmp_path=tmp_path)


@pytest.mark.parametrize("command", ["run", "bench", "info", "quantize"])
@pytest.mark.parametrize("where", ["metadata", "producer"])
def test_text_that_is_not_utf8_is_read_not_an_internal_error(tmp_path, image, labelled_set,
                                                             command, where):
    """onnxruntime's metadata map and onnx's producer_name decode strictly: an unrelated
    metadata entry (or a producer name) of bytes that are not UTF-8 was a UnicodeDecodeError."""
    extra = (_field(14, _field(1, b"note") + _field(2, b"\xff\xfe")) if where == "metadata"
             else _field(2, b"\xff\xfetool"))
    model = tmp_path / "latin.onnx"
    model.write_bytes(_tiny(tmp_path).read_bytes() + extra)
    result = run_console_script(*map(str, _commands(model, image, labelled_set, tmp_path)[
        command]), timeout=QUICK)
    assert result.code == 0, result.stderr


def _bfloat16_at(model: onnx.ModelProto, where: str) -> None:
    graph = model.graph
    if where == "output":
        graph.node.append(helper.make_node("Cast", ["logits"], ["half"], to=TensorProto.BFLOAT16))
        graph.output[0].name = "half"
        graph.output[0].type.tensor_type.elem_type = TensorProto.BFLOAT16
    else:
        graph.node.insert(0, helper.make_node("Cast", ["half"], ["input"], to=TensorProto.FLOAT))
        graph.input[0].name = "half"
        graph.input[0].type.tensor_type.elem_type = TensorProto.BFLOAT16
        metadata = _metadata(model)
        metadata["input"]["name"] = "half"
        _set_metadata(model, json.dumps(metadata))


@pytest.mark.parametrize("command", ["run", "bench"])
@pytest.mark.parametrize("where", ["input", "output"])
def test_a_type_numpy_has_no_name_for_is_bad_input(tmp_path, image, labelled_set, command,
                                                   where):
    """bfloat16 (like float8 and int4): onnxruntime hands no numpy array out of it, nor takes
    one in; run said 'No corresponding Numpy type' as an internal error."""
    model = _edited(_tiny(tmp_path), tmp_path / "bf16.onnx", lambda m: _bfloat16_at(m, where))
    _assert_refused(_commands(model, image, labelled_set, tmp_path)[command],
                    f"{where} 'half' is tensor(bfloat16)", "numpy has no type for",
                    tmp_path=tmp_path)


def test_an_input_of_more_axes_than_numpy_holds_is_bad_input(tmp_path):
    """Rank 65: bench failed in numpy ('maximum supported dimension for an ndarray'), an
    internal error."""
    shape = [1] * 65
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "deep",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = tmp_path / "deep.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(model))
    _assert_refused(["bench", model, "--runs", "1", "--warmup", "0"], "input 'x' has 65 axes",
                    "numpy", tmp_path=tmp_path)


# ---- fixed axes too large to allocate ------------------------------------------------------

@pytest.mark.parametrize("command", ["run", "evaluate", "quantize", "bench"])
def test_a_fixed_batch_of_a_billion_is_refused_before_allocating(tmp_path, image, labelled_set,
                                                                 command):
    """The file fixes the batch: the line says so and to re-export (run, evaluate and bench
    told the user to give a smaller --batch, which a fixed axis ignores)."""
    model = _tiny(tmp_path, batch=10 ** 9)
    result = run_console_script(*map(str, _commands(model, image, labelled_set, tmp_path)[
        command]), timeout=QUICK)
    assert_one_line_error(result, 2, "GiB", "the fixed batch of ",
                          "export the model with a dynamic (or smaller) batch axis")
    assert "--batch" not in result.stderr and not list(tmp_path.glob("out-*"))


def test_bench_bounds_the_inputs_together_not_each_alone(tmp_path):
    inputs = [helper.make_tensor_value_info(f"x{index}", TensorProto.FLOAT, [1, 1, 20000, 20000])
              for index in range(6)]  # 1.5 GiB each, 9 GiB together
    nodes = [helper.make_node("Sum", [value.name for value in inputs], ["y"])]
    graph = helper.make_graph(nodes, "six", inputs, [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, [1, 1, 20000, 20000])])
    model = tmp_path / "six.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(model))
    _assert_refused(["bench", model, "--runs", "1", "--warmup", "0"], "GiB", tmp_path=tmp_path)


# ---- preprocessing values that break float32 or memory -------------------------------------

@pytest.mark.parametrize("field, value", [("scale", 1e300), ("std", [1e-50, 1.0, 1.0]),
                                          ("mean", [1e300, 0.0, 0.0])])
def test_values_finite_in_float64_but_not_in_float32_are_refused(tmp_path, image, field, value):
    def edit(model):
        data = _metadata(model)
        data["input"][field] = value
        _set_metadata(model, json.dumps(data))

    model = _edited(_tiny(tmp_path), tmp_path / "float32.onnx", edit)
    _assert_refused(["run", model, image], f"input.{field}", "float32", tmp_path=tmp_path)


def test_a_tiny_crop_fraction_is_refused_before_resizing(tmp_path, image):
    def edit(model):
        data = _metadata(model)
        data["input"]["crop_fraction"] = 0.0005  # 8 px / 0.0005: resize to 16,000 x 16,000 first
        _set_metadata(model, json.dumps(data))

    model = _edited(_tiny(tmp_path), tmp_path / "crop.onnx", edit)
    _assert_refused(["run", model, image], "crop_fraction", tmp_path=tmp_path)


def test_an_image_of_extreme_aspect_ratio_is_not_resized_whole(tmp_path):
    import resource
    import subprocess

    from conftest import CONSOLE_SCRIPT

    model = _tiny(tmp_path, size=(224, 224))
    strip = tmp_path / "strip.png"  # resizing all of it to a 256-pixel height: 5 G pixels
    Image.fromarray(np.full((1, 80_000, 3), 200, np.uint8)).save(strip)
    limit = 6 * 2**30

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([*CONSOLE_SCRIPT, "run", str(model), str(strip)], capture_output=True,
                          text=True, timeout=QUICK, preexec_fn=cap_memory)
    assert done.returncode == 0, done.stderr
    assert "1." in done.stdout


# ---- text -------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["info", "run"])
def test_a_lone_surrogate_in_the_metadata_is_printed_escaped(tmp_path, image, command):
    def edit(model):
        data = _metadata(model)
        data["model"] = "bad\ud800name"
        data["labels"] = ["x\udfff", "b", "c", "d"]
        _set_metadata(model, json.dumps(data))  # ASCII JSON: "\ud800" as an escape

    model = _edited(_tiny(tmp_path), tmp_path / "surrogate.onnx", edit)
    result = run_console_script(*map(str, _commands(model, image, tmp_path, tmp_path)[command]),
                                timeout=QUICK)
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "\\ud800" in result.stdout or "\\udfff" in result.stdout


def test_sessions_opened_from_many_threads_leave_stderr_where_it_was(tmp_path):
    import threading

    from edgecnn.runtime import Engine

    model = _tiny(tmp_path)
    before = os.fstat(2)
    engines: list = []
    threads = [threading.Thread(target=lambda: engines.append(Engine(model, "cpu")))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = os.fstat(2)
    assert len(engines) == 8
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


# What onnxruntime 1.32 raised for a Conv on a fixed 3x16384x16384 input under a 12 GB limit.
ARENA_FAILURE = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running "
                 "Conv node. Name:'logits_nchwc' Status Message: /onnxruntime_src/onnxruntime/"
                 "core/framework/bfc_arena.cc:360 void* onnxruntime::BFCArena::"
                 "AllocateRawInternal(size_t, bool, onnxruntime::Stream*) Failed to allocate "
                 "memory for requested buffer of size 17179869184")


@pytest.mark.parametrize("failure", ["onnxruntime", "numpy"])
def test_running_out_of_memory_is_one_line_not_an_internal_error(cli, tmp_path, monkeypatch,
                                                                 failure):
    """A file whose fixed axes ask for more memory than the machine has (the feed passes its
    4 GiB bound, the activations do not fit) fails in onnxruntime's arena or in numpy."""
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    def allocation_fails(*args, **kwargs):
        if failure == "numpy":
            raise MemoryError("Unable to allocate 16.0 GiB for an array with shape "
                              "(1, 16, 16384, 16384) and data type float32")
        raise Fail(ARENA_FAILURE)

    path, image = _tiny(tmp_path), tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    monkeypatch.setattr(onnxruntime.InferenceSession, "run", allocation_fails)
    for args in (("bench", path, "--runs", "1", "--warmup", "0"), ("run", path, image)):
        result = cli(*args)
        assert_one_line_error(result, 2, "out of memory")
        assert "internal error" not in result.stderr
        if failure == "onnxruntime":
            assert "running its Conv node logits_nchwc" in result.stderr
            assert "bfc_arena.cc" not in result.stderr
            assert "(16.0 GiB more)" in result.stderr  # the size it asked for
        else:
            assert "Unable to allocate 16.0 GiB" in result.stderr


def test_a_node_named_like_an_allocation_failure_is_not_out_of_memory(cli, tmp_path,
                                                                      monkeypatch):
    """Only onnxruntime's status message says why a run failed; a node name is the file's."""
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    def fails(*args, **kwargs):
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running "
                   "Conv node. Name:'bad_alloc' Status Message: Invalid input shape: {3}")

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", fails)
    result = cli("bench", _tiny(tmp_path), "--runs", "1", "--warmup", "0")
    assert result.code == 1 and "out of memory" not in result.stderr
    assert "Invalid input shape" in result.stderr


# What torch 2.13 raised for torch.empty(10**14, dtype=torch.uint8) on this machine.
TORCH_CPU_FAILURE = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                     "allocate memory: you tried to allocate 100000000000000 bytes. Error code 12 "
                     "(Cannot allocate memory)")


@pytest.mark.parametrize("stage", ["export", "check"])
def test_pytorch_running_out_of_memory_is_one_line(cli, tmp_path, monkeypatch, stage):
    """PyTorch's allocator failing (an eager run of a model at a huge input size) is out of
    memory too (it was an internal error in check, and "input ... does not work" in export)."""
    import torch

    def allocation_fails(self, *args, **kwargs):
        raise RuntimeError(TORCH_CPU_FAILURE)

    monkeypatch.setattr(torch.nn.Conv2d, "forward", allocation_fails)
    args = ("export", "lenet5", "-o", tmp_path / "l.onnx") if stage == "export" else (
        "check", "lenet5")
    result = cli(*args)
    assert_one_line_error(result, 2, "out of memory: PyTorch could not allocate 90.9 TiB")
    assert "alloc_cpu.cpp" not in result.stderr and not (tmp_path / "l.onnx").exists()
