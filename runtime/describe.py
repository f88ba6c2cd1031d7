"""``describe_model(path)``: what ``edgecnn info`` prints about an .onnx file. Torch-free.

Uses the onnx package when it is installed (opsets, custom ops, functions, parameter count)
and falls back to what onnxruntime reports (inputs, outputs, metadata) on a minimal device.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from edgecnn.runtime.external_data import check_external_data, model_size
from edgecnn.runtime.metadata import ModelMetadata
from edgecnn.runtime.model_file import check_model_file, metadata_props, probability_op


def _shape(value_info) -> list:
    return [dim.dim_param or dim.dim_value for dim in value_info.type.tensor_type.shape.dim]


def value_type(value_info) -> str:
    """The value's element type as numpy names it ("float32"), or what it is instead: a
    "sequence", "map" or "optional" value, an "undefined" or "unknown type N" element."""
    import onnx

    kind = value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        return {None: "unknown", "sequence_type": "sequence", "map_type": "map",
                "optional_type": "optional", "sparse_tensor_type": "sparse tensor"}.get(kind, kind)
    elem_type = value_info.type.tensor_type.elem_type
    if elem_type == onnx.TensorProto.UNDEFINED:
        return "undefined"
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except KeyError:
        return f"unknown type {elem_type}"


def _describe_with_onnx(path: Path) -> dict:
    from edgecnn.runtime.onnx_file import graph_inputs, is_custom_domain, load_model

    model = load_model(path, external_data=False)
    graph = model.graph
    custom = Counter((node.domain, node.op_type) for node in graph.node
                     if is_custom_domain(node.domain))
    props = {prop.key: prop.value for prop in model.metadata_props}
    return {
        "inputs": [{"name": v.name, "shape": _shape(v), "dtype": value_type(v)}
                   for v in graph_inputs(model)],
        "outputs": [{"name": v.name, "shape": _shape(v), "dtype": value_type(v)}
                    for v in graph.output],
        "opset_imports": {(imp.domain or "ai.onnx"): imp.version for imp in model.opset_import},
        "custom_ops": [{"domain": domain, "op": op, "count": count}
                       for (domain, op), count in sorted(custom.items())],
        "functions": [f"{function.domain}::{function.name}" for function in model.functions],
        "nodes": len(graph.node),
        "parameters": sum(math.prod(init.dims) for init in graph.initializer),
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "props": props,
    }


def _describe_with_onnxruntime(path: Path) -> dict:
    from edgecnn.runtime.session import load_session

    session = load_session(path)
    meta = session.get_modelmeta()
    return {
        "inputs": [{"name": v.name, "shape": v.shape, "dtype": v.type} for v in session.get_inputs()],
        "outputs": [{"name": v.name, "shape": v.shape, "dtype": v.type} for v in session.get_outputs()],
        "producer": meta.producer_name,
        "props": metadata_props(path),  # onnxruntime's map raises on text that is not UTF-8
    }


def describe_model(path: str | os.PathLike) -> dict:
    """A JSON-ready description: metadata, inputs/outputs, opsets, custom ops, size (the
    .onnx file and its external data files, listed under ``external_data``)."""
    path = check_model_file(path)
    data_files = check_external_data(path)
    try:
        import onnx  # noqa: F401
    except ImportError:  # minimal device install: onnxruntime only
        details = _describe_with_onnxruntime(path)
    else:
        details = _describe_with_onnx(path)
    metadata = ModelMetadata.from_props(details.pop("props"), str(path))
    if details["outputs"]:  # what `run` reports as they are (Engine.scores_are_probabilities)
        first = details["outputs"][0]
        op = probability_op(path, first["name"], first["shape"])
        first["probabilities"] = op is not None
        if op is not None:
            first["probability_op"] = op
    return {"path": str(path),
            "size_bytes": model_size(path),
            "external_data": list(data_files),
            "metadata": None if metadata is None else asdict(metadata), **details}
