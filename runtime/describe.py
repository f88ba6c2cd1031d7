"""``describe_model(path)``: what ``edgecnn info`` prints about an .onnx file. Torch-free.

Uses the onnx package when it is installed (opsets, custom ops, functions, parameter count)
and falls back to what onnxruntime reports (inputs, outputs, metadata) on a minimal device.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from edgecnn.errors import BadInput
from edgecnn.runtime.metadata import ModelMetadata

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"}


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise BadInput(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise BadInput(f"model file is empty: {path}")


def _shape(value_info) -> list:
    dims = value_info.type.tensor_type.shape.dim
    return [dim.dim_param or dim.dim_value for dim in dims]


def _describe_with_onnx(path: Path, onnx) -> dict:
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as error:
        raise BadInput(f"{path} is not a readable ONNX model ({type(error).__name__}: "
                       f"{str(error).splitlines()[0][:200] if str(error) else 'truncated?'})") from None
    if not model.graph.node and not model.graph.output:
        raise BadInput(f"{path} is not an ONNX model (no graph)")
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    elem_name = onnx.helper.tensor_dtype_to_np_dtype
    custom = Counter((node.domain, node.op_type) for node in graph.node
                     if node.domain not in STANDARD_DOMAINS)
    props = {prop.key: prop.value for prop in model.metadata_props}
    return {
        "inputs": [{"name": v.name, "shape": _shape(v),
                    "dtype": str(elem_name(v.type.tensor_type.elem_type))}
                   for v in graph.input if v.name not in initializers],
        "outputs": [{"name": v.name, "shape": _shape(v),
                     "dtype": str(elem_name(v.type.tensor_type.elem_type))} for v in graph.output],
        "opset_imports": {(imp.domain or "ai.onnx"): imp.version for imp in model.opset_import},
        "custom_ops": [{"domain": domain, "op": op, "count": count}
                       for (domain, op), count in sorted(custom.items())],
        "functions": [f"{function.domain}::{function.name}" for function in model.functions],
        "nodes": len(graph.node),
        "parameters": sum(_numel(init) for init in graph.initializer),
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "props": props,
    }


def _numel(tensor) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count


def _describe_with_onnxruntime(path: Path) -> dict:
    from edgecnn.runtime.session import load_session

    session = load_session(path)
    meta = session.get_modelmeta()
    return {
        "inputs": [{"name": v.name, "shape": v.shape, "dtype": v.type} for v in session.get_inputs()],
        "outputs": [{"name": v.name, "shape": v.shape, "dtype": v.type} for v in session.get_outputs()],
        "producer": meta.producer_name,
        "props": dict(meta.custom_metadata_map),
    }


def describe_model(path: str | os.PathLike) -> dict:
    """A JSON-ready description: metadata, inputs/outputs, opsets, custom ops, size."""
    path = Path(path)
    _check_file(path)
    try:
        import onnx
    except ImportError:  # minimal device install: onnxruntime only
        details = _describe_with_onnxruntime(path)
    else:
        details = _describe_with_onnx(path, onnx)
    metadata = ModelMetadata.from_props(details.pop("props"), str(path))
    return {"path": str(path), "size_bytes": path.stat().st_size,
            "metadata": None if metadata is None else asdict(metadata), **details}
