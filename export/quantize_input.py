"""The fp32 model ``quantize_model`` starts from: read, refused when already quantized, its
edgecnn metadata (or --input-size/--mean/--std for a model without it), --keep-float names."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import onnx

from edgecnn.errors import BadInput
from edgecnn.runtime.onnx_file import dims, get_metadata, graph_inputs, load_model, opset_version
from edgecnn.runtime import InputInfo, ModelMetadata

# Operators that mean a graph is already quantized (or fp16): quantizing twice is refused.
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                 "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd",
                 "DynamicQuantizeMatMul", "MatMulNBits"}


def load_float_model(path: str | os.PathLike) -> onnx.ModelProto:
    """The model at ``path``; BadInput when it is missing, unreadable or already quantized."""
    model = load_model(path)
    path = Path(path)
    metadata = get_metadata(model, str(path))
    if metadata is not None and metadata.precision != "fp32":
        raise BadInput(f"{path} is already {metadata.precision}; quantize the fp32 model instead")
    quantized = sorted({node.op_type for node in model.graph.node if node.op_type in QUANTIZED_OPS})
    if quantized:
        raise BadInput(f"{path} is already quantized (it has {', '.join(quantized)} nodes); "
                       "quantize the fp32 model instead")
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        raise BadInput(f"{path} already has fp16 weights; quantize the fp32 model instead")
    return model


def graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise BadInput(f"only single-input models can be quantized; this one has {len(inputs)} "
                       f"inputs ({', '.join(v.name for v in inputs)})")
    return inputs[0]


def _per_channel(values: Sequence[float] | None, channels: int, flag: str) -> list[float] | None:
    if values is None:
        return None
    values = [float(v) for v in values]
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise BadInput(f"{flag} takes 1 or {channels} values (one per channel), got {len(values)}")
    return values


def resolve_metadata(model: onnx.ModelProto, path: Path, input_size: Sequence[int] | None = None,
                     mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> ModelMetadata:
    """The model's edgecnn metadata, with --input-size/--mean/--std applied on top.

    A model edgecnn did not export has none: then --mean and --std are required, and
    --input-size too unless the graph input has fixed H and W.
    """
    value = graph_input(model)
    shape = dims(value)
    if len(shape) != 4:
        raise BadInput(f"{path}: input {value.name!r} has rank {len(shape)}; expected an NCHW image batch")
    metadata = get_metadata(model, str(path))
    if metadata is not None:
        metadata.check_graph({v.name: dims(v) for v in graph_inputs(model)},
                             dims(model.graph.output[0]), str(path))
    else:
        if shape[1] is None:
            raise BadInput(f"{path}: input {value.name!r} has no fixed channel count")
        missing = [flag for flag, given in (("--mean", mean), ("--std", std)) if given is None]
        if input_size is None and None in shape[2:]:
            missing.insert(0, "--input-size")
        if missing:
            raise BadInput(f"{path} has no edgecnn metadata: give {' '.join(missing)} so "
                           "calibration can preprocess images and the output can describe "
                           "its input")
        channels = shape[1]
        output_rank = len(dims(model.graph.output[0]))
        metadata = ModelMetadata(
            model=model.graph.name or path.stem,
            task="classification" if output_rank == 2 else "segmentation",
            opset=opset_version(model),
            input=InputInfo(name=value.name, shape=[channels, *shape[2:]],
                            color="RGB" if channels == 3 else "GRAY"))
    info = metadata.input
    channels = info.channels
    if input_size is not None:
        height, width = (int(v) for v in input_size)
        fixed = tuple(shape[2:])
        if None not in fixed and fixed != (height, width):
            raise BadInput(f"--input-size {height} {width} does not match the graph's fixed "
                           f"input {fixed[0]}x{fixed[1]}")
        info = replace(info, shape=[channels, height, width])
    info = replace(info, mean=_per_channel(mean, channels, "--mean") or info.mean,
                   std=_per_channel(std, channels, "--std") or info.std)
    if any(s <= 0 for s in info.std):
        raise BadInput(f"--std values must be > 0, got {info.std}")
    return replace(metadata, input=info)


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
            examples = ", ".join(names[:4])
            raise BadInput(f"--keep-float {entry!r} is neither a node name nor an op type of "
                           f"the model (op types: {', '.join(sorted(by_type))}; nodes: "
                           f"{examples}, ...; see `edgecnn info`)")
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
