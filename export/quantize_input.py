"""The fp32 model ``quantize_model`` starts from: read, refused when already quantized, its
edgecnn metadata (or the preprocessing settings for a model without it), --keep-float names."""

from __future__ import annotations

import difflib
import os
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx

from edgecnn.errors import BadInput
from edgecnn.runtime.onnx_file import (
    dims, get_metadata, graph_inputs, load_model, opset_version, quantized_ops,
)
from edgecnn.runtime.model_file import graph_precision
from edgecnn.runtime import ModelMetadata
from edgecnn.runtime.describe import value_type
from edgecnn.runtime.engine import FIXED_BATCH_ADVICE, check_feed_bytes
from edgecnn.runtime.preprocess_settings import check_settings, metadata_from_settings

def load_float_model(path: str | os.PathLike) -> onnx.ModelProto:
    """The model at ``path``; BadInput when it is missing, unreadable or already quantized."""
    model = load_model(path)
    path = Path(path)
    metadata = get_metadata(model, str(path))
    if metadata is not None and metadata.precision != "fp32":
        raise BadInput(f"{path} is already {metadata.precision}; quantize the fp32 model instead")
    precision = graph_precision(path)  # what run and info call it too
    if precision == "int8":
        raise BadInput(f"{path} is already quantized (it has {', '.join(quantized_ops(model))} "
                       "nodes); quantize the fp32 model instead")
    if precision == "fp16":
        raise BadInput(f"{path} already has fp16 weights; quantize the fp32 model instead")
    kind = value_type(the_only_input(model))
    if kind != "float32":
        raise BadInput(f"{path}: its input is {kind}; quantize takes models whose input is "
                       "float32 (an image tensor)")
    return model


def the_only_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The graph's one input; BadInput for several, or for a negative or 0-sized axis."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise BadInput(f"only single-input models can be quantized; this one has {len(inputs)} "
                       f"inputs ({', '.join(v.name for v in inputs)})")
    tensor = inputs[0].type.tensor_type
    negative = [dim.dim_value for dim in tensor.shape.dim if dim.dim_value < 0]
    if negative:
        raise BadInput(f"input {inputs[0].name!r} has a negative dimension ({negative[0]}), which "
                       "ONNX does not allow")
    if any(dim.HasField("dim_value") and dim.dim_value == 0 for dim in tensor.shape.dim):
        raise BadInput(f"input {inputs[0].name!r} has an axis of size 0: there is nothing to "
                       "calibrate or compare on")
    return inputs[0]


def resolve_metadata(model: onnx.ModelProto, path: Path,
                     settings: Mapping | None = None) -> tuple[ModelMetadata, bool]:
    """The model's edgecnn metadata with the preprocessing ``settings`` (input_size, mean, std,
    layout, ...: edgecnn.runtime.preprocess_settings) applied on top, and whether it describes
    the model: False for a file edgecnn did not write, given no settings but input_size,
    whose metadata is only the defaults (enough to size random inputs, not to preprocess
    images)."""
    value = the_only_input(model)
    inputs = {value.name: dims(value)}
    output = dims(model.graph.output[0])
    metadata = get_metadata(model, str(path))
    given = check_settings(settings)
    if metadata is not None and not given:
        metadata.check_graph(inputs, output, str(path))
        resolved, describes = metadata, True
    else:
        resolved = replace(metadata_from_settings(inputs, output, given, base=metadata,
                                                  model=model.graph.name or path.stem,
                                                  source=str(path)), opset=opset_version(model))
        # input_size alone sizes the comparison's inputs: it says nothing of preprocessing
        describes = metadata is not None or bool(set(given) - {"input_size"})
    if (batch := inputs[value.name][0]) is not None:  # every run pads to it (calibration.batches)
        check_feed_bytes({value.name: ([batch, *resolved.input.shape], np.float32)},
                         FIXED_BATCH_ADVICE, prefix=f"{path}: the fixed batch of ")
    return resolved, describes


def resolve_keep_float(model: onnx.ModelProto, keep_float: Sequence[str]) -> list[str]:
    """Node names from ``keep_float`` entries that are node names or op types."""
    names = [node.name for node in model.graph.node]
    by_type: dict[str, list[str]] = {}
    for node in model.graph.node:
        by_type.setdefault(node.op_type, []).append(node.name)
    selected: list[str] = []
    for entry in keep_float:
        matches = [entry] if entry in names else by_type.get(entry)
        if not matches:
            close = difflib.get_close_matches(entry, [*names, *by_type], n=3)
            examples = ", ".join(close or names[:4])
            raise BadInput(f"--keep-float {entry!r} is neither a node name nor an op type of "
                           f"the model (op types: {', '.join(sorted(by_type))}; "
                           f"{'close names' if close else 'nodes'}: {examples}"
                           f"{'' if close else ', ...'})")
        selected += [name for name in matches if name not in selected]
    return selected


def name_unnamed_nodes(model: onnx.ModelProto) -> None:
    """onnxruntime's quantizer selects and excludes nodes by name: give every node one."""
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
