"""Quantization modes as a table of recipes: ``RECIPES[mode]``. docs/quantization.md explains
each choice; docs/contributing.md says how to add a mode (nothing else lists them)."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Sequence

import numpy as np
import onnx

from edgecnn.errors import BadInput, first_line
from edgecnn.export.calibration import InputSet, calibration_batches
from edgecnn.export.quantize_input import the_only_input
from edgecnn.export.quiet import silenced
from edgecnn.export.rgb_stem import DESCRIPTION as RGB_STEM, find_stem, finish, split_stem
from edgecnn.runtime.onnx_file import (
    copy_model, drop_initializer_value_info, fixed_batch, is_custom_domain, opset_version,
)

METHODS = ("minmax", "entropy", "percentile")
TARGETS = ("cpu", "openvino")  # the providers a static int8 file is tuned for (Int8Static.target)
PERCENTILE = 99.999  # the percentile method's clipping point (onnxruntime's default)
FP16_CHUNK = 1 << 16  # weights mapped to fp16 at a time (float16_weights)
# onnxruntime's quantizer writes per-channel QDQ (DequantizeLinear's axis) for any opset, but
# that axis exists from opset 13 on: an older file is converted first (int8_opset).
PER_CHANNEL_OPSET = 13

ProgressCallback = Callable[[str, int, int], None]  # (task, done, total)


@dataclass
class QuantizeJob:
    """What a recipe works on: the fp32 model and the options of one ``quantize_model`` call."""

    model: onnx.ModelProto
    workdir: Path  # a private temporary folder (the calibration cache lives here)
    calibration: InputSet | None = None
    keep_io_float: bool = True
    progress: ProgressCallback | None = None


class Recipe:
    """One quantization mode. Subclasses set the class attributes and implement ``quantize``."""

    mode: ClassVar[str]
    precision: ClassVar[str]  # what the written file is, and so the parity bound it must meet
    summary: ClassVar[str]  # for help texts
    needs_calibration: ClassVar[bool] = False
    exportable: ClassVar[bool] = False  # offered by `edgecnn export --quantize`

    def quantize(self, job: QuantizeJob, exclude: Sequence[str]) -> onnx.ModelProto:
        raise NotImplementedError

    def describe(self, job: QuantizeJob, kept: Sequence[str]) -> dict:
        """What the metadata's ``quantization`` entry records (besides ``kept_float``)."""
        raise NotImplementedError

    def input_dtype(self, job: QuantizeJob) -> type:
        """The dtype the quantized model's input takes."""
        return np.float32

    def float_model(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The fp32 model the recipe quantizes: ``model`` or an exact rewrite of it."""
        return model


def calibration_reader(name: str, chunks: list[np.ndarray], progress: ProgressCallback | None):
    from onnxruntime.quantization import CalibrationDataReader

    done = np.cumsum([0] + [len(chunk) for chunk in chunks])  # samples run before each chunk

    class Reader(CalibrationDataReader):
        """Feeds the calibration batches; reports the samples run as ("calibrating", n, total)."""

        def __init__(self):
            self.index = 0

        def get_next(self):
            if progress:
                progress("calibrating", int(done[self.index]), int(done[-1]))
            if self.index == len(chunks):
                return None
            self.index += 1
            return {name: chunks[self.index - 1]}

        def __len__(self):
            return len(chunks)

    return Reader()


def _stem_to_split(model: onnx.ModelProto, exclude: Sequence[str], recipe: Int8Static):
    """The RGB stem that ``int8_static`` splits (export/rgb_stem.py) for the CPU provider; not
    one kept in float, which the split would not speed up."""
    if not recipe.split_rgb_stem:
        return None
    stem = find_stem(model)
    return stem if stem is not None and stem.conv.name not in exclude else None


def int8_rewrites(model: onnx.ModelProto, exclude: Sequence[str],
                  recipe: Int8Static) -> list[str]:
    """What ``int8_static`` rewrites in ``model`` before quantizing it (for the metadata)."""
    return [RGB_STEM] if _stem_to_split(model, exclude, recipe) is not None else []


def int8_static(model: onnx.ModelProto, calibration: InputSet, recipe: Int8Static,
                exclude: Sequence[str], cache: Path,
                progress: ProgressCallback | None = None
                ) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Static QDQ quantization: the quantized model, and the float one it was quantized from
    (``model``, or its rewrite with the RGB stem split). The activation ranges are computed once
    and cached in ``cache`` (later calls with other ``exclude`` lists reuse them; a graph with
    the RGB stem split has other tensors, and a cache of its own next to ``cache``)."""
    from onnxruntime.quantization import (
        CalibrationMethod, QuantFormat, QuantType, quantize_static,
    )

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    name = the_only_input(model).name
    stem = _stem_to_split(model, exclude, recipe)
    if stem is not None:  # other tensors: calibrated (and cached) apart
        model, cache = split_stem(model, stem), cache.with_name(f"{cache.stem}-split{cache.suffix}")
    reader = None
    if not cache.is_file():
        reader = calibration_reader(name, calibration_batches(calibration.inputs,
                                                              fixed_batch(model)), progress)
    extra = {"CalibPercentile": PERCENTILE}
    output = cache.with_name(f"int8-{len(exclude)}.onnx")
    # onnxruntime's quantizers save the ModelProto they get with external data in a temporary
    # folder and leave its initializers pointing there: they get a copy, ours stays usable.
    with silenced(""):
        quantize_static(copy_model(model), output, reader, quant_format=QuantFormat.QDQ,
                        per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(exclude), calibrate_method=methods[recipe.method],
                        extra_options=extra, calibration_cache_path=cache)
    quantized = onnx.load(str(output))
    if stem is not None:
        finish(quantized, stem)
    return quantized, model


def int8_dynamic(model: onnx.ModelProto, exclude: Sequence[str], workdir: Path) -> onnx.ModelProto:
    """Weights int8 per channel offline; activation ranges computed at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output = workdir / "int8-dynamic.onnx"
    copy = copy_model(model)  # (see int8_static)
    # The dynamic quantizer transposes the Gemm weight but keeps the exporter's value_info
    # entry for it, and then its own shape inference fails ("(512) vs (1000)").
    drop_initializer_value_info(copy)
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


def float16_weights(values: np.ndarray, min_positive_val: float = 5.96e-08,
                    max_finite_val: float = 65504.0) -> np.ndarray:
    """onnxruntime's ``convert_np_to_float16``, bit for bit, in cache-sized chunks instead of its
    dozen full-size temporaries per weight (docs/quantization.md has the figures): magnitudes
    below ``min_positive_val`` go up to it, finite ones above ``max_finite_val`` down to it;
    0, inf and NaN stay."""
    flat = values.reshape(-1)
    result = np.empty(flat.shape, np.float16)
    for start in range(0, len(flat), FP16_CHUNK):
        part = flat[start:start + FP16_CHUNK]
        mapped = np.abs(part)
        kept = mapped == 0
        kept |= ~np.isfinite(mapped)
        np.clip(mapped, min_positive_val, max_finite_val, out=mapped)
        np.copysign(mapped, part, out=mapped)
        np.copyto(mapped, part, where=kept)
        result[start:start + FP16_CHUNK] = mapped
    return result.reshape(values.shape)


@contextlib.contextmanager
def _fast_weight_mapping() -> Iterator[None]:
    """The converter maps each weight through ``float16_weights`` meanwhile."""
    from onnxruntime.transformers import float16

    original = float16.convert_np_to_float16
    float16.convert_np_to_float16 = float16_weights
    try:
        yield
    finally:
        float16.convert_np_to_float16 = original


@functools.cache
def newest_int8_opset() -> int:
    """The newest standard opset at which onnxruntime's CPU kernels run QuantizeLinear and
    DequantizeLinear (onnxruntime 1.32: 27, while onnx defines 28), found by loading a
    two-node model at each opset from onnx's newest down."""
    import onnxruntime

    from onnx import TensorProto, helper

    for opset in range(onnx.defs.onnx_opset_version(), PER_CHANNEL_OPSET, -1):
        graph = helper.make_graph(
            [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"])], "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            [helper.make_tensor("scale", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("zero", TensorProto.UINT8, [], [0])])
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        with contextlib.suppress(Exception):  # NOT_IMPLEMENTED, or an opset it does not know
            onnxruntime.InferenceSession(probe.SerializeToString(),
                                         providers=["CPUExecutionProvider"])
            return opset
    return PER_CHANNEL_OPSET


def int8_opset(model: onnx.ModelProto, per_channel: bool) -> onnx.ModelProto:
    """``model`` at an opset its int8 QDQ file can be written and run at: from 13 for
    per-channel weights (PER_CHANNEL_OPSET) up to ``newest_int8_opset()``. Converted by
    onnx's version converter (the same computation in other op versions) when outside;
    BadInput when the converter cannot."""
    from onnx import version_converter

    current = opset_version(model)
    lowest, highest = (PER_CHANNEL_OPSET if per_channel else 0), newest_int8_opset()
    if current is None or lowest <= current <= highest:
        return model
    try:
        return version_converter.convert_version(model, min(max(current, lowest), highest))
    except Exception as error:  # the converter raises what its adapters raise
        if current < lowest:
            raise BadInput(f"the model's opset {current} is older than the {lowest} per-channel "
                           f"int8 needs, and onnx could not convert it ({first_line(error)}): "
                           f"quantize with per_tensor=True, or export the model at opset "
                           f"{lowest} or later") from None
        raise BadInput(f"the model's opset {current} is newer than the {highest} onnxruntime "
                       f"runs int8 (QuantizeLinear) at, and onnx could not convert it "
                       f"({first_line(error)}): export the model at opset {highest} or "
                       "older") from None


def to_fp16(model: onnx.ModelProto, exclude: Sequence[str], keep_io_float: bool) -> onnx.ModelProto:
    """onnxruntime's fp16 converter; custom-domain ops (and ``exclude``) stay fp32 behind Casts."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    custom = sorted({node.op_type for node in model.graph.node if is_custom_domain(node.domain)})
    with silenced(""), _fast_weight_mapping():
        converted = convert_float_to_float16(model, keep_io_types=keep_io_float,
                                             op_block_list=DEFAULT_OP_BLOCK_LIST + custom,
                                             node_block_list=list(exclude),
                                             disable_shape_infer=_fully_typed(model))
        # The converter appends its Cast nodes at the end; onnx.checker wants graph order.
        OnnxModel(converted).topological_sort(is_deterministic=True)
    # It also records fp16 value_info for the weights of blocked nodes, which it leaves fp32.
    drop_initializer_value_info(converted)
    return converted


# ---------------------------------------------------------------------------------------------
# The recipes


@dataclass(frozen=True)
class Int8Static(Recipe):
    """Static QDQ: int8 weights, uint8 activations with ranges calibrated on example inputs."""

    mode: ClassVar[str] = "int8"
    precision: ClassVar[str] = "int8"
    summary: ClassVar[str] = "static QDQ, calibrated"
    needs_calibration: ClassVar[bool] = True
    exportable: ClassVar[bool] = True

    method: str = "minmax"
    per_channel: bool = True  # one scale per output channel of every weight
    # 7-bit weights: x86 CPUs without VNNI multiply uint8 x int8 pairs into a saturating int16;
    # with |w| <= 63 two products never overflow it.
    reduce_range: bool = True
    # The provider the file is tuned for (TARGETS). For "cpu" the RGB stem is rewritten for
    # onnxruntime's fast int8 kernel (export/rgb_stem.py); OpenVINO runs the plain stem faster
    # (docs/openvino.md).
    target: str = "cpu"
    # Cross-layer equalization of consecutive conv pairs (exact in float) before quantizing
    # (export/equalize.py).
    equalize: bool = False
    # After quantizing, each conv's int32 bias absorbs its mean int8 error on the calibration
    # data, conv after conv (export/equalize.py; docs/quantization.md, "Bias correction").
    bias_correction: bool = True

    @property
    def split_rgb_stem(self) -> bool:
        return self.target == "cpu"

    def float_model(self, model: onnx.ModelProto) -> onnx.ModelProto:
        model = int8_opset(model, self.per_channel)
        if not self.equalize:
            return model
        from edgecnn.export.equalize import equalize_pairs

        return equalize_pairs(model)

    def quantize(self, job: QuantizeJob, exclude: Sequence[str]) -> onnx.ModelProto:
        cache = job.workdir / "calibration.json"
        quantized, float_model = int8_static(job.model, job.calibration, self, exclude, cache,
                                             job.progress)
        if not self.bias_correction:
            return quantized
        from edgecnn.export.bias_correction import correct_biases

        return correct_biases(float_model, quantized, job.calibration.inputs, job.progress)

    def describe(self, job: QuantizeJob, kept: Sequence[str]) -> dict:
        details = {"mode": "static", "format": "QDQ", "method": self.method,
                   "weights": "int8 symmetric " + ("per-channel" if self.per_channel else "per-tensor")
                              + (" (7-bit range)" if self.reduce_range else ""),
                   "activations": "uint8 asymmetric per-tensor",
                   "calibration": job.calibration.source,
                   "calibration_size": len(job.calibration), "target": self.target}
        if self.equalize:
            details["equalized"] = "cross-layer equalization of conv pairs"
        details["bias_correction"] = self.bias_correction
        rewrites = int8_rewrites(job.model, kept, self)
        if rewrites:
            details["graph_rewrites"] = rewrites
        if job.calibration.location:
            details["calibration_path"] = Path(job.calibration.location).name
        return details


class Int8Dynamic(Recipe):
    mode: ClassVar[str] = "int8-dynamic"
    precision: ClassVar[str] = "int8"
    summary: ClassVar[str] = "weights only, activation ranges at run time"

    def quantize(self, job: QuantizeJob, exclude: Sequence[str]) -> onnx.ModelProto:
        return int8_dynamic(job.model, exclude, job.workdir)

    def describe(self, job: QuantizeJob, kept: Sequence[str]) -> dict:
        return {"mode": "dynamic", "weights": "int8 symmetric per-channel",
                "activations": "uint8, range computed at run time"}


class Fp16(Recipe):
    mode: ClassVar[str] = "fp16"
    precision: ClassVar[str] = "fp16"
    summary: ClassVar[str] = "half-precision weights and math"
    exportable: ClassVar[bool] = True

    def quantize(self, job: QuantizeJob, exclude: Sequence[str]) -> onnx.ModelProto:
        return to_fp16(job.model, exclude, job.keep_io_float)

    def describe(self, job: QuantizeJob, kept: Sequence[str]) -> dict:
        return {"mode": "fp16", "io": "float32" if job.keep_io_float else "float16"}

    def input_dtype(self, job: QuantizeJob) -> type:
        return np.float32 if job.keep_io_float else np.float16


RECIPES: dict[str, Recipe] = {recipe.mode: recipe for recipe in (Int8Static(), Int8Dynamic(), Fp16())}
MODES = tuple(RECIPES)
EXPORT_MODES = tuple(mode for mode, recipe in RECIPES.items() if recipe.exportable)


def get_recipe(mode: str, *, method: str = "minmax", target: str = "cpu",
               per_tensor: bool = False, equalize: bool = False,
               bias_correction: bool | None = None) -> Recipe:
    """The recipe of ``mode`` (calibrated ones with ``method``, static int8 tuned for the
    ``target`` provider, with one weight scale per tensor instead of per channel, with
    cross-layer equalization, with bias correction or not: None, the recipe's default);
    BadInput when unknown or not static int8's."""
    if mode not in RECIPES:
        raise BadInput(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if method not in METHODS:
        raise BadInput(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if target not in TARGETS:
        raise BadInput(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    recipe = RECIPES[mode]
    for name, value in (("per_tensor", per_tensor), ("equalize", equalize),
                        ("bias_correction", bias_correction is not None)):
        if value and not isinstance(recipe, Int8Static):
            raise BadInput(f"{name} applies to mode int8 (static), not {mode}")
    if not isinstance(recipe, Int8Static):
        return recipe
    return replace(recipe, method=method, target=target, per_channel=not per_tensor,
                   equalize=equalize, bias_correction=recipe.bias_correction
                   if bias_correction is None else bias_correction)
