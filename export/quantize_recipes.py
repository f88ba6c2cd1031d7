"""The three onnxruntime recipes behind ``quantize_model`` (docs/quantization.md explains each
choice), and running a ModelProto on a batch of inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from edgecnn.export.calibration import InputSet, batches
from edgecnn.export.quiet import silenced
from edgecnn.export.onnx_file import fixed_batch
from edgecnn.export.quantize_input import STANDARD_DOMAINS, graph_input
from edgecnn.export.rgb_stem import DESCRIPTION as RGB_STEM, find_stem, finish, split_stem
from edgecnn.runtime import load_session

PERCENTILE = 99.999  # the percentile method's clipping point (onnxruntime's default)

ProgressCallback = Callable[[str, int, int], None]  # (task, done, total)


def run_model(model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    """The first output of ``model`` on ``inputs`` (onnxruntime, CPU), in batches."""
    session = load_session(model.SerializeToString())
    name = session.get_inputs()[0].name
    fixed = fixed_batch(model)
    outputs = [session.run(None, {name: chunk})[0] for chunk in batches(inputs, fixed, 64)]
    return np.concatenate(outputs)[:len(inputs)].astype(np.float32)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's quantizers save the ModelProto they get with external data in a temporary
    folder and leave its initializers pointing there: they get a copy, ours stays usable."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _reader(name: str, chunks: list[np.ndarray], progress: ProgressCallback | None):
    from onnxruntime.quantization import CalibrationDataReader

    done = np.cumsum([0] + [len(chunk) for chunk in chunks])  # samples run before each chunk

    class Reader(CalibrationDataReader):
        """Feeds the calibration batches; reports the samples run as ("calibrating", n, total)."""

        def __init__(self):
            self.index = 0

        def report(self) -> None:
            if progress:
                progress("calibrating", int(done[self.index]), int(done[-1]))

        def get_next(self):
            self.report()
            if self.index == len(chunks):
                return None
            self.index += 1
            return {name: chunks[self.index - 1]}

        def __len__(self):
            return len(chunks)

    return Reader()


@dataclass
class Int8Recipe:
    """How ``int8`` mode calls onnxruntime's static quantizer (see docs/quantization.md)."""

    method: str = "minmax"
    per_channel: bool = True  # one scale per output channel of every weight
    # 7-bit weights: x86 CPUs without VNNI multiply uint8 x int8 pairs into a saturating int16;
    # with |w| <= 63 two products never overflow it.
    reduce_range: bool = True

    def describe(self) -> dict:
        return {"format": "QDQ", "method": self.method,
                "weights": "int8 symmetric " + ("per-channel" if self.per_channel else "per-tensor")
                           + (" (7-bit range)" if self.reduce_range else ""),
                "activations": "uint8 asymmetric per-tensor"}


def _stem_to_split(model: onnx.ModelProto, exclude: Sequence[str]):
    """The RGB stem that ``int8_static`` splits (export/rgb_stem.py); not one kept in float,
    which the split would not speed up."""
    stem = find_stem(model)
    return stem if stem is not None and stem.conv.name not in exclude else None


def int8_rewrites(model: onnx.ModelProto, exclude: Sequence[str]) -> list[str]:
    """What ``int8_static`` rewrites in ``model`` before quantizing it (for the metadata)."""
    return [RGB_STEM] if _stem_to_split(model, exclude) is not None else []


def int8_static(model: onnx.ModelProto, calibration: InputSet, recipe: Int8Recipe,
                exclude: Sequence[str], cache: Path,
                progress: ProgressCallback | None = None) -> onnx.ModelProto:
    """Static QDQ quantization; the activation ranges are computed once and cached in ``cache``
    (later calls with other ``exclude`` lists reuse them; a graph with the RGB stem split has
    other tensors, and a cache of its own next to ``cache``)."""
    from onnxruntime.quantization import (
        CalibrationMethod, QuantFormat, QuantType, quantize_static,
    )

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    name = graph_input(model).name
    stem = _stem_to_split(model, exclude)
    if stem is not None:  # other tensors: calibrated (and cached) apart
        model, cache = split_stem(model, stem), cache.with_name(f"{cache.stem}-split{cache.suffix}")
    reader = None
    if not cache.is_file():
        reader = _reader(name, batches(calibration.inputs, fixed_batch(model)), progress)
    extra = {"CalibPercentile": PERCENTILE}
    output = cache.with_name(f"int8-{len(exclude)}.onnx")
    with silenced(""):
        quantize_static(_copy(model), output, reader, quant_format=QuantFormat.QDQ,
                        per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(exclude), calibrate_method=methods[recipe.method],
                        extra_options=extra, calibration_cache_path=cache)
    quantized = onnx.load(str(output))
    if stem is not None:
        finish(quantized, stem)
    return quantized


def int8_dynamic(model: onnx.ModelProto, exclude: Sequence[str], workdir: Path) -> onnx.ModelProto:
    """Weights int8 per channel offline; activation ranges computed at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output = workdir / "int8-dynamic.onnx"
    copy = _copy(model)
    # The exporter also types the initializers in value_info. onnxruntime 1.31's dynamic
    # quantizer transposes the Gemm weight and keeps that entry, and then its own shape inference
    # fails ("(512) vs (1000)"). Initializers carry their shapes, so the entries are redundant.
    initializers = {init.name for init in copy.graph.initializer}
    kept = [value for value in copy.graph.value_info if value.name not in initializers]
    del copy.graph.value_info[:]
    copy.graph.value_info.extend(kept)
    with silenced(""):
        quantize_dynamic(copy, output, per_channel=True, weight_type=QuantType.QInt8,
                         nodes_to_exclude=list(exclude))
    return onnx.load(str(output))


def _fully_typed(model: onnx.ModelProto) -> bool:
    """Every tensor a node produces already has a type (value_info or graph output): then the
    fp16 converter's own shape inference (seconds for a 500 MB VGG) adds nothing. True for
    edgecnn's exports; files from elsewhere may need it."""
    typed = {value.name for value in (*model.graph.value_info, *model.graph.output)}
    return all(output in typed for node in model.graph.node for output in node.output if output)


def to_fp16(model: onnx.ModelProto, exclude: Sequence[str], keep_io_float: bool) -> onnx.ModelProto:
    """onnxruntime's fp16 converter; custom-domain ops (and ``exclude``) stay fp32 behind Casts."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    custom = sorted({node.op_type for node in model.graph.node if node.domain not in STANDARD_DOMAINS})
    with silenced(""):
        converted = convert_float_to_float16(model, keep_io_types=keep_io_float,
                                             op_block_list=DEFAULT_OP_BLOCK_LIST + custom,
                                             node_block_list=list(exclude),
                                             disable_shape_infer=_fully_typed(model))
        # The converter appends its Cast nodes at the end; onnx.checker wants graph order.
        OnnxModel(converted).topological_sort(is_deterministic=True)
    # It also records fp16 value_info for the weights of blocked nodes, which it leaves fp32.
    initializers = {init.name for init in converted.graph.initializer}
    kept = [value for value in converted.graph.value_info if value.name not in initializers]
    del converted.graph.value_info[:]
    converted.graph.value_info.extend(kept)
    return converted
