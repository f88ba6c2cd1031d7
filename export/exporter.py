"""PyTorch -> ONNX: ``export_model("resnet18")`` is what ``edgecnn export resnet18`` runs.

The pipeline: build the registered model (seeded random weights, or a state_dict file), run it
eagerly once (validates the input size and gives the parity reference), export it with the
dynamo exporter, attach the edgecnn metadata, run onnx.checker and shape inference, run the
file in onnxruntime against eager, and only then move it atomically onto the output path.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import onnx
import torch
from torch import nn

import edgecnn
from edgecnn import models
from edgecnn.ops import uses_deform_conv
from edgecnn.errors import (
    BadInput, CheckFailed, EdgecnnError, first_line, require_count, require_seed,
)
from edgecnn.export.deform import (TRANSLATION_TABLE as DEFORM_TRANSLATION_TABLE,
                                   fold_batchnorm_into_deform)
from edgecnn.runtime.files import check_output_path
from edgecnn.export.parity import ParityMetrics, Verdict, model_bounds, judge
from edgecnn.export.quiet import silenced
from edgecnn.export.build import (
    build_model, builder_arguments, check_model_options, in_eval_mode, random_input, run_eager,
    weights_provenance,
)
from edgecnn.export.user_model import height_width, resolve_spec
from edgecnn.runtime import InputInfo, ModelMetadata, load_session
from edgecnn.runtime.deform import (
    DEFAULT_LOWERING, NATIVE_MIN_OPSET, check_lowering, model_lowering, set_deform_lowering,
)
from edgecnn.runtime.metadata import MAX_ELEMENTS, MAX_SIDE
from edgecnn.runtime.postprocess import is_class_vector
from edgecnn.runtime.onnx_file import dims, set_metadata, set_minimal_ir_version, writing_model
from edgecnn.runtime.preprocess_settings import SETTING_OF_FIELD, read_labels_file

if TYPE_CHECKING:
    from edgecnn.export.quantize import QuantizeResult

DEFAULT_OPSET = 18
MIN_OPSET = 18  # the dynamo exporter emits opset 18 and up; lower requests silently fail
CHECK_BATCH = 2
IMAGE_CHANNELS = (1, 3)  # what an exported file's image preprocessing can produce
# Node metadata the exporter adds that we drop: source paths of this machine, FX dumps.
_DROPPED_NODE_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")

# What torch.onnx logs, its errors included (a failed export logs the traceback of each shape
# it could not trace, 40 lines for one bad matmul): the failure is raised as one line instead.
EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch.fx", "torch._subclasses", "onnxscript")

StepCallback = Callable[[str], None]


@dataclass
class ExportResult:
    path: Path
    model: str
    input_shape: list  # with "batch" for a dynamic axis
    opset: int
    size_bytes: int
    seconds: float
    verdict: Verdict | None = None  # onnxruntime vs eager (None with check=False)
    deform_lowering: str | None = None  # None when the model has no deformable convolution
    weights: str | None = None  # "random (seed N)" or the checkpoint's name and sha256
    quantization: QuantizeResult | None = None  # export --quantize: the quantizer's result

    @property
    def parity(self) -> ParityMetrics | None:
        return self.verdict.outputs[0].metrics if self.verdict else None

    @property
    def tolerance(self) -> float | None:
        return self.verdict.tolerance if self.verdict else None

    def as_dict(self) -> dict:
        return {"path": str(self.path), "model": self.model, "input_shape": self.input_shape,
                "opset": self.opset, "size_bytes": self.size_bytes,
                "seconds": round(self.seconds, 3), "tolerance": self.tolerance,
                "parity": self.parity.as_dict() if self.parity else None,
                "deform_lowering": self.deform_lowering, "weights": self.weights,
                "quantization": self.quantization.as_dict() if self.quantization else None}


def resolve_input_size(spec: models.ModelSpec,
                       input_size: int | Sequence[int] | None) -> tuple[int, int]:
    """(H, W) from None (the spec's default), one int, or a pair; BadInput when unusable."""
    if input_size is None:
        return tuple(spec.input_size[1:])
    height, width = height_width(input_size)
    if spec.fixed_input_size and (height, width) != tuple(spec.input_size[1:]):
        raise BadInput(f"{spec.name} only works at {spec.input_size[1]}x{spec.input_size[2]}, "
                       f"got input_size {height}x{width}")
    min_h, min_w = spec.min_input_size
    if height < min_h or width < min_w:
        raise BadInput(f"input_size {height}x{width} is too small for {spec.name} "
                       f"(minimum {min_h}x{min_w})")
    if max(height, width) > MAX_SIDE:
        raise BadInput(f"input_size {height}x{width} is too large (at most {MAX_SIDE} per side)")
    return height, width


def _check_arguments(spec: models.ModelSpec, *, batch, seed, channels, height, width,
                     model_options) -> None:
    """The exporter's own argument checks, in the API's words (the CLI names the flags)."""
    require_count("batch", batch)
    require_seed(seed)
    if channels not in IMAGE_CHANNELS:
        raise BadInput(f"in_channels must be 1 (grey) or 3 (RGB), got {channels}: the file's "
                       "metadata describes images, which the runtime and calibration read in "
                       "those two forms")
    if channels * height * width > MAX_ELEMENTS:
        raise BadInput(f"an input of {channels}x{height}x{width} is too large (at most "
                       f"{MAX_ELEMENTS:,} values per image)")
    check_model_options(model_options, registered=spec.source is None)
    if model_options and spec.own_weights:
        raise BadInput(f"model_options: {spec.source} is built already (pass them to its "
                       "constructor)")


def validate_opset(opset: int, spec: models.ModelSpec | None = None) -> int:
    newest = onnx.defs.onnx_opset_version()
    lowest = max(MIN_OPSET, spec.min_opset if spec else MIN_OPSET)
    if not lowest <= opset <= newest:
        needs = f"{spec.name} needs" if spec and spec.min_opset > MIN_OPSET else "supported:"
        raise BadInput(f"opset {opset} is not possible ({needs} {lowest}..{newest})")
    return opset


def resolve_opset(opset: int | None, spec: models.ModelSpec, native_deform: bool = False) -> int:
    """The opset to export at: ``opset`` validated, or by default 18 raised to what is needed.

    ``native_deform``: the model has deformable convolutions exported with the native
    lowering, whose ONNX DeformConv body needs opset 19.
    """
    if opset is None:
        opset = max(DEFAULT_OPSET, spec.min_opset, NATIVE_MIN_OPSET if native_deform else 0)
    opset = validate_opset(opset, spec)
    if native_deform and opset < NATIVE_MIN_OPSET:
        raise BadInput(f"opset {opset} is too old for the deformable convolutions of {spec.name} "
                       f"with deform_lowering='native' (ONNX DeformConv needs opset "
                       f"{NATIVE_MIN_OPSET}): use opset={NATIVE_MIN_OPSET} or "
                       "deform_lowering='decomposed'")
    return opset


def _strip_node_metadata(model: onnx.ModelProto) -> None:
    for graph in (model.graph, *model.functions):
        for node in graph.node:
            kept = [prop for prop in node.metadata_props if prop.key not in _DROPPED_NODE_METADATA]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)


def to_onnx(module: nn.Module, example: torch.Tensor, output_name: str | Sequence[str] = "logits",
            *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
            custom_translation_table: dict | None = None,
            deform_lowering: str = DEFAULT_LOWERING) -> onnx.ModelProto:
    """Export ``module`` (in eval mode; its own modes are given back) with the dynamo
    exporter: input ``input``, outputs named ``output_name`` (a list for a model with several).
    ``example``: a batch, a tensor or a numpy array.

    The batch axis is named ``batch`` and dynamic unless ``dynamic_batch`` is False. Each
    edgecnn deformable convolution becomes one ai.edgecnn::DeformConv2d node whose function
    body is ``deform_lowering`` ("native" needs opset 19; see edgecnn.runtime.deform), with the
    BatchNorm after it folded into its weights (``fold_batchnorm_into_deform``). Extra
    ``custom_translation_table`` entries are added to edgecnn's. Raises EdgecnnError when
    torch.onnx cannot export the module.
    """
    check_lowering(deform_lowering)
    if isinstance(example, np.ndarray):
        example = torch.from_numpy(example)
    if not isinstance(example, torch.Tensor):
        raise BadInput(f"example must be a tensor or a numpy array, got {type(example).__name__}")
    table = {**DEFORM_TRANSLATION_TABLE, **(custom_translation_table or {})}
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    try:  # torch.export prints the traced graph to stderr when it fails: kept off it too
        with silenced(*EXPORTER_LOGGERS, level=logging.CRITICAL), \
                contextlib.redirect_stderr(io.StringIO()), \
                torch.no_grad(), in_eval_mode(module):
            program = torch.onnx.export(
                module, (example,), None, dynamo=True, opset_version=opset,
                input_names=["input"],
                output_names=[output_name] if isinstance(output_name, str) else list(output_name),
                dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
                custom_translation_table=table)
    except Exception as error:
        # A Ctrl-C inside torch.export's lazy import of torch._dynamo comes back as the error
        # of importing the half-initialised module again: it is still an interruption.
        interrupt = error
        while interrupt is not None and not isinstance(interrupt, KeyboardInterrupt):
            interrupt = interrupt.__cause__ or interrupt.__context__
        if interrupt is not None:
            raise interrupt from None
        raise EdgecnnError(_export_failure(type(module).__name__, error)) from error
    proto = program.model_proto
    # The optimizer folded BatchNorm into the Convs; the deformable ones are ours to fold, before
    # the lowering, so that the decomposed body is built for call sites with a bias.
    fold_batchnorm_into_deform(proto)
    try:
        set_deform_lowering(proto, deform_lowering)
    except ValueError as error:  # native lowering below opset 19
        raise BadInput(f"{error}; export with opset {NATIVE_MIN_OPSET}") from None
    _strip_node_metadata(proto)
    set_minimal_ir_version(proto)
    proto.producer_name = "edgecnn"
    proto.producer_version = f"{edgecnn.__version__} (torch {torch.__version__.split('+')[0]})"
    return proto


def read_labels(path: str | os.PathLike, num_classes: int) -> list[str]:
    labels = read_labels_file(path)
    if len(labels) != num_classes:
        raise BadInput(f"labels file {path} has {len(labels)} labels, the model has {num_classes} classes")
    return labels


def check_input_info(info: InputInfo) -> None:
    """The preprocessing given for the metadata, in the API's words (mean, std, crop_fraction)."""
    ModelMetadata(model="model", task="classification", input=info).validate(
        "export", SETTING_OF_FIELD)


def _class_count(spec: models.ModelSpec, num_classes: int | None, first_output) -> int | None:
    """The classes the labels must match: the argument, the spec's, or the first output's
    axis 1 (a model that is not registered)."""
    if num_classes or spec.num_classes:
        return num_classes or spec.num_classes
    return int(first_output.shape[1]) if first_output.ndim >= 2 else None


def _export_failure(name: str, error: BaseException) -> str:
    """One line on why torch.onnx failed: the first line of the cause at the bottom of its
    chain (the top one is the exporter's advice, "... This is step 1/3 of exporting the model
    to ONNX. Next steps:"), with the step its first sentence names."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    line = first_line(cause)
    if cause is not error:
        step = first_line(error).split(". ")[0].rstrip(".")  # first_line drops the colours
        line += f" ({step})"
    return f"torch.onnx could not export {name}: {line}"


def export_model(name: str | models.ModelSpec | nn.Module,
                 output: str | os.PathLike | None = None, *, opset: int | None = None,
                 input_size: int | Sequence[int] | None = None,
                 batch: int | None = None, num_classes: int | None = None,
                 in_channels: int | None = None, weights: str | os.PathLike | None = None,
                 seed: int = 0, check: bool = True, labels: str | os.PathLike | None = None,
                 model_options: dict | None = None, deform_lowering: str = DEFAULT_LOWERING,
                 task: str | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, crop_fraction: float | None = None,
                 external_data: bool = False, module: nn.Module | None = None,
                 on_step: StepCallback | None = None) -> ExportResult:
    """Export a model to ONNX; see ``edgecnn export --help`` for the options.

    ``name``: a registered model, ``package.module:callable``, ``path/file.py:callable``, a
    ``.pt2`` file or an ``nn.Module`` with its weights, left as it is (edgecnn.export.user_model;
    those need ``input_size`` and ``in_channels``, and take ``task``). ``mean``, ``std``,
    ``crop_fraction``: the preprocessing written into the metadata (default: the model's;
    ImageNet's for a model that is not registered).
    ``external_data``: the weights go to ``<output>.data`` beside the file (always for a model
    over protobuf's 2 GB). ``opset`` None means 18, or 19 when the model has deformable
    convolutions exported with
    the native lowering (``deform_lowering``, "native" or "decomposed"). ``module``: the model
    already built by ``build_model`` with the same arguments (``edgecnn check`` builds it once
    for both sides); by default it is built here.

    Raises BadInput for unusable arguments (before anything is written) and CheckFailed when
    the onnxruntime output differs from eager beyond the model's tolerance (nothing written).
    """
    from edgecnn.labels import default_labels

    started = time.perf_counter()
    step = on_step or (lambda message: None)
    spec = resolve_spec(name, input_size=input_size, in_channels=in_channels, task=task)
    name = spec.name
    output = check_output_path(f"{name}.onnx" if output is None else output)
    if opset is not None:
        validate_opset(opset, spec)
    check_lowering(deform_lowering)
    height, width = resolve_input_size(spec, input_size)
    channels = in_channels or spec.input_size[0]
    _check_arguments(spec, batch=batch, seed=seed, channels=channels, height=height,
                     width=width, model_options=model_options)
    if spec.fixed_batch is not None:
        if batch not in (None, spec.fixed_batch):
            raise BadInput(f"batch must be {spec.fixed_batch}: {spec.source} was exported with "
                           "a fixed batch size")
        batch = spec.fixed_batch
    default_mean, default_std = spec.normalization(channels)
    info = InputInfo(shape=[channels, height, width], color="RGB" if channels == 3 else "GRAY",
                     mean=default_mean if mean is None else [float(v) for v in mean],
                     std=default_std if std is None else [float(v) for v in std],
                     crop_fraction=spec.crop_fraction if crop_fraction is None else crop_fraction)
    check_input_info(info)

    if module is None:
        step(f"building {name}")
        module = build_model(spec, num_classes=num_classes, weights=weights, seed=seed,
                             **builder_arguments(spec, in_channels, model_options))
    example = random_input((batch or CHECK_BATCH, channels, height, width), seed)
    references = run_eager(module, example, spec)
    first = next(iter(references.values()))
    if (spec.source is not None and spec.task == "classification" and first.ndim == 4
            and not is_class_vector(first.shape)):  # a model not registered (the zoo's are right)
        if task is not None:
            raise BadInput(f"task classification takes (N, classes) scores; the first output "
                           f"is {list(first.shape)}: give task=segmentation for a map of "
                           "class scores")
        spec = replace(spec, task="segmentation")  # as the Engine reads a file without metadata
        references = run_eager(module, example, spec)  # its outputs named for the task
    classes = _class_count(spec, num_classes, first)
    # no labels file: ImageNet's names for a 1000-class checkpoint (edgecnn.labels), else none
    label_list = (read_labels(labels, classes) if labels is not None
                  else default_labels(classes, weights))
    opset = resolve_opset(opset, spec, uses_deform_conv(module) and deform_lowering == "native")

    step("exporting with torch.onnx (dynamo)")
    proto = to_onnx(module, example, list(references), opset=opset, dynamic_batch=batch is None,
                    deform_lowering=deform_lowering)
    proto.graph.name = name
    first_axis = ((dims(proto.graph.output[0]) or [None])[0]
                  if batch is None and proto.graph.output else None)
    if isinstance(first_axis, int):
        raise BadInput(f"the first output {proto.graph.output[0].name!r} has a first axis of "
                       f"{first_axis} whatever the batch: edgecnn reads one row per image; keep "
                       f"the batch axis in the model, or export a fixed batch (batch={first_axis})")
    lowering = model_lowering(proto)  # None when the graph has no deformable convolution
    bounds = model_bounds(spec.tolerances)
    provenance = weights_provenance(spec, module, weights, seed)
    set_metadata(proto, ModelMetadata(
        model=name, task=spec.task, labels=label_list, precision="fp32", opset=opset,
        edgecnn_version=edgecnn.__version__, deform_lowering=lowering, tolerances=bounds,
        weights=provenance, options=dict(model_options) if model_options else None, input=info))
    step("writing and checking the graph (onnx.checker, shape inference)")
    with writing_model(proto, output, external_data) as (temp_path, size):
        verdict = None
        if check:
            step("running onnxruntime against eager")
            session = load_session(temp_path)
            candidate = session.run(None, {"input": example.numpy()})
            verdict = judge(list(references.values()), candidate, "fp32", bounds=bounds,
                            names=list(references))
            if not verdict.passed:
                raise CheckFailed(f"parity check failed for {name}: {verdict.failures()}; "
                                  "nothing written (skip the check to write it anyway)")
    return ExportResult(path=output, model=name, opset=opset, size_bytes=size,
                        input_shape=[batch or "batch", channels, height, width],
                        seconds=time.perf_counter() - started, verdict=verdict,
                        deform_lowering=lowering, weights=provenance)
