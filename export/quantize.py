"""fp32 ONNX -> int8 (static QDQ or dynamic) or fp16: ``quantize_model`` is ``edgecnn quantize``.

    quantize_model("resnet18.onnx", "resnet18_int8.onnx", mode="int8", calibration="calib/")
    quantize_model("resnet18.onnx", mode="fp16")

All the numerics are onnxruntime's: ``onnxruntime.quantization.quantize_static`` (QDQ format,
per-channel symmetric int8 weights, asymmetric uint8 activations, calibrated with minmax,
entropy or percentile), ``quantize_dynamic``, and onnxruntime's fp16 converter. This module
chooses the recipe (docs/quantization.md says why), feeds calibration data, keeps the edgecnn
metadata (precision, how it was calibrated), checks the result against the fp32 model, and
writes the file atomically. ``--accuracy-budget`` lives in ``edgecnn.export.sensitivity``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from edgecnn.errors import BadInput, CheckFailed
from edgecnn.export.calibration import (
    DEFAULT_CALIBRATION_SIZE, InputSet, load_calibration, load_validation, random_inputs,
)
from edgecnn.export.exporter import (
    ExportResult, check_model, export_model, get_metadata, set_metadata,
)
from edgecnn.export.files import atomic_output, check_output_path
from edgecnn.export.parity import REL_L2_TOLERANCE, ParityMetrics, compare
from edgecnn.runtime import InputInfo, ModelMetadata, load_session

MODES = ("int8", "int8-dynamic", "fp16")
METHODS = ("minmax", "entropy", "percentile")
PERCENTILE = 99.999  # the percentile method's clipping point (onnxruntime's default)
CALIBRATION_BATCH = 16  # samples per calibration run when the batch axis is dynamic
CHECK_SAMPLES = 64  # calibration samples the fp32-vs-quantized check runs on
# Operators that mean a graph is already quantized (or fp16): quantizing twice is refused.
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                 "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd",
                 "DynamicQuantizeMatMul", "MatMulNBits"}
STANDARD_DOMAINS = {"", "ai.onnx"}

StepCallback = Callable[[str], None]
ProgressCallback = Callable[[str, int, int], None]  # (task, done, total)
WarnCallback = Callable[[str], None]


@dataclass
class QuantizeResult:
    path: Path
    source: Path
    mode: str
    precision: str
    size_bytes: int
    source_size_bytes: int
    seconds: float
    quantization: dict  # what the metadata records
    parity: ParityMetrics | None = None  # quantized vs fp32 on the check inputs
    tolerance: float | None = None  # the rel_l2 bound the check enforced (fp16)
    accuracy: dict | None = None  # fp32 / quantized top-1 on the validation set
    kept_float: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / self.source_size_bytes

    def as_dict(self) -> dict:
        return {"path": str(self.path), "source": str(self.source), "mode": self.mode,
                "precision": self.precision, "size_bytes": self.size_bytes,
                "source_size_bytes": self.source_size_bytes,
                "size_ratio": round(self.size_ratio, 4), "seconds": round(self.seconds, 3),
                "quantization": self.quantization, "tolerance": self.tolerance,
                "parity": self.parity.as_dict() if self.parity else None,
                "accuracy": self.accuracy, "kept_float": self.kept_float,
                "warnings": self.warnings}


# ---------------------------------------------------------------------------------------------
# Reading and validating the input model


def load_float_model(path: str | os.PathLike) -> onnx.ModelProto:
    """The model at ``path``; BadInput when it is missing, unreadable or already quantized."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"model file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # protobuf DecodeError, truncated files, external data...
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise BadInput(f"{path} is not a readable ONNX model ({reason})") from None
    if not model.graph.node:
        raise BadInput(f"{path} is not an ONNX model (empty graph)")
    _reject_quantized(model, path)
    return model


def _reject_quantized(model: onnx.ModelProto, path: Path) -> None:
    metadata = get_metadata(model, str(path))
    if metadata is not None and metadata.precision != "fp32":
        raise BadInput(f"{path} is already {metadata.precision}; quantize the fp32 model instead")
    quantized = sorted({node.op_type for node in model.graph.node if node.op_type in QUANTIZED_OPS})
    if quantized:
        raise BadInput(f"{path} is already quantized (it has {', '.join(quantized)} nodes); "
                       "quantize the fp32 model instead")
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        raise BadInput(f"{path} already has fp16 weights; quantize the fp32 model instead")


def graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise BadInput(f"only single-input models can be quantized; this one has {len(inputs)} "
                       f"inputs ({', '.join(v.name for v in inputs)})")
    return inputs[0]


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    return [dim.dim_value if dim.HasField("dim_value") else None
            for dim in value.type.tensor_type.shape.dim]


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
    dims = _dims(value)
    if len(dims) != 4:
        raise BadInput(f"{path}: input {value.name!r} has rank {len(dims)}; expected an NCHW image batch")
    metadata = get_metadata(model, str(path))
    if metadata is None:
        if dims[1] is None:
            raise BadInput(f"{path}: input {value.name!r} has no fixed channel count")
        missing = [flag for flag, given in (("--mean", mean), ("--std", std)) if given is None]
        if input_size is None and None in dims[2:]:
            missing.insert(0, "--input-size")
        if missing:
            raise BadInput(f"{path} has no edgecnn metadata: give {' '.join(missing)} so "
                           "calibration can preprocess images and the output can describe "
                           "its input")
        channels = dims[1]
        output_rank = len(_dims(model.graph.output[0]))
        metadata = ModelMetadata(
            model=model.graph.name or path.stem,
            task="classification" if output_rank == 2 else "segmentation",
            opset=_default_opset(model),
            input=InputInfo(name=value.name, shape=[channels, *dims[2:]],
                            color="RGB" if channels == 3 else "GRAY"))
    info = metadata.input
    channels = info.channels
    if input_size is not None:
        height, width = (int(v) for v in input_size)
        fixed = tuple(dims[2:])
        if None not in fixed and fixed != (height, width):
            raise BadInput(f"--input-size {height} {width} does not match the graph's fixed "
                           f"input {fixed[0]}x{fixed[1]}")
        info = replace(info, shape=[channels, height, width])
    info = replace(info, mean=_per_channel(mean, channels, "--mean") or info.mean,
                   std=_per_channel(std, channels, "--std") or info.std)
    if any(s <= 0 for s in info.std):
        raise BadInput(f"--std values must be > 0, got {info.std}")
    return replace(metadata, input=info)


def _default_opset(model: onnx.ModelProto) -> int:
    return next(imp.version for imp in model.opset_import if imp.domain in STANDARD_DOMAINS)


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


def _name_unnamed_nodes(model: onnx.ModelProto) -> None:
    """onnxruntime's quantizer selects and excludes nodes by name: give every node one."""
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


# ---------------------------------------------------------------------------------------------
# Running models on batches


def _batch_size(model: onnx.ModelProto) -> int | None:
    """The graph's fixed batch size, or None for a dynamic batch axis."""
    return _dims(graph_input(model))[0]


def batches(inputs: np.ndarray, fixed: int | None, size: int = CALIBRATION_BATCH) -> list[np.ndarray]:
    """``inputs`` in chunks: of ``size`` for a dynamic batch axis, or exactly ``fixed`` samples
    (the last chunk padded by repeating samples from the start) for a fixed one."""
    if fixed is None:
        return [inputs[start:start + size] for start in range(0, len(inputs), size)]
    chunks = []
    for start in range(0, len(inputs), fixed):
        indices = np.arange(start, start + fixed) % len(inputs)
        chunks.append(inputs[indices])
    return chunks


def run_model(model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    """The first output of ``model`` on ``inputs`` (onnxruntime, CPU), in batches."""
    session = load_session(model.SerializeToString())
    name = session.get_inputs()[0].name
    fixed = _batch_size(model)
    outputs = [session.run(None, {name: chunk})[0] for chunk in batches(inputs, fixed, 64)]
    return np.concatenate(outputs)[:len(inputs)].astype(np.float32)


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=1) == labels))


@contextlib.contextmanager
def _quiet_onnxruntime():
    """onnxruntime.quantization logs advice on the root logger and prints progress on stdout;
    keep the CLI output (one JSON object under --json) clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


# ---------------------------------------------------------------------------------------------
# The three recipes (docs/quantization.md explains each choice)


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


def int8_static(model: onnx.ModelProto, calibration: InputSet, recipe: Int8Recipe,
                exclude: Sequence[str], cache: Path,
                progress: ProgressCallback | None = None) -> onnx.ModelProto:
    """Static QDQ quantization; the activation ranges are computed once and cached in ``cache``
    (later calls with other ``exclude`` lists reuse them)."""
    from onnxruntime.quantization import (
        CalibrationMethod, QuantFormat, QuantType, quantize_static,
    )

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    name = graph_input(model).name
    reader = None
    if not cache.is_file():
        reader = _reader(name, batches(calibration.inputs, _batch_size(model)), progress)
    extra = {"CalibPercentile": PERCENTILE}
    output = cache.with_name(f"int8-{len(exclude)}.onnx")
    with _quiet_onnxruntime():
        quantize_static(_copy(model), output, reader, quant_format=QuantFormat.QDQ,
                        per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(exclude), calibrate_method=methods[recipe.method],
                        extra_options=extra, calibration_cache_path=cache)
    return onnx.load(str(output))


def int8_dynamic(model: onnx.ModelProto, exclude: Sequence[str], workdir: Path) -> onnx.ModelProto:
    """Weights int8 per channel offline; activation ranges computed at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output = workdir / "int8-dynamic.onnx"
    with _quiet_onnxruntime():
        quantize_dynamic(_copy(model), output, per_channel=True, weight_type=QuantType.QInt8,
                         nodes_to_exclude=list(exclude))
    return onnx.load(str(output))


def to_fp16(model: onnx.ModelProto, exclude: Sequence[str], keep_io_float: bool) -> onnx.ModelProto:
    """onnxruntime's fp16 converter; custom-domain ops (and ``exclude``) stay fp32 behind Casts."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from onnxruntime.transformers.onnx_model import OnnxModel

    custom = sorted({node.op_type for node in model.graph.node if node.domain not in STANDARD_DOMAINS})
    with _quiet_onnxruntime():
        converted = convert_float_to_float16(model, keep_io_types=keep_io_float,
                                             op_block_list=DEFAULT_OP_BLOCK_LIST + custom,
                                             node_block_list=list(exclude))
        # The converter appends its Cast nodes at the end; onnx.checker wants graph order.
        OnnxModel(converted).topological_sort(is_deterministic=True)
    # It also records fp16 value_info for the weights of blocked nodes, which it leaves fp32.
    initializers = {init.name for init in converted.graph.initializer}
    kept = [value for value in converted.graph.value_info if value.name not in initializers]
    del converted.graph.value_info[:]
    converted.graph.value_info.extend(kept)
    return converted


# ---------------------------------------------------------------------------------------------
# The public entry point


def default_output(source: Path, mode: str) -> Path:
    """``model.onnx`` -> ``model_int8.onnx`` / ``model_int8_dynamic.onnx`` / ``model_fp16.onnx``."""
    return source.with_name(f"{source.stem}_{mode.replace('-', '_')}.onnx")


def _check_options(mode: str, method: str, accuracy_budget: float | None,
                   validation: object, calibration_size: int | None) -> None:
    if mode not in MODES:
        raise BadInput(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if method not in METHODS:
        raise BadInput(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if accuracy_budget is not None:
        if not 0 <= accuracy_budget <= 100:
            raise BadInput(f"--accuracy-budget is in top-1 percentage points (0-100), got {accuracy_budget}")
        if validation is None:
            raise BadInput("--accuracy-budget needs --validation (a labelled .npz or class folders)")
    if calibration_size is not None and calibration_size < 1:
        raise BadInput(f"--calibration-size must be >= 1, got {calibration_size}")


def _accuracy(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray,
              budget: float | None) -> dict:
    fp32, quantized = top1_accuracy(reference, labels), top1_accuracy(candidate, labels)
    return {"samples": len(labels), "fp32": fp32, "quantized": quantized,
            "drop_points": round(100 * (fp32 - quantized), 4), "budget_points": budget}


def _finish(quantized: onnx.ModelProto, source: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Metadata in, names and validity checked: the file must stand in for the fp32 one."""
    def names(graph_model: onnx.ModelProto) -> list[str]:
        return [graph_input(graph_model).name] + [v.name for v in graph_model.graph.output]

    if names(quantized) != names(source):
        raise CheckFailed(f"quantization renamed the inputs/outputs {names(source)} -> "
                          f"{names(quantized)}; nothing written")
    set_metadata(quantized, replace(metadata, opset=_default_opset(quantized)))
    check_model(quantized)


def quantize_model(model_path: str | os.PathLike, output_path: str | os.PathLike | None = None, *,
                   mode: str = "int8", calibration: str | os.PathLike | None = None,
                   calibration_size: int | None = DEFAULT_CALIBRATION_SIZE,
                   method: str = "minmax", keep_float: Sequence[str] = (),
                   accuracy_budget: float | None = None,
                   validation: str | os.PathLike | None = None, keep_io_float: bool = True,
                   input_size: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, check: bool = True, seed: int = 0,
                   recipe: Int8Recipe | None = None, on_step: StepCallback | None = None,
                   on_progress: ProgressCallback | None = None,
                   on_warning: WarnCallback | None = None) -> QuantizeResult:
    """Quantize an fp32 .onnx file; see ``edgecnn quantize --help`` for the options.

    mode: "int8" (static QDQ, needs ``calibration``: an image folder, a .npy/.npz of inputs, or
        "random"), "int8-dynamic" (weights only, no calibration) or "fp16".
    keep_float: node names or op types left in float.
    accuracy_budget: top-1 percentage points int8 may lose on ``validation``; the fewest
        weighted layers are kept in float to stay within it (CheckFailed when impossible).
    keep_io_float: fp16 only: the graph input and output stay float32 (int8 QDQ models always
        take and return float32).
    input_size, mean, std: override the metadata; required for a model without it.
    check: fp16 must match fp32 within rel_l2 5e-3 on a check batch (CheckFailed otherwise).
    Raises BadInput before anything is written; nothing is left behind on any failure.
    """
    started = time.perf_counter()
    step = on_step or (lambda message: None)
    messages: list[str] = []

    def warn(message: str) -> None:
        messages.append(message)
        (on_warning or (lambda text: warnings.warn(text, stacklevel=3)))(message)

    _check_options(mode, method, accuracy_budget, validation, calibration_size)
    source_path = Path(model_path)
    output = check_output_path(output_path or default_output(source_path, mode))
    if output.resolve() == source_path.resolve():
        raise BadInput(f"the output would overwrite the input model {source_path}; give another -o")
    step("reading the model")
    model = load_float_model(source_path)
    _name_unnamed_nodes(model)
    metadata = resolve_metadata(model, source_path, input_size, mean, std)
    excluded = resolve_keep_float(model, keep_float)
    validation_set = None
    if validation is not None:
        if metadata.task != "classification":
            raise BadInput("--validation measures top-1 accuracy: it needs a classification model")
        step("loading the validation set")
        validation_set = load_validation(validation, metadata.input, metadata.labels, warn=warn)
    calibration_set = None
    if mode == "int8":
        if calibration is None:
            raise BadInput("int8 needs calibration data: --calibration FOLDER (images), "
                           "FILE.npy/.npz (inputs) or random")
        step("loading calibration data")
        calibration_set = load_calibration(calibration, metadata.input, calibration_size,
                                           seed=seed, warn=warn)
    elif calibration is not None:
        warn(f"--calibration is ignored by --mode {mode} (only int8 calibrates)")

    if validation_set is not None:
        check_inputs = validation_set.inputs
    elif calibration_set is not None:
        check_inputs = calibration_set.inputs[:CHECK_SAMPLES]
    else:
        check_inputs = random_inputs(metadata.input, 8, seed)
    step("running the fp32 model")
    reference = run_model(model, check_inputs)

    details: dict = {"mode": {"int8": "static", "int8-dynamic": "dynamic"}.get(mode, mode)}
    kept = list(excluded)
    with tempfile.TemporaryDirectory(prefix="edgecnn-quantize-") as workdir:
        workdir = Path(workdir)
        if mode == "int8":
            recipe = replace(recipe or Int8Recipe(), method=method)
            cache = workdir / "calibration.json"

            def quantize(exclude: list[str]) -> onnx.ModelProto:
                return int8_static(model, calibration_set, recipe, exclude, cache, on_progress)

            if accuracy_budget is not None:
                from edgecnn.export.sensitivity import BudgetSearch, candidate_layers

                step("searching the layers to keep in float")
                search = BudgetSearch(quantize, lambda candidate: run_model(candidate, check_inputs),
                                      validation_set.labels, reference, accuracy_budget,
                                      base=excluded, progress=on_progress)
                best = search.run(candidate_layers(model, excluded))
                quantized, kept = best.model, [*excluded, *best.kept]
                details["search_trials"] = search.trials
            else:
                step("quantizing (int8 static, QDQ)")
                quantized = quantize(excluded)
            details.update(recipe.describe(), calibration=calibration_set.source,
                           calibration_size=len(calibration_set))
            if calibration_set.location:
                details["calibration_path"] = Path(calibration_set.location).name
        elif mode == "int8-dynamic":
            step("quantizing (int8 dynamic)")
            quantized = int8_dynamic(model, excluded, workdir)
            details.update(weights="int8 symmetric per-channel",
                           activations="uint8, range computed at run time")
        else:
            step("converting to fp16")
            quantized = to_fp16(model, excluded, keep_io_float)
            details["io"] = "float32" if keep_io_float else "float16"
    details["kept_float"] = kept

    step("checking against fp32")
    candidate = run_model(quantized, check_inputs.astype(
        np.float16 if mode == "fp16" and not keep_io_float else np.float32))
    parity = compare(reference, candidate)
    accuracy = None
    if validation_set is not None:
        accuracy = _accuracy(reference, candidate, validation_set.labels, accuracy_budget)
        if accuracy_budget is not None and accuracy["drop_points"] > accuracy_budget + 1e-9:
            raise CheckFailed(f"{mode} loses {accuracy['drop_points']:.2f} top-1 points on the "
                              f"validation set > budget {accuracy_budget:g}; nothing written")
    tolerance = REL_L2_TOLERANCE["fp16"] if mode == "fp16" and check else None
    if tolerance is not None and not parity.rel_l2 <= tolerance:
        raise CheckFailed(f"fp16 differs from fp32: rel_l2 {parity.rel_l2:.3g} > {tolerance:g} "
                          "(keep sensitive layers in float with --keep-float, or --no-check); "
                          "nothing written")
    precision = "fp16" if mode == "fp16" else "int8"
    _finish(quantized, model, replace(metadata, precision=precision, quantization=details))
    with atomic_output(output) as temp_path:
        onnx.save_model(quantized, temp_path)
        size = temp_path.stat().st_size
    return QuantizeResult(path=output, source=source_path, mode=mode, precision=precision,
                          size_bytes=size, source_size_bytes=source_path.stat().st_size,
                          seconds=time.perf_counter() - started, quantization=details,
                          parity=parity, tolerance=tolerance, accuracy=accuracy,
                          kept_float=kept, warnings=messages)


EXPORT_MODES = ("int8", "fp16")


def export_quantized(name: str, output: str | os.PathLike | None = None, *, quantize: str,
                     calibration: str | os.PathLike | None = None,
                     calibration_size: int | None = DEFAULT_CALIBRATION_SIZE,
                     method: str = "minmax", on_step: StepCallback | None = None,
                     on_progress: ProgressCallback | None = None,
                     on_warning: WarnCallback | None = None, **export_options) -> ExportResult:
    """``edgecnn export NAME --quantize int8|fp16``: export_model to a temporary fp32 file, then
    quantize_model onto ``output`` (default ``NAME_int8.onnx``). Only the quantized file is
    written; the result's ``extra["quantization"]`` is quantize_model's report."""
    if quantize not in EXPORT_MODES:
        raise BadInput(f"--quantize must be one of {', '.join(EXPORT_MODES)}, got {quantize!r}")
    _check_options(quantize, method, None, None, calibration_size)
    output = check_output_path(output or f"{name}_{quantize}.onnx")
    if quantize == "int8" and calibration is None:
        raise BadInput("--quantize int8 needs --calibration FOLDER (images), FILE.npy/.npz "
                       "(inputs) or random")
    if calibration is not None and str(calibration) != "random" and not Path(calibration).exists():
        raise BadInput(f"calibration path not found: {calibration}")
    with tempfile.TemporaryDirectory(prefix="edgecnn-export-") as workdir:
        exported = export_model(name, Path(workdir) / f"{name}.onnx", on_step=on_step,
                                **export_options)
        quantized = quantize_model(exported.path, output, mode=quantize, calibration=calibration,
                                   calibration_size=calibration_size, method=method,
                                   seed=export_options.get("seed", 0), on_step=on_step,
                                   on_progress=on_progress, on_warning=on_warning)
    report = quantized.as_dict()
    report["source"] = None  # the fp32 file was temporary
    exported.extra["quantization"] = report
    return replace(exported, path=output, size_bytes=quantized.size_bytes,
                   seconds=exported.seconds + quantized.seconds)
