"""fp32 ONNX -> int8 (static QDQ or dynamic) or fp16: ``quantize_model`` is ``edgecnn quantize``.

    quantize_model("resnet18.onnx", "resnet18_int8.onnx", mode="int8", calibration="calib/")
    quantize_model("resnet18.onnx", mode="fp16")

All the numerics are onnxruntime's. ``quantize_model`` is load (``quantize_input``) -> recipe
(``quantize_recipes``) -> verify (``parity.judge``) -> write (docs/design.md);
``--accuracy-budget`` lives in ``sensitivity``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import onnx

from edgecnn.errors import BadInput, CheckFailed, EdgecnnError, require_count, require_seed
from edgecnn.export.calibration import (
    DEFAULT_CALIBRATION_SIZE, RANDOM, WarnCallback, batches, existing_source, load_calibration,
    load_validation, random_inputs,
)
from edgecnn.export.int8_report import (
    Int8Report, check_int8_report_path, int8_report, write_int8_report,
)
from edgecnn.runtime.engine import check_feed_bytes
from edgecnn.runtime.external_data import model_size, refuse_overwriting
from edgecnn.runtime.files import check_output_path, work_directory
from edgecnn.export.parity import ParityMetrics, Verdict, judge
from edgecnn.export.quantize_input import (
    load_float_model, name_unnamed_nodes, resolve_keep_float, resolve_metadata, the_only_input,
)
from edgecnn.export.quantize_recipes import (
    EXPORT_MODES, Int8Static, ProgressCallback, QuantizeJob, Recipe, get_recipe,
)
from edgecnn.runtime import ModelMetadata, load_session
from edgecnn.runtime.onnx_file import (
    check_model, fixed_batch, opset_version, set_metadata, set_minimal_ir_version, writing_model,
)
from edgecnn.runtime.postprocess import top1_accuracy

if TYPE_CHECKING:  # the exporter imports torch: only export_quantized needs it, at call time
    from edgecnn.export.exporter import ExportResult

CHECK_SAMPLES = 64  # calibration samples the fp32-vs-quantized check runs on

StepCallback = Callable[[str], None]


@dataclass
class QuantizeResult:
    path: Path
    source: Path | None  # None when the fp32 model was a temporary file (export --quantize)
    mode: str
    precision: str
    size_bytes: int
    source_size_bytes: int
    seconds: float
    quantization: dict  # what the metadata records
    verdict: Verdict | None = None  # quantized vs fp32 on the check inputs (None: not checked)
    accuracy: dict | None = None  # fp32 / quantized top-1 on the validation set
    kept_float: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    report: Int8Report | None = None  # the per-layer report (``report=``)
    report_path: Path | None = None

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / self.source_size_bytes

    @property
    def parity(self) -> ParityMetrics | None:
        """The first output's metrics against fp32."""
        return self.verdict.outputs[0].metrics if self.verdict else None

    def as_dict(self) -> dict:
        return {"path": str(self.path), "source": None if self.source is None else str(self.source),
                "mode": self.mode, "precision": self.precision, "size_bytes": self.size_bytes,
                "source_size_bytes": self.source_size_bytes,
                "size_ratio": round(self.size_ratio, 4), "seconds": round(self.seconds, 3),
                "quantization": self.quantization,
                "tolerance": self.verdict.tolerance if self.verdict else None,
                "parity": self.parity.as_dict() if self.parity else None,
                "outputs": [o.as_dict() for o in self.verdict.outputs] if self.verdict else None,
                "accuracy": self.accuracy, "kept_float": self.kept_float,
                "warnings": self.warnings,
                "report": None if self.report_path is None else str(self.report_path),
                "keep_float_suggestions":
                    self.report.keep_float_suggestions() if self.report else None}


def run_model(model: onnx.ModelProto, inputs: np.ndarray,
              source: str | os.PathLike | None = None) -> list[np.ndarray]:
    """Every output of ``model`` on ``inputs`` (onnxruntime, CPU), run in batches; ``source``:
    what an error calls the model."""
    session = load_session(model.SerializeToString(), name=source)
    name = session.get_inputs()[0].name
    runs = [session.run(None, {name: chunk}) for chunk in batches(inputs, fixed_batch(model), 64)]
    return [np.concatenate([run[k] for run in runs])[:len(inputs)].astype(np.float32)
            for k in range(len(runs[0]))]


# ---------------------------------------------------------------------------------------------
# The public entry point


def default_output(source: Path, mode: str) -> Path:
    """``model.onnx`` -> ``model_int8.onnx`` / ``model_int8_dynamic.onnx`` / ``model_fp16.onnx``."""
    return source.with_name(f"{source.stem}_{mode.replace('-', '_')}.onnx")


def _check_options(accuracy_budget: float | None, validation: object,
                   calibration_size: int | None, seed: int) -> None:
    if accuracy_budget is not None:
        if not 0 <= accuracy_budget <= 100:
            raise BadInput("accuracy_budget is in top-1 percentage points (0-100), got "
                           f"{accuracy_budget}")
        if validation is None:
            raise BadInput("accuracy_budget needs a validation set (a labelled .npz or class "
                           "folders)")
    require_count("calibration_size", calibration_size)
    require_seed(seed)


def _accuracy(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray,
              budget: float | None) -> dict:
    fp32, quantized = top1_accuracy(reference, labels), top1_accuracy(candidate, labels)
    return {"samples": len(labels), "fp32": fp32, "quantized": quantized,
            "drop_points": round(100 * (fp32 - quantized), 4), "budget_points": budget}


def _finish(quantized: onnx.ModelProto, source: onnx.ModelProto,
            metadata: ModelMetadata | None) -> None:
    """Metadata in (None: a file without it stays so), names checked, oldest IR: the file must
    stand in for the fp32 one."""
    def names(graph_model: onnx.ModelProto) -> list[str]:
        return [the_only_input(graph_model).name] + [v.name for v in graph_model.graph.output]

    if names(quantized) != names(source):
        raise CheckFailed(f"quantization renamed the inputs/outputs {names(source)} -> "
                          f"{names(quantized)}; nothing written")
    if metadata is not None:
        set_metadata(quantized, replace(metadata, opset=opset_version(quantized)))
    # onnxruntime's quantizer signs the file as its own; the metadata says what was done.
    with contextlib.suppress(UnicodeDecodeError):  # a name that is not UTF-8 is not copied
        quantized.producer_name, quantized.producer_version = (source.producer_name,
                                                               source.producer_version)
    set_minimal_ir_version(quantized)


def _needs_no_preprocessing(path: Path, calibration, validation) -> None:
    """BadInput when images are to be read for a file that does not say how to preprocess them."""
    images = [flag for flag, source in (("calibration", calibration), ("validation", validation))
              if isinstance(source, (str, os.PathLike)) and Path(source).is_dir()]
    if images:
        raise BadInput(f"{path} has no edgecnn metadata, so the {' and '.join(images)} images "
                       "cannot be preprocessed: give mean=... std=... (and input_size=... "
                       "layout=... color=... as needed), or `edgecnn annotate` the file first")


def _load_data(recipe: Recipe, metadata: ModelMetadata, calibration, calibration_size,
               validation, seed: int, step: StepCallback, warn: WarnCallback):
    """(calibration set or None, validation set or None) for ``recipe``."""
    validation_set = calibration_set = None
    if validation is not None:
        if metadata.task != "classification":
            raise BadInput("a validation set measures top-1 accuracy: it needs a classification "
                           "model")
        step("loading the validation set")
        validation_set = load_validation(validation, metadata.input, metadata.labels, warn=warn)
    if recipe.needs_calibration:
        if calibration is None:
            raise BadInput(f"{recipe.mode} needs calibration data: a folder of images, an "
                           ".npy/.npz of inputs, an array, or 'random'")
        step("loading calibration data")
        calibration_set = load_calibration(calibration, metadata.input, calibration_size,
                                           seed=seed, warn=warn)
    elif calibration is not None:
        warn(f"calibration data is ignored by mode {recipe.mode} (it does not calibrate)")
    return calibration_set, validation_set


def quantize_model(model_path: str | os.PathLike, output_path: str | os.PathLike | None = None, *,
                   mode: str = "int8", calibration=None,
                   calibration_size: int | None = DEFAULT_CALIBRATION_SIZE,
                   method: str = "minmax", keep_float: Sequence[str] = (),
                   accuracy_budget: float | None = None,
                   validation: str | os.PathLike | None = None, keep_io_float: bool = True,
                   input_size: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, preprocessing: Mapping | None = None,
                   external_data: bool = False, check: bool = True, seed: int = 0,
                   target: str = "cpu", recipe: Recipe | None = None,
                   report: str | os.PathLike | None = None, per_tensor: bool = False,
                   equalize: bool = False, bias_correction: bool | None = None,
                   on_step: StepCallback | None = None,
                   on_progress: ProgressCallback | None = None,
                   on_warning: WarnCallback | None = None) -> QuantizeResult:
    """Quantize an fp32 .onnx file; see ``edgecnn quantize --help`` for the options.

    mode: a key of ``quantize_recipes.RECIPES``: "int8" (static QDQ, needs ``calibration``: an
        image folder, a .npy/.npz of inputs, an (N, C, H, W) array, an iterable of batches, or
        "random"), "int8-dynamic" (weights only) or "fp16". ``recipe`` replaces the mode's
        recipe (e.g. ``Int8Static(per_channel=False)``).
    keep_float: node names or op types left in float.
    accuracy_budget: top-1 percentage points the quantized model may lose on ``validation``;
        the fewest weighted layers are kept in float to stay within it (CheckFailed when
        impossible).
    keep_io_float: fp16 only: the graph input and output stay float32 (int8 QDQ models always
        take and return float32).
    input_size, mean, std, preprocessing (the other settings of
        edgecnn.runtime.preprocess_settings: layout, color, scale, crop_fraction, task, labels,
        input_name): override the metadata. A file without metadata needs them only where
        images are read (an image folder to calibrate or validate on); otherwise its output
        gets no edgecnn metadata either.
    external_data: the tensors go to ``<output>.data`` beside the file (always for a model
        over protobuf's 2 GB).
    target: the provider a static int8 file is tuned for, "cpu" (onnxruntime's CPU provider:
        the RGB stem rewritten for its int8 kernel) or "openvino" (the plain stem).
    check: the result must match fp32 within the model's bound for its precision (the one
        ``edgecnn check`` applies); CheckFailed otherwise.
    report: static int8 only: write the per-layer report (export/int8_report.py) of the result
        against the fp32 model to this FILE.html, .md or .json, on the check inputs; it is
        written even when the check then fails (it says why).
    per_tensor: static int8 only: one scale per weight tensor (NPUs and DSPs that need it)
        instead of one per output channel.
    equalize: static int8 only: cross-layer equalization of consecutive conv pairs (exact in
        float) before quantizing.
    bias_correction: static int8 only (on unless False): after quantizing, each conv's bias
        absorbs its mean int8 error on the calibration data, conv after conv.
    Raises BadInput before anything is written; nothing is left behind on any failure.
    """
    started = time.perf_counter()
    step = on_step or (lambda message: None)
    messages: list[str] = []

    def warn(message: str) -> None:
        messages.append(message)
        (on_warning or (lambda text: warnings.warn(text, stacklevel=3)))(message)

    recipe = recipe or get_recipe(mode, method=method, target=target, per_tensor=per_tensor,
                                  equalize=equalize, bias_correction=bias_correction)
    _check_options(accuracy_budget, validation, calibration_size, seed)
    if report is not None:
        if not isinstance(recipe, Int8Static):
            raise BadInput(f"report describes static int8 (QDQ) files, not mode {recipe.mode}")
        report = check_int8_report_path(report)
    source_path = Path(model_path)
    output = check_output_path(default_output(source_path, recipe.mode) if output_path is None
                               else output_path)
    refuse_overwriting(source_path, [output, output.with_name(f"{output.name}.data")])
    step("reading the model")
    model = load_float_model(source_path)
    name_unnamed_nodes(model)
    settings = {"input_size": input_size, "mean": mean, "std": std, **(preprocessing or {})}
    metadata, described = resolve_metadata(model, source_path, settings)
    if not described:
        _needs_no_preprocessing(source_path, calibration if recipe.needs_calibration else None,
                                validation)
    excluded = resolve_keep_float(model, keep_float)
    if recipe.needs_calibration and calibration_size is not None:  # the set is held whole
        check_feed_bytes({metadata.input.name: ((calibration_size, *metadata.input.shape),
                                                np.float32)}, "give a smaller calibration_size",
                         prefix=f"calibration_size {calibration_size}: ")
    calibration_set, validation_set = _load_data(recipe, metadata, calibration,
                                                 calibration_size, validation, seed, step, warn)
    if validation_set is not None:
        check_inputs = validation_set.inputs
    elif calibration_set is not None:
        check_inputs = calibration_set.inputs[:CHECK_SAMPLES]
    else:
        check_inputs = random_inputs(metadata.input, 8, seed)
    # The comparison with fp32 costs two sessions (seconds for a VGG): skipped with check=False
    # unless a validation set asks for accuracy.
    reference = None
    if check or validation_set is not None:
        step("running the fp32 model")
        reference = run_model(model, check_inputs, source=source_path)

    # onnxruntime's own temporary folders go inside workdir: one clean-up removes them all.
    with work_directory("edgecnn-quantize-") as workdir:
        job = QuantizeJob(recipe.float_model(model), workdir, calibration_set, keep_io_float,
                          on_progress)
        kept, trials = list(excluded), None
        if accuracy_budget is not None:
            from edgecnn.export.sensitivity import BudgetSearch, candidate_layers

            step("searching the layers to keep in float")
            search = BudgetSearch(lambda exclude: recipe.quantize(job, exclude),
                                  lambda candidate: run_model(candidate, check_inputs)[0],
                                  validation_set.labels, reference[0], accuracy_budget,
                                  base=excluded, progress=on_progress)
            best = search.run(candidate_layers(model, excluded))
            quantized, kept, trials = best.model, [*excluded, *best.kept], search.trials
        else:
            step(f"quantizing ({recipe.mode}: {recipe.summary})")
            quantized = recipe.quantize(job, excluded)
        details = recipe.describe(job, kept)
    if trials is not None:
        details["search_trials"] = trials
    details["kept_float"] = kept
    layers = None
    if report is not None:
        step("comparing int8 with fp32 layer by layer")
        layers = int8_report(job.model, quantized, check_inputs, name=source_path.name)
        write_int8_report(layers, report)

    verdict = accuracy = None
    if reference is not None:
        step("checking against fp32")
        candidate = run_model(quantized, check_inputs.astype(recipe.input_dtype(job)))
        verdict = judge(reference, candidate, recipe.precision, bounds=metadata.tolerances,
                        names=[value.name for value in model.graph.output])
    if validation_set is not None:
        accuracy = _accuracy(reference[0], candidate[0], validation_set.labels, accuracy_budget)
        if accuracy_budget is not None and accuracy["drop_points"] > accuracy_budget + 1e-9:
            raise CheckFailed(f"{recipe.mode} loses {accuracy['drop_points']:.2f} top-1 points on "
                              f"the validation set > budget {accuracy_budget:g}; nothing written")
    if check and not verdict.passed:
        raise CheckFailed(f"{recipe.mode} differs from fp32 beyond the {recipe.precision} bound: "
                          f"{verdict.failures()}; "
                          + (f"no model written (the per-layer report: {report}; keep its "
                             "suggested layers in float)" if report is not None else
                             "nothing written (keep sensitive layers in float, or skip the "
                             "check to write it anyway)"))
    _finish(quantized, model, replace(metadata, precision=recipe.precision, quantization=details)
            if described else None)
    try:
        with writing_model(quantized, output, external_data) as (_, size):
            pass
    except EdgecnnError as error:  # the written graph failed the checker: whose fault?
        if not isinstance(error, BadInput):
            _refuse_invalid_source(source_path)
        raise
    return QuantizeResult(path=output, source=source_path, mode=recipe.mode,
                          precision=recipe.precision, size_bytes=size,
                          source_size_bytes=model_size(source_path),
                          seconds=time.perf_counter() - started, quantization=details,
                          verdict=verdict if check else None, accuracy=accuracy,
                          kept_float=kept, warnings=messages, report=layers, report_path=report)


def _refuse_invalid_source(path: Path) -> None:
    """BadInput when the file quantized is itself invalid ONNX (a declared shape the graph
    contradicts, say): the quantized copy inherits the fault, and the file is to blame."""
    try:
        check_model(path)
    except EdgecnnError as error:
        raise BadInput(f"{path}: {error}") from None


def export_quantized(name: str, output: str | os.PathLike | None = None, *, quantize: str,
                     calibration=None, calibration_size: int | None = DEFAULT_CALIBRATION_SIZE,
                     method: str = "minmax", target: str = "cpu",
                     on_step: StepCallback | None = None,
                     on_progress: ProgressCallback | None = None,
                     on_warning: WarnCallback | None = None, **export_options) -> ExportResult:
    """``edgecnn export NAME --quantize int8|fp16``: export_model to a temporary fp32 file, then
    quantize_model onto ``output`` (default ``NAME_int8.onnx``). Only the quantized file is
    written; the result's ``quantization`` is quantize_model's result."""
    if quantize not in EXPORT_MODES:
        raise BadInput(f"quantize must be one of {', '.join(EXPORT_MODES)}, got {quantize!r}")
    from edgecnn.export.exporter import export_model
    from edgecnn.export.user_model import model_name

    recipe = get_recipe(quantize, method=method, target=target)
    require_count("calibration_size", calibration_size)
    output = check_output_path(f"{model_name(name)}_{quantize}.onnx" if output is None
                               else output)
    if recipe.needs_calibration and calibration is None:
        raise BadInput(f"quantize {quantize} needs calibration data: a folder of images, an "
                       ".npy/.npz of inputs, or 'random'")
    if isinstance(calibration, (str, os.PathLike)) and str(calibration) != RANDOM:
        existing_source(calibration)  # fail before the export, not after it
    external_data = export_options.pop("external_data", False)  # the quantized file's
    with tempfile.TemporaryDirectory(prefix="edgecnn-export-") as workdir:
        exported = export_model(name, Path(workdir) / "fp32.onnx", on_step=on_step,
                                **export_options)
        quantized = quantize_model(exported.path, output, recipe=recipe, calibration=calibration,
                                   external_data=external_data,
                                   calibration_size=calibration_size,
                                   seed=export_options.get("seed", 0),
                                   check=export_options.get("check", True), on_step=on_step,
                                   on_progress=on_progress, on_warning=on_warning)
    quantized.source = None  # the fp32 file was temporary
    return replace(exported, path=output, size_bytes=quantized.size_bytes,
                   seconds=exported.seconds + quantized.seconds, quantization=quantized)
