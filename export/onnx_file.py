"""Torch-free helpers on ONNX models: metadata, IR version, validation.

Shared by the exporter and the quantizer; importing them does not import torch, so
``edgecnn quantize`` starts without it.
"""

from __future__ import annotations

import os

import onnx

from edgecnn.errors import EdgecnnError
from edgecnn.runtime.metadata import METADATA_KEY, ModelMetadata


def set_minimal_ir_version(model: onnx.ModelProto) -> None:
    """Lower the IR version to the oldest that the model's opsets allow.

    The exporter writes the newest IR (10), which older runtimes refuse (onnxruntime 1.17 reads
    up to 9) although an opset-18 graph needs only IR 8. Custom domains do not constrain it.
    """
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import),
                                                           ignore_unknown=True)


def set_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Store ``metadata`` under the ``edgecnn`` key, replacing any earlier entry."""
    kept = [prop for prop in model.metadata_props if prop.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=metadata.to_json())


def get_metadata(model: onnx.ModelProto, source: str = "model") -> ModelMetadata | None:
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, source)


def check_model(model: onnx.ModelProto | str | os.PathLike) -> None:
    """onnx.checker with strict, type-checked shape inference; EdgecnnError when invalid.

    Give a saved file's path where there is one: the checker then reads it directly instead
    of serializing the proto again (seconds for the 500 MB VGGs).
    """
    source = model if isinstance(model, onnx.ModelProto) else str(model)
    try:
        onnx.checker.check_model(source, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise EdgecnnError(f"exported graph is not valid ONNX: {str(error).splitlines()[0]}") from error


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (older exporters also list initializers as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def dims(value: onnx.ValueInfoProto) -> list[int | None]:
    """A value's shape: ints for fixed axes, None for named or unknown ones."""
    return [dim.dim_value if dim.HasField("dim_value") else None
            for dim in value.type.tensor_type.shape.dim]


def input_dims(model: onnx.ModelProto) -> list[int | None]:
    """The first graph input's shape (``dims``); [] for a graph without inputs."""
    inputs = graph_inputs(model)
    return dims(inputs[0]) if inputs else []


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The first graph input's fixed batch size; None for a dynamic batch axis."""
    shape = input_dims(model)
    return shape[0] if shape else None
