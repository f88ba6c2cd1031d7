"""``check_parity("resnet18")``: what ``edgecnn check`` runs.

Exports the model (or takes a given .onnx), runs eager PyTorch and onnxruntime on K random
batches (plus real images when given) and judges each output by the precision's criterion:
a rel_l2 bound (fp32 1e-5, fp16 5e-3; int8 an SQNR floor, expressed as the same rel_l2 bound
since SQNR = -20 log10(rel_l2)). With ``bisect=True`` a failing check also names the first
module where eager and ONNX diverge.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import torch

from edgecnn import models
from edgecnn.errors import BadInput
from edgecnn.export import bisect as bisecting
from edgecnn.export.calibration import DEFAULT_CALIBRATION_SIZE, batches, load_image_folder
from edgecnn.export.exporter import build_model, export_model, random_input
from edgecnn.export.files import atomic_output, check_output_path
from edgecnn.export.onnx_file import dims, fixed_batch, get_metadata, graph_inputs, input_dims
from edgecnn.export.parity import (
    FP16_MAX, ParityMetrics, activation_peak, compare, default_tolerance,
)
from edgecnn.runtime import load_session

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_SAMPLES = 32  # int8 of a fresh export calibrates on inputs drawn like the checked ones


@dataclass
class OutputReport:
    name: str
    metrics: ParityMetrics
    passed: bool

    def as_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, **self.metrics.as_dict()}


@dataclass
class CheckReport:
    model: str
    onnx_path: str
    precision: str
    provider: list[str]
    batch: int
    samples: int
    images: int
    rows: int  # input rows compared: batch x samples random ones + the images
    tolerance: float  # rel_l2 bound (for int8 derived from the SQNR floor)
    outputs: list[OutputReport]
    bisect: bisecting.BisectResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(output.passed for output in self.outputs)

    def as_dict(self) -> dict:
        return {"model": self.model, "onnx": self.onnx_path, "precision": self.precision,
                "provider": self.provider, "batch": self.batch, "samples": self.samples,
                "images": self.images, "rows": self.rows, "tolerance_rel_l2": self.tolerance,
                "passed": self.passed, "outputs": [o.as_dict() for o in self.outputs],
                "bisect": self.bisect.as_dict() if self.bisect else None, "notes": self.notes}

    def to_markdown(self) -> str:
        lines = [f"# Parity check: {self.model} ({self.precision})", "",
                 f"- ONNX: `{self.onnx_path}`", f"- provider: {', '.join(self.provider)}",
                 f"- inputs: {self.samples} random batches of {self.batch}"
                 + (f" + {self.images} images" if self.images else ""),
                 f"- criterion: rel_l2 <= {self.tolerance:g}",
                 f"- result: **{'PASS' if self.passed else 'FAIL'}**", "",
                 "| output | rel_l2 | max_abs | cosine | SQNR dB | top-1 agreement | pass |",
                 "|---|---|---|---|---|---|---|"]
        for output in self.outputs:
            m = output.metrics
            top1 = "–" if m.top1_agreement is None else f"{m.top1_agreement:.4f}"
            lines.append(f"| {output.name} | {m.rel_l2:.3e} | {m.max_abs:.3e} | {m.cosine:.8f} "
                         f"| {m.sqnr_db:.1f} | {top1} | {'yes' if output.passed else 'no'} |")
        if self.bisect is not None:
            first = self.bisect.first_divergent
            lines += ["", f"Bisect over {len(self.bisect.layers)} module outputs: " + (
                f"first divergence at `{first.module}` (call {first.call}, tensor "
                f"`{first.tensor}`), rel_l2 {first.metrics.rel_l2:.3e}" if first
                else "no module output over the tolerance")]
        lines += [f"- note: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def check_report_path(path: str | os.PathLike) -> Path:
    """BadInput unless ``path`` is a writable FILE.md or FILE.json (checked before any work)."""
    path = Path(path)
    if path.suffix not in (".md", ".json"):
        raise BadInput(f"--report must end in .md or .json, got {path.name}")
    return check_output_path(path)


def write_report(report: CheckReport, path: str | os.PathLike) -> Path:
    path = check_report_path(path)
    text = (json.dumps(report.as_dict(), indent=2) + "\n" if path.suffix == ".json"
            else report.to_markdown())
    with atomic_output(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return path


def convert_precision(fp32_path: Path, precision: str, output: Path,
                      images: str | os.PathLike | None = None) -> Path:
    """The fp16 or int8 version of a fresh fp32 export, with edgecnn's own quantizer.

    int8 calibrates on ``images`` when given, else on random inputs drawn like the ones the
    check compares on (standard normal, seeds apart from the checked ones): a calibration from
    another distribution would clip the checked inputs and measure the mismatch, not the export.
    """
    from edgecnn.export.quantize import quantize_model

    if precision == "fp16":
        quantize_model(fp32_path, output, mode="fp16", check=False)
        return output
    if images is not None:
        quantize_model(fp32_path, output, mode="int8", calibration=images,
                       calibration_size=DEFAULT_CALIBRATION_SIZE, check=False)
        return output
    metadata = get_metadata(_load(fp32_path), str(fp32_path))
    with tempfile.TemporaryDirectory(prefix="edgecnn-calibration-") as work:
        calibration = Path(work) / "calibration.npy"
        np.save(calibration, np.concatenate(
            [random_input((1, *metadata.input.shape), seed=1000 + k).numpy()
             for k in range(CALIBRATION_SAMPLES)]))
        quantize_model(fp32_path, output, mode="int8", calibration=calibration,
                       calibration_size=None, check=False)
    return output


def _check_architecture(name: str, model: onnx.ModelProto, source: str,
                        eager_input: Sequence[int], eager_output: Sequence[int]) -> None:
    """BadInput unless ``model`` has the named model's interface (never a bogus pass)."""
    metadata = get_metadata(model, source)
    if metadata is not None and metadata.model != name:
        raise BadInput(f"{source} was exported from {metadata.model!r}, not {name!r}")
    inputs = graph_inputs(model)
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise BadInput(f"{source} has {len(inputs)} inputs and {len(model.graph.output)} "
                       f"outputs; {name} has one of each")
    for kind, value, expected in (("input", inputs[0], eager_input),
                                  ("output", model.graph.output[0], eager_output)):
        shape, wanted = dims(value)[1:], list(expected)[1:]
        if len(shape) != len(wanted) or any(d is not None and d != w for d, w in zip(shape, wanted)):
            raise BadInput(f"{source} {kind} {value.name} has shape [N, {', '.join(map(str, shape))}]"
                           f"; {name} gives [N, {', '.join(map(str, wanted))}]: not this architecture")


def _precision_of(model: onnx.ModelProto, source: str) -> str:
    metadata = get_metadata(model, source)
    return metadata.precision if metadata else "fp32"


def check_parity(name: str, onnx_path: str | os.PathLike | None = None, *,
                 precision: str | None = None, batch: int | None = None, samples: int = 3,
                 images: str | os.PathLike | None = None, providers: list | None = None,
                 tolerance: float | None = None, seed: int = 0,
                 weights: str | os.PathLike | None = None, num_classes: int | None = None,
                 input_size: int | Sequence[int] | None = None, bisect: bool = False,
                 on_step: Callable[[str], None] | None = None) -> CheckReport:
    """Compare eager ``name`` with its ONNX export (or ``onnx_path``) on random inputs.

    Without ``onnx_path`` the model is exported fresh and converted to ``precision`` (int8
    calibrates on ``images`` when given). ``batch``: rows per random input (default 2, or the
    file's fixed batch size). ``images``: a folder of jpg/png added to the inputs, preprocessed
    from the file's metadata. The eager model is rebuilt from ``seed``/``weights``/
    ``num_classes``: pass the values the file was exported with.
    """
    step = on_step or (lambda message: None)
    spec = models.get_spec(name)
    if batch is not None and batch < 1:
        raise BadInput(f"--batch must be >= 1, got {batch}")
    if samples < 1:
        raise BadInput(f"--samples must be >= 1, got {samples}")
    if precision is not None and precision not in PRECISIONS:
        raise BadInput(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    with tempfile.TemporaryDirectory(prefix="edgecnn-check-") as work:
        if onnx_path is None:
            precision = precision or "fp32"
            step(f"exporting {name}")
            path = export_model(name, Path(work) / f"{name}.onnx", input_size=input_size,
                                num_classes=num_classes, weights=weights, seed=seed,
                                check=False).path
            if precision != "fp32":
                step(f"converting to {precision}")
                path = convert_precision(path, precision, Path(work) / f"{name}.{precision}.onnx",
                                         images)
        else:
            path = Path(onnx_path)
            if not path.is_file():
                raise BadInput(f"ONNX file not found: {path}")
        model = _load(path)
        file_precision = _precision_of(model, str(path))
        if precision is not None and precision != file_precision:
            raise BadInput(f"{path} holds a {file_precision} model, not {precision}")
        precision = file_precision
        fixed = fixed_batch(model)
        batch = _batch_size(fixed, path, batch)
        metadata = get_metadata(model, str(path))
        channels, height, width = (metadata.input.shape if metadata else
                                   _input_chw(model))
        step(f"building eager {name}")
        module = build_model(name, num_classes=num_classes, weights=weights, seed=seed,
                             in_channels=channels if channels != spec.input_size[0] else None)
        inputs = [random_input((batch, channels, height, width), seed + 1 + k).numpy()
                  for k in range(samples)]
        image_count, notes = 0, []
        if images is not None:
            if metadata is None:
                raise BadInput(f"--images needs the preprocessing in the edgecnn metadata, which "
                               f"{path} does not carry")
            image_batch = load_image_folder(images, metadata.input, what="--images",
                                            warn=notes.append).inputs
            inputs.extend(batches(image_batch, fixed, len(image_batch)))
            image_count = len(image_batch)
        with torch.no_grad():
            references = [module(torch.from_numpy(x)).numpy() for x in inputs]
        _check_architecture(name, model, str(path), inputs[0].shape, references[0].shape)
        step("running onnxruntime")
        session = load_session(str(path), providers=providers)
        output_name = session.get_outputs()[0].name
        candidates = [session.run(None, {session.get_inputs()[0].name: x})[0] for x in inputs]
        bound = tolerance if tolerance is not None else default_tolerance(precision, spec)
        metrics = compare(np.concatenate(references), np.concatenate(candidates))
        passed = bool(metrics.rel_l2 <= bound)
        report = CheckReport(model=name, onnx_path=str(onnx_path or f"(fresh export, {precision})"),
                             precision=precision, provider=list(session.get_providers()),
                             batch=batch, samples=samples, images=image_count,
                             rows=sum(len(x) for x in inputs), tolerance=bound,
                             outputs=[OutputReport(output_name, metrics, passed)], notes=notes)
        if not all(np.isfinite(c).all() for c in candidates):
            report.notes.append(_non_finite_note(module, inputs[0], precision))
        elif not passed and onnx_path is not None:
            report.notes.append("was the file exported with the same --seed/--weights/"
                                "--num-classes? the eager model is rebuilt from them")
        if bisect:
            step("bisecting layer by layer")
            report.bisect = bisecting.bisect(module, model, inputs[0], bound, providers)
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


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as error:
        raise BadInput(f"{path} is not a readable ONNX model ({type(error).__name__})") from None


def _batch_size(fixed: int | None, path: Path, requested: int | None) -> int:
    """The rows per input: ``requested`` (default 2), which a fixed batch axis must equal."""
    if fixed is not None and requested not in (None, fixed):
        raise BadInput(f"{path} has a fixed batch size of {fixed}; run with --batch {fixed}")
    return fixed or requested or 2


def _input_chw(model: onnx.ModelProto) -> tuple[int, int, int]:
    shape = input_dims(model)
    if len(shape) != 4 or not all(shape[1:]):
        raise BadInput(f"cannot tell the input size of the ONNX file (input dims {shape}); "
                       "it carries no edgecnn metadata")
    return tuple(shape[1:])
