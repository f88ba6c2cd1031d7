"""fp32 ONNX -> int8 (static QDQ or dynamic) or fp16: ``quantize_model`` is ``edgecnn quantize``.

    quantize_model("resnet18.onnx", "resnet18_int8.onnx", mode="int8", calibration="calib/")
    quantize_model("resnet18.onnx", mode="fp16")

All the numerics are onnxruntime's: ``onnxruntime.quantization.quantize_static`` (QDQ format,
per-channel symmetric int8 weights, asymmetric uint8 activations, calibrated with minmax,
entropy or percentile), ``quantize_dynamic``, and onnxruntime's fp16 converter. This module
chooses the recipe (docs/quantization.md says why), feeds calibration data, keeps the edgecnn
metadata (precision, how it was calibrated), checks the result against the fp32 model, and
writes the file atomically. The recipes live in ``quantize_recipes``, reading the fp32 model in
``quantize_input`` and ``--accuracy-budget`` in ``sensitivity``.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import onnx

from edgecnn.errors import BadInput, CheckFailed
from edgecnn.export.calibration import (
    DEFAULT_CALIBRATION_SIZE, RANDOM, existing_source, load_calibration, load_validation,
    random_inputs,
)
from edgecnn.export.onnx_file import check_model, set_metadata, set_minimal_ir_version
from edgecnn.export.files import atomic_output, check_output_path
from edgecnn.export.parity import REL_L2_TOLERANCE, ParityMetrics, compare
from edgecnn.export.quantize_input import (
    default_opset, graph_input, load_float_model, name_unnamed_nodes, resolve_keep_float,
    resolve_metadata,
)
from edgecnn.export.quantize_recipes import (
    Int8Recipe, ProgressCallback, int8_dynamic, int8_rewrites, int8_static, run_model, to_fp16,
)
from edgecnn.runtime import ModelMetadata
from edgecnn.runtime.postprocess import top1_accuracy

if TYPE_CHECKING:  # the exporter imports torch: only export_quantized needs it, at call time
    from edgecnn.export.exporter import ExportResult

MODES = ("int8", "int8-dynamic", "fp16")
METHODS = ("minmax", "entropy", "percentile")
CHECK_SAMPLES = 64  # calibration samples the fp32-vs-quantized check runs on

StepCallback = Callable[[str], None]
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
    """Metadata in, names checked, oldest IR: the file must stand in for the fp32 one."""
    def names(graph_model: onnx.ModelProto) -> list[str]:
        return [graph_input(graph_model).name] + [v.name for v in graph_model.graph.output]

    if names(quantized) != names(source):
        raise CheckFailed(f"quantization renamed the inputs/outputs {names(source)} -> "
                          f"{names(quantized)}; nothing written")
    set_metadata(quantized, replace(metadata, opset=default_opset(quantized)))
    # onnxruntime's quantizer signs the file as its own; the metadata says what was done.
    quantized.producer_name, quantized.producer_version = source.producer_name, source.producer_version
    set_minimal_ir_version(quantized)


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
    name_unnamed_nodes(model)
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
    # The comparison with fp32 costs two sessions (seconds for a VGG): skipped with check=False
    # unless a validation set asks for accuracy.
    compare_to_fp32 = check or validation_set is not None
    reference = None
    if compare_to_fp32:
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
            rewrites = int8_rewrites(model, kept)
            if rewrites:
                details["graph_rewrites"] = rewrites
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

    parity = accuracy = None
    if compare_to_fp32:
        step("checking against fp32")
        candidate = run_model(quantized, check_inputs.astype(
            np.float16 if mode == "fp16" and not keep_io_float else np.float32))
        parity = compare(reference, candidate)
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
        check_model(temp_path)
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
    if calibration is not None and str(calibration) != RANDOM:
        existing_source(calibration)  # fail before the export, not after it
    from edgecnn.export.exporter import export_model

    with tempfile.TemporaryDirectory(prefix="edgecnn-export-") as workdir:
        exported = export_model(name, Path(workdir) / f"{name}.onnx", on_step=on_step,
                                **export_options)
        quantized = quantize_model(exported.path, output, mode=quantize, calibration=calibration,
                                   calibration_size=calibration_size, method=method,
                                   seed=export_options.get("seed", 0),
                                   check=export_options.get("check", True), on_step=on_step,
                                   on_progress=on_progress, on_warning=on_warning)
    report = quantized.as_dict()
    report["source"] = None  # the fp32 file was temporary
    exported.extra["quantization"] = report
    return replace(exported, path=output, size_bytes=quantized.size_bytes,
                   seconds=exported.seconds + quantized.seconds)
