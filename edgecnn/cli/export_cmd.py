"""`edgecnn export SPEC`: a registered model, your own module or a .pt2 program to a checked
.onnx file."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgecnn.cli._app import (
    BatchOpt, CalibrationOpt, CalibrationSizeOpt, ExternalDataOpt, InputSizeOpt, JsonOpt,
    ModelOptionOpt, NumClassesOpt, OutputOpt, TargetOpt, WeightsOpt, app, human_size, out,
    print_json, print_quantize_summary, print_warning, progress, safe,
)
from edgecnn.cli._parsing import parse_input_size, parse_model_options, parse_numbers
from edgecnn.errors import BadInput


def print_export_summary(result) -> None:
    """The export's lines; with --quantize the fp32 graph was an intermediate, not written."""
    shape = f"opset {result.opset}, input {result.input_shape}"
    intermediate = result.quantization is not None
    if intermediate:
        out.print(f"exported {safe(result.model)} fp32 ({shape})")
    else:
        out.print(f"[green]wrote[/green] {safe(result.path)} "
                  f"({human_size(result.size_bytes)}, {shape}) in {result.seconds:.1f} s")
    if result.deform_lowering:
        out.print(f"deformable convs: ai.edgecnn::DeformConv2d, {result.deform_lowering} lowering")
    if result.parity:
        out.print(f"{'fp32 ' if intermediate else ''}parity vs eager: rel_l2 {result.parity.rel_l2:.2e}"
                  f"  max_abs {result.parity.max_abs:.2e}  (tolerance {result.tolerance:g}) "
                  "[green]ok[/green]")
    else:
        out.print("[yellow]parity check skipped (--no-check)[/yellow]")


@app.command("export")
def export_command(
    model: Annotated[str, typer.Argument(
        metavar="SPEC",
        help="A registered model (see `edgecnn list`), package.module:callable, "
             "path/file.py:callable (a function or class returning an nn.Module; --option "
             "KEY=VALUE are its keyword arguments) or a .pt2 file from torch.export.save.")],
    output: OutputOpt = None,
    opset: Annotated[Optional[int], typer.Option(
        "--opset", help="ONNX opset, 18 or newer (default: 18, or 19 when native DeformConv "
                        "needs it).")] = None,
    input_size: InputSizeOpt = None,
    batch: BatchOpt = None,
    num_classes: NumClassesOpt = None,
    in_channels: Annotated[Optional[int], typer.Option(
        help="Input channels, 1 (grey) or 3 (RGB); default: the model's. A model that is not "
             "registered needs it and --input-size (a .pt2 file records both).")] = None,
    task: Annotated[Optional[str], typer.Option(
        metavar="classification|segmentation",
        help="What the output is (default: the model's; for your own, segmentation when its "
             "first output is (N, C, H, W), else classification). It names the output: logits "
             "or masks.")] = None,
    mean: Annotated[Optional[str], typer.Option(
        "--mean", metavar="M [M M]",
        help="Per-channel mean (0-1 scale) written into the metadata (default: the model's; "
             "ImageNet's for your own, averaged for one channel).")] = None,
    std: Annotated[Optional[str], typer.Option(
        "--std", metavar="S [S S]", help="Per-channel std, as --mean.")] = None,
    crop_fraction: Annotated[Optional[float], typer.Option(
        "--crop-fraction", metavar="F",
        help="Share of the resized image the model sees, in [{min_crop}, 1] (default: the model's; "
             "0.875, ImageNet's resize-256-crop-224, for your own).")] = None,
    weights: WeightsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights and check input.")] = 0,
    labels: Annotated[Optional[str], typer.Option(help="Text file of class names, one per line.")] = None,
    check: Annotated[bool, typer.Option("--check/--no-check",
                                        help="Run the file in onnxruntime against eager.")] = True,
    quantize: Annotated[Optional[str], typer.Option(
        "--quantize", metavar="MODE",
        help="Write the {export_modes} model instead (see `edgecnn quantize`).")] = None,
    calibration: CalibrationOpt = None,
    calibration_size: CalibrationSizeOpt = 100,
    target: TargetOpt = "cpu",
    deform_lowering: Annotated[str, typer.Option(
        "--deform-lowering", metavar="native|decomposed",
        help="Body of the deformable-conv custom op: ONNX DeformConv (opset 19+), or older ops "
             "for runtimes without a DeformConv kernel (onnxruntime < 1.25, TensorRT < 10.1).")
    ] = "native",
    model_options: ModelOptionOpt = None,
    external_data: ExternalDataOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Export a model to ONNX (dynamo exporter), embed its metadata and check parity."""
    from edgecnn.export import export_model

    options = dict(opset=opset, input_size=parse_input_size(input_size), batch=batch,
                   num_classes=num_classes, in_channels=in_channels, weights=weights, seed=seed,
                   check=check, labels=labels, deform_lowering=deform_lowering,
                   model_options=parse_model_options(model_options), task=task,
                   mean=parse_numbers(mean, "--mean"), std=parse_numbers(std, "--std"),
                   crop_fraction=crop_fraction, external_data=external_data)
    if target != "cpu" and quantize is None:
        raise BadInput("--target tunes the file that --quantize writes; add --quantize int8")
    with progress(enabled=not json_output) as (on_step, on_progress):
        if quantize is None:
            result = export_model(model, output, on_step=on_step, **options)
        else:
            from edgecnn.export.quantize import export_quantized

            result = export_quantized(model, output, quantize=quantize, calibration=calibration,
                                      calibration_size=calibration_size, target=target,
                                      on_step=on_step, on_progress=on_progress,
                                      on_warning=print_warning, **options)
    if result.weights.startswith("random"):  # after the export: a failed one prints its error only
        print_warning("random weights: predictions are meaningless; give --weights")
    if json_output:
        print_json(result.as_dict())
    else:
        print_export_summary(result)
        if result.quantization is not None:
            print_quantize_summary(result.quantization)
