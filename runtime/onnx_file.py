"""Torch-free helpers on ONNX models (the ``onnx`` package): the one place that loads a file,
reads its interface, opsets and edgecnn metadata, and tidies what tools leave behind.

The exporter, the quantizer, ``edgecnn check`` and ``edgecnn info`` all use these. The
runtime's session code does not import this module, so a device with onnxruntime alone (no
``onnx`` package) still runs models.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import onnx

from edgecnn.errors import BadInput, EdgecnnError, first_line
from edgecnn.runtime.external_data import check_external_data
from edgecnn.runtime.function_calls import check_function_calls
from edgecnn.runtime.files import atomic_model_output
from edgecnn.runtime.metadata import METADATA_KEY, ModelMetadata
from edgecnn.runtime.model_file import QUANTIZED_OPS, check_model_file, no_outputs

# The operator domains the ONNX standard defines; anything else is a custom op.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"})
DEFAULT_DOMAIN_NAMES = ("", "ai.onnx")  # two spellings of the default domain


def load_model(path: str | os.PathLike, *, external_data: bool = True) -> onnx.ModelProto:
    """The ModelProto at ``path`` (its external data too, unless ``external_data`` is False);
    BadInput, in one line, when the file is missing, empty, not ONNX or truncated, and when
    its external data is missing, truncated or outside its folder (``check_external_data``,
    before any of it is read)."""
    path = check_model_file(path)
    if external_data:
        check_external_data(path)
    check_function_calls(path)  # onnxruntime (the quantizer's sessions too) would inline them
    try:
        model = onnx.load(str(path), load_external_data=external_data)
    except Exception as error:  # protobuf DecodeError, truncated files, missing external data
        raise BadInput(f"{path} is not a readable ONNX model ({first_line(error, 200)})") from None
    if not model.graph.node and not model.graph.output:
        raise BadInput(f"{path} is not an ONNX model (empty graph)")
    if not model.graph.output:
        raise no_outputs(path)
    return model


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (older exporters also list initializers as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def dims(value: onnx.ValueInfoProto) -> list[int | None]:
    """A value's shape: ints for fixed axes, None for named or unknown ones."""
    return [dim.dim_value if dim.HasField("dim_value") else None
            for dim in value.type.tensor_type.shape.dim]


def image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto | None:
    """The graph input the edgecnn metadata names (``input.name``; a file from another exporter
    calls it ``input.1``, ``pixel_values``...), else the first; None without inputs."""
    inputs = graph_inputs(model)
    try:
        metadata = get_metadata(model)
    except BadInput:  # malformed metadata: whoever reads it reports that
        metadata = None
    named = [value for value in inputs if metadata and value.name == metadata.input.name]
    return (named or inputs or [None])[0]


def input_dims(model: onnx.ModelProto) -> list[int | None]:
    """The image input's shape (``dims`` of ``image_input``); [] for a graph without inputs."""
    value = image_input(model)
    return dims(value) if value is not None else []


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The image input's fixed batch size; None for a dynamic batch axis."""
    shape = input_dims(model)
    return shape[0] if shape else None


def opset_version(model: onnx.ModelProto, domain: str = "") -> int | None:
    """The version ``model`` imports of ``domain`` ("" or "ai.onnx": the default domain)."""
    names = DEFAULT_DOMAIN_NAMES if domain in DEFAULT_DOMAIN_NAMES else (domain,)
    return next((imp.version for imp in model.opset_import if imp.domain in names), None)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` to rewrite (or to hand to a tool that rewrites what it gets)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of ``node``'s attribute ``name`` (a list for repeated ones), else ``default``."""
    for item in node.attribute:
        if item.name == name:
            value = onnx.helper.get_attribute_value(item)
            return list(value) if isinstance(value, (list, tuple)) else value
    return default


def drop_unread_initializers(model: onnx.ModelProto, names: set[str]) -> None:
    """Remove the initializers among ``names`` that no node reads any more (onnxruntime warns
    about each one)."""
    read = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in read or init.name not in names]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def is_custom_domain(domain: str) -> bool:
    return domain not in STANDARD_DOMAINS


def quantized_ops(model: onnx.ModelProto) -> list[str]:
    """The ``model_file.QUANTIZED_OPS`` the main graph uses, sorted."""
    return sorted({node.op_type for node in model.graph.node if node.op_type in QUANTIZED_OPS})


def get_metadata(model: onnx.ModelProto, source: str = "model") -> ModelMetadata | None:
    """The edgecnn metadata (validated; BadInput naming the field when malformed), or None."""
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, source)


def set_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Store ``metadata`` under the ``edgecnn`` key, replacing any earlier entry."""
    kept = [prop for prop in model.metadata_props if prop.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=metadata.to_json())


def drop_initializer_value_info(model: onnx.ModelProto) -> None:
    """Remove value_info entries of initializers: they carry their own types, and stale copies
    (left by exporters and converters) break later shape inference."""
    initializers = {init.name for init in model.graph.initializer}
    kept = [value for value in model.graph.value_info if value.name not in initializers]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


def set_minimal_ir_version(model: onnx.ModelProto) -> None:
    """Lower the IR version to the oldest that the model's opsets allow.

    Exporters write the newest IR, which older runtimes refuse, although an opset-18 graph
    needs only IR 8. Custom domains do not constrain it.
    """
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import),
                                                           ignore_unknown=True)


def check_model(model: onnx.ModelProto | str | os.PathLike) -> None:
    """onnx.checker with strict, type-checked shape inference; EdgecnnError when invalid.

    Give a saved file's path where there is one: the checker then reads it directly instead
    of serializing the proto again (seconds for the 500 MB VGGs).
    """
    source = model if isinstance(model, onnx.ModelProto) else str(model)
    try:
        onnx.checker.check_model(source, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise EdgecnnError(f"the graph is not valid ONNX: {first_line(error)}") from error


# protobuf cannot serialize a message of 2 GB or more: such models keep their tensors outside.
PROTOBUF_LIMIT = 2**31 - 1


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s tensors are too large to live inside one protobuf file."""
    tensors = sum(len(init.raw_data) or init.ByteSize() for init in model.graph.initializer)
    return tensors > PROTOBUF_LIMIT - 64 * 2**20  # the graph itself needs room too


@contextlib.contextmanager
def writing_model(model: onnx.ModelProto, path: str | os.PathLike,
                  external_data: bool = False) -> Iterator[tuple[Path, int]]:
    """Save ``model`` for ``path`` and check it (``check_model``); yield (the written file, its
    size with the data) for more checks before it is moved into place, both files together
    (``atomic_model_output``). The tensors go to ``<name>.data`` beside it with
    ``external_data``, or when the model is too large for one file."""
    with atomic_model_output(path) as work:
        temporary = work / Path(path).name
        if external_data or needs_external_data(model):
            copy = copy_model(model)  # saving with external data empties the tensors it moves
            onnx.save_model(copy, str(temporary), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=f"{temporary.name}.data",
                            size_threshold=1024)
        else:
            onnx.save_model(model, str(temporary))
        check_model(temporary)
        yield temporary, sum(file.stat().st_size for file in work.iterdir())


def cut_at(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``tensors`` and which holds only the nodes, inputs
    and initializers they depend on (a VGG cut at its last conv leaves out the classifier's
    100M weights, which shape inference, serializing and the session would each copy)."""
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    kept, pending = set(), list(tensors)
    while pending:
        node = producers.get(pending.pop())
        if node is not None and id(node) not in kept:
            kept.add(id(node))
            pending.extend(node.input)
    nodes = [node for node in graph.node if id(node) in kept]
    read = {name for node in nodes for name in node.input} | set(tensors)
    cut = onnx.helper.make_model(
        onnx.helper.make_graph(
            nodes, graph.name, [value for value in graph.input if value.name in read], [],
            [init for init in graph.initializer if init.name in read]),
        opset_imports=list(model.opset_import), ir_version=model.ir_version,
        functions=list(model.functions))
    cut.metadata_props.extend(model.metadata_props)
    return with_outputs(cut, tensors)


def with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``tensors`` (types from shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {value.name: value for value in inferred.graph.value_info}
    augmented = copy_model(model)
    existing = {output.name for output in augmented.graph.output}
    for name in tensors:
        if name not in existing and name in types:
            augmented.graph.output.append(types[name])
            existing.add(name)
    return augmented
