"""Does an ONNX file compute what a module computes? ``check_onnx(module, "model.onnx", inputs)``
for any module and file; ``check_parity("resnet18")``, what ``edgecnn check`` runs, for a
registered model (docs/design.md, "Any module against any file")."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgecnn.errors import BadInput, require_count
from edgecnn.export import bisect as bisecting
from edgecnn.export.calibration import batches, load_image_folder
from edgecnn.export.int8_report import int8_report
from edgecnn.export.build import (
    build_model, builder_arguments, check_model_options, in_eval_mode, random_input, run_eager,
    weights_provenance,
)
from edgecnn.export.check_report import CheckReport
from edgecnn.export.exporter import CHECK_BATCH, StepCallback, export_model
from edgecnn.export.parity import (
    FP16_MAX, activation_peak, check_criteria, check_precision, judge,
)
from edgecnn.export.user_model import is_user_model, require_model, resolve_spec
from edgecnn.runtime import ModelMetadata, openvino
from edgecnn.runtime.engine import InputCheck, TensorSpec
from edgecnn.runtime.model_file import graph_precision, metadata_props
from edgecnn.runtime.onnx_file import (
    dims, fixed_batch, get_metadata, graph_inputs, load_model,
)
from edgecnn.runtime.preprocess_settings import guess_layout
from edgecnn.runtime.providers import OPENVINO, ProviderRequest
from edgecnn.runtime.session import open_session

CALIBRATION_SAMPLES = 32  # int8 of a fresh export calibrates on inputs drawn like the checked ones


# ---------------------------------------------------------------------------------------------
# Any module against any file


def _by_input(batch, names: list[str], onnx_path) -> object:
    """A batch given as {input name: array} in the graph's input order."""
    if not isinstance(batch, dict):
        return batch
    if set(batch) != set(names):
        raise BadInput(f"{onnx_path} takes inputs {', '.join(names)}; a batch names "
                       f"{', '.join(map(str, batch))}")
    return tuple(batch[name] for name in names)


def _as_arrays(values) -> tuple[np.ndarray, ...]:
    """A batch or a module's outputs as arrays: a module's dict gives its values in order, as
    the exporter lays them out as graph outputs."""
    if isinstance(values, dict):
        values = tuple(values.values())
    elif not isinstance(values, (tuple, list)):
        values = (values,)
    return tuple(value.detach().cpu().numpy() if isinstance(value, torch.Tensor)
                 else np.asarray(value) for value in values)


def check_onnx(module: torch.nn.Module, onnx_path: str | os.PathLike, inputs: Sequence, *,
               precision: str | None = None, providers: ProviderRequest = "cpu",
               tolerance: float | None = None, min_top1: float | None = None,
               bisect: bool = False, model_name: str | None = None, image_rows: int = 0,
               on_step: StepCallback | None = None) -> CheckReport:
    """Run ``module`` eagerly and ``onnx_path`` in onnxruntime on each batch of ``inputs`` and
    judge every output.

    inputs: a list of batches; a batch is one array/tensor, or for a multi-input model a
        tuple of them (in the graph's input order) or a {input name: array} dict.
    precision: what the file is (default: its metadata's, else fp32), or "bf16" for an fp32
        file that OpenVINO runs with its bf16 hint; a file of another precision is BadInput. The
        bound is ``tolerance``, else the file's metadata bound for the precision the session
        computes in (an fp32 file on ``openvino:bf16`` is judged as bf16, on ``openvino:f16``
        as fp16), else that precision's default (``parity.judge``).
    providers: the onnxruntime providers ("cpu", "cuda", ...); CUDA runs without TF32.
    bisect: name the first module whose output diverges (single-input models).
    """
    step = on_step or (lambda message: None)
    check_criteria(tolerance, min_top1)
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        inputs = [inputs]  # one batch
    if not inputs:
        raise BadInput("inputs holds no batch to compare on")
    opened = open_session(onnx_path, providers, fallback=False, tf32=False)
    session = opened.session
    metadata = ModelMetadata.from_props(metadata_props(onnx_path), str(onnx_path))
    # a file without metadata (quantized from arrays, or by another tool): its graph says
    file_precision = computed = _file_precision(onnx_path, metadata)
    name, options = opened.requested[0]
    if name == OPENVINO and file_precision == "fp32":
        computed = openvino.compute_precision(options)
    if precision is not None and check_precision(precision) not in (file_precision, computed):
        raise BadInput(f"{onnx_path} holds a {file_precision} model, not {precision}")
    names = [value.name for value in session.get_inputs()]
    batches_in = [_as_arrays(_by_input(batch, names, onnx_path)) for batch in inputs]
    if any(len(batch) != len(names) for batch in batches_in):
        raise BadInput(f"{onnx_path} takes {len(names)} inputs ({', '.join(names)}); a batch "
                       f"has {len(batches_in[0])}")
    checks = [InputCheck(TensorSpec.from_node_arg(value)) for value in session.get_inputs()]
    for batch in batches_in:
        for check, array in zip(checks, batch):
            try:
                check(array, check_finite=False)
            except BadInput as error:
                raise BadInput(f"inputs: {error}") from None
    with in_eval_mode(module):  # every eager run below; the caller's modes come back
        step("running eager PyTorch")
        with torch.no_grad():
            references = [_as_arrays(module(*map(torch.from_numpy, batch))) for batch in batches_in]
        step("running onnxruntime")
        candidates = [session.run(None, dict(zip(names, batch))) for batch in batches_in]
        outputs = [value.name for value in session.get_outputs()]
        verdict = judge([np.concatenate(column) for column in zip(*references)],
                        [np.concatenate(column) for column in zip(*candidates)],
                        computed, bounds=metadata.tolerances if metadata else None,
                        tolerance=tolerance, names=outputs, min_top1=min_top1)
        report = CheckReport(model=model_name or type(module).__name__, onnx_path=str(onnx_path),
                             precision=computed, providers=list(session.get_providers()),
                             batch=len(batches_in[0][0]), samples=len(batches_in),
                             images=image_rows, rows=sum(len(batch[0]) for batch in batches_in),
                             verdict=verdict)
        if not all(np.isfinite(c).all() for run in candidates for c in run):
            report.notes.append(_non_finite_note(module, batches_in[0][0], file_precision))
        if bisect:
            if len(names) != 1:
                raise BadInput("bisect compares single-input models only")
            step("bisecting layer by layer")
            model = load_model(onnx_path)
            report.bisect = bisecting.bisect(module, model, batches_in[0][0], verdict.tolerance,
                                             session.get_providers())
            if not report.bisect.layers:
                report.notes.append(bisecting.why_nothing_compared(model))
        return report


def _non_finite_note(module, x: np.ndarray, precision: str) -> str:
    note = "the ONNX output holds NaN or Inf"
    if precision != "fp16":
        return note
    peak, where = activation_peak(module, x)
    if peak <= FP16_MAX:
        return f"{note}; the eager activations stay within fp16's range (peak {peak:.3g})"
    return (f"{note}: fp16 overflows, the eager activations reach {peak:.3g} ({where}), beyond "
            f"fp16's {FP16_MAX:g}; keep this model in fp32 (or its overflowing layers: "
            "edgecnn quantize --keep-float)")


# ---------------------------------------------------------------------------------------------
# A registered model: what `edgecnn check` runs


def convert_precision(fp32_path: Path, precision: str, output: Path,
                      images: str | os.PathLike | None = None) -> Path:
    """The fp16 or int8 version of a fresh fp32 export, with edgecnn's own quantizer. int8
    calibrates on ``images`` when given, else on random inputs drawn like the checked ones
    (standard normal, other seeds; docs/design.md, "One conversion path for checks")."""
    from edgecnn.export.quantize import quantize_model
    from edgecnn.export.quantize_recipes import RECIPES

    recipe = RECIPES[precision]  # the mode named like the precision
    calibration = None
    if recipe.needs_calibration:
        shape = get_metadata(load_model(fp32_path, external_data=False)).input.sample_shape
        calibration = images if images is not None else np.concatenate(
            [random_input((1, *shape), seed=1000 + k).numpy() for k in range(CALIBRATION_SAMPLES)])
    quantize_model(fp32_path, output, recipe=recipe, calibration=calibration,
                   calibration_size=None, check=False)
    return output


def _file_precision(path: Path, metadata: ModelMetadata | None) -> str:
    return metadata.precision if metadata is not None else graph_precision(path)


def _check_architecture(name: str, model, source: str, eager_input: Sequence[int],
                        eager_outputs: Sequence[Sequence[int]]) -> None:
    """BadInput unless ``model`` has the named model's interface (never a bogus pass)."""
    metadata = get_metadata(model, source)
    # An export records its model and weights; `annotate` names a file after itself, which
    # says nothing of the architecture: its interface and the comparison then decide.
    if metadata is not None and metadata.weights is not None and metadata.model != name:
        raise BadInput(f"{source} was exported from {metadata.model!r}, not {name!r}")
    inputs, outputs = graph_inputs(model), list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != len(eager_outputs):
        raise BadInput(f"{source} has {len(inputs)} inputs and {len(outputs)} outputs; {name} "
                       f"has 1 and {len(eager_outputs)}")
    for kind, value, expected in (("input", inputs[0], eager_input),
                                  *(("output", output, shape)
                                    for output, shape in zip(outputs, eager_outputs))):
        shape, wanted = dims(value)[1:], list(expected)[1:]
        if len(shape) != len(wanted) or any(d is not None and d != w for d, w in zip(shape, wanted)):
            raise BadInput(f"{source} {kind} {value.name} has shape [N, {', '.join(map(str, shape))}]"
                           f"; {name} gives [N, {', '.join(map(str, wanted))}]: not this architecture")


def _input_shape(model, metadata: ModelMetadata | None,
                 source: str) -> tuple[list[int], tuple[int, int, int]]:
    """(one input sample's shape as the file takes it, its (C, H, W)): the metadata's, in its
    layout; or the graph's own axes, NHWC when only the last looks like channels."""
    if metadata is not None:
        return metadata.input.sample_shape, tuple(metadata.input.shape)
    inputs = graph_inputs(model)
    shape = dims(inputs[0]) if inputs else []
    if len(shape) != 4 or not all(shape[1:]):
        raise BadInput(f"cannot tell the input size of {source} (input dims {shape}); it "
                       "carries no edgecnn metadata")
    sample = shape[1:]
    height, width, channels = sample
    return sample, ((channels, height, width) if guess_layout(shape) == "NHWC"
                    else tuple(sample))


def _batch_size(fixed: int | None, path: Path, requested: int | None) -> int:
    """The rows per input: ``requested`` (default 2), which a fixed batch axis must equal."""
    require_count("batch", requested)
    if fixed is not None and requested not in (None, fixed):
        raise BadInput(f"batch must be {fixed}: {path} has a fixed batch size of {fixed}")
    return fixed or requested or CHECK_BATCH


def bf16_providers(providers: ProviderRequest) -> ProviderRequest:
    """bf16 is OpenVINO's bf16 hint on the fp32 file: the default "cpu", "openvino" or
    "openvino:DEVICE" become that with bf16; anything else is BadInput."""
    if providers == "cpu":
        return "openvino:bf16"
    if isinstance(providers, str) and providers.split(":")[0].lower() == "openvino":
        options = openvino.parse_options(providers.partition(":")[2])
        if options.get("precision", "bf16") != "bf16":
            raise BadInput(f"precision bf16 and provider {providers} ask for two precisions")
        return providers if "precision" in options else f"{providers}:bf16"
    raise BadInput(f"precision bf16 runs on OpenVINO (its bf16 hint on the fp32 file), not on "
                   f"{providers}: ask for the openvino provider, or for none")


def check_parity(name: str | torch.nn.Module, onnx_path: str | os.PathLike | None = None, *,
                 precision: str | None = None, batch: int | None = None, samples: int = 3,
                 images: str | os.PathLike | None = None, providers: ProviderRequest = "cpu",
                 tolerance: float | None = None, min_top1: float | None = None, seed: int = 0,
                 weights: str | os.PathLike | None = None, num_classes: int | None = None,
                 input_size: int | Sequence[int] | None = None, in_channels: int | None = None,
                 model_options: dict | None = None, bisect: bool = False,
                 per_layer: bool = False, on_step: StepCallback | None = None) -> CheckReport:
    """Compare eager ``name`` with its ONNX export (or ``onnx_path``) on random inputs.

    ``name``: a registered model, ``package.module:callable``, ``path/file.py:callable``, a
    ``.pt2`` file or an ``nn.Module`` with its weights (edgecnn.export.user_model);
    ``model_options`` are its builder's keyword arguments. Checking a file, a model that is not
    registered takes the file's input size.

    Without ``onnx_path`` the model is exported fresh and converted to ``precision`` (int8
    calibrates on ``images`` when given). ``batch``: rows per random input (default 2, or the
    file's fixed batch size). ``images``: a folder of images added to the inputs, preprocessed
    from the file's metadata. The eager model is rebuilt from ``seed``/``weights``/
    ``num_classes`` (once, for both sides): pass the values the file was exported with.
    ``per_layer``: an int8 file's per-layer report (export/int8_report.py) against a fresh fp32
    export of the same model, on the same inputs.
    """
    require_model(name)
    step = on_step or (lambda message: None)
    # a model that is not registered learns its input size from the file, once it is read
    spec = (None if onnx_path is not None and is_user_model(name) else
            resolve_spec(name, input_size=input_size, in_channels=in_channels))
    options = model_options or {}
    check_model_options(options, registered=spec is not None and spec.source is None)
    check_criteria(tolerance, min_top1)
    require_count("samples", samples, optional=False)
    if precision is not None:
        check_precision(precision)
    if precision == "bf16":
        providers = bf16_providers(providers)
    if per_layer and precision not in (None, "int8"):
        raise BadInput(f"per_layer reports on int8 files, not {precision}")
    if per_layer and onnx_path is None and precision is None:
        raise BadInput("per_layer reports on int8 files: give an int8 file or precision int8")
    step(f"building eager {name}")
    with tempfile.TemporaryDirectory(prefix="edgecnn-check-") as work:
        if onnx_path is None:
            precision = precision or "fp32"
            module = build_model(spec, num_classes=num_classes, weights=weights, seed=seed,
                                 **builder_arguments(spec, in_channels, options))
            step(f"exporting {name}")
            path = export_model(spec, Path(work) / f"{spec.name}.onnx", input_size=input_size,
                                num_classes=num_classes, in_channels=in_channels,
                                weights=weights, seed=seed, model_options=options,
                                check=False, module=module).path
            fp32_path = path  # per_layer's reference: the export made here, not a second one
            if precision not in ("fp32", "bf16"):  # bf16 runs the fp32 file
                step(f"converting to {precision}")
                path = convert_precision(path, precision,
                                         Path(work) / f"{spec.name}.{precision}.onnx", images)
        else:
            path = Path(onnx_path)
        model = load_model(path)
        metadata = get_metadata(model, str(path))
        fixed = fixed_batch(model)
        batch = _batch_size(fixed, path, batch)
        sample, (channels, height, width) = _input_shape(model, metadata, str(path))
        if per_layer and (file_precision := _file_precision(path, metadata)) != "int8":
            raise BadInput(f"per_layer reports on int8 files; {path} is {file_precision}")
        if onnx_path is not None:
            spec = spec or resolve_spec(name, input_size=(height, width), in_channels=channels)
            if not options and metadata is not None and metadata.options:
                options = dict(metadata.options)  # the options the file was exported with
                try:
                    check_model_options(options, registered=spec.source is None)
                except BadInput as error:  # export never writes these: a file edited by hand
                    raise BadInput(f"{path}: the options in its metadata are not a model's: "
                                   f"{error}") from None
            module = build_model(spec, num_classes=num_classes, weights=weights, seed=seed,
                                 **builder_arguments(spec, channels if channels !=
                                                     spec.input_size[0] else None, options))
        inputs = [random_input((batch, *sample), seed + 1 + k).numpy()
                  for k in range(samples)]
        image_rows, notes = 0, []
        if images is not None:
            if metadata is None:
                raise BadInput(f"images need the preprocessing in the edgecnn metadata, which "
                               f"{path} does not carry")
            image_batch = load_image_folder(images, metadata.input, what="images",
                                            warn=notes.append).inputs
            # int8 scales fit the data they were calibrated on, which draws from a standard
            # normal are not: an int8 file is judged on the images alone.
            on_images = (precision or _file_precision(path, metadata)) == "int8"
            inputs = [*([] if on_images else inputs), *batches(image_batch, fixed,
                                                               len(image_batch))]
            image_rows = len(image_batch)
        eager_outputs = [output.shape for output in
                         run_eager(module, torch.from_numpy(inputs[0]), spec).values()]
        _check_architecture(spec.name, model, str(path), inputs[0].shape, eager_outputs)
        del model  # the session reads the file itself
        report = check_onnx(module, path, inputs, precision=precision, providers=providers,
                            tolerance=tolerance, min_top1=min_top1, bisect=bisect,
                            model_name=spec.name, image_rows=image_rows, on_step=step)
        if per_layer:
            step("comparing int8 with fp32 layer by layer")
            fp32 = fp32_path if onnx_path is None else export_model(
                spec, Path(work) / "fp32.onnx", input_size=(height, width),
                num_classes=num_classes, weights=weights, seed=seed,
                in_channels=channels if channels != spec.input_size[0] else None,
                model_options=options, check=False, module=module).path
            report.per_layer = int8_report(fp32, path, np.concatenate(inputs), name=spec.name)
    report.onnx_path = str(onnx_path or f"(fresh export, {report.precision})")
    report.notes[:0] = notes
    if report.passed or onnx_path is None or any("NaN" in n for n in report.notes):
        return report
    if report.precision == "int8" and images is None:
        first = "" if metadata is not None else (
            "write its preprocessing into the file with `edgecnn annotate`, then ")
        report.notes.append("int8 is compared on standard-normal inputs here; a file calibrated "
                            "on data of another range (0..1 arrays, other preprocessing) can "
                            "fit them badly and its own data well: "
                            f"{first}compare on real inputs with images=FOLDER")
    if not spec.own_weights:
        note = _weights_note(metadata, weights_provenance(spec, module, weights, seed))
        report.notes += [note] if note else []
    if metadata is not None and metadata.options and metadata.options != options:
        report.notes.append(f"the file was exported with the options {metadata.options}, the "
                            f"eager model built with {options}: leave model_options out to "
                            "take the file's")
    return report


def _digest(provenance: str) -> str:
    """What identifies weights: the sha256 of "NAME sha256:HEX", else the whole text."""
    return provenance.rsplit(" ", 1)[-1] if " sha256:" in provenance else provenance


def _weights_note(metadata: ModelMetadata | None, eager: str) -> str | None:
    """Why a failed file may hold other weights than the eager model, from what its metadata
    records of them ("random (seed N)" or "NAME sha256:HEX"); None when they are the same."""
    held = metadata.weights if metadata is not None else None
    if held is None:
        return ("was the file exported with the same --seed/--weights/--num-classes/--option? "
                "the eager model is rebuilt from them")
    if _digest(held) == _digest(eager):  # the same bytes, whatever the file was called
        return None
    seed = re.fullmatch(r"random \(seed (-?\d+)\)", held)
    return (f"the file holds {held.replace('random', 'random weights')}, the eager model "
            f"{eager.replace('random', 'random weights')}: check with "
            + (f"seed={seed[1]}" if seed else "the weights it was exported from (weights=FILE)"))
