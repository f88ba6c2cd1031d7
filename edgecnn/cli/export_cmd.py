"""`edgecnn export NAME`: a registered model to a checked .onnx file."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgecnn.cli._app import (
    BatchOpt, CalibrationOpt, CalibrationSizeOpt, InputSizeOpt, JsonOpt, NumClassesOpt, OutputOpt,
    TargetOpt, WeightsOpt, app, human_size, out, parse_input_size, print_json,
    print_quantize_summary, print_warning, progress, safe,
)
from edgecnn.errors import BadInput


def parse_model_options(pairs: list[str] | None) -> dict:
    """``["upsample=bilinear", "paper_lrn=true"]`` -> ``{"upsample": "bilinear", "paper_lrn": True}``.

    Values become bool (true/false), int or float where they read as one, else stay strings;
    the exporter and the model's builder check the keys (BadInput naming them).
    """
    options = {}
    for pair in pairs or ():
        key, separator, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not separator or not key.isidentifier():
            raise BadInput(f"--option takes KEY=VALUE, got {pair!r}")
        options[key] = _option_value(text.strip())
    return options


def _option_value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


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
    model: Annotated[str, typer.Argument(help="Registered model name (see `edgecnn list`).")],
    output: OutputOpt = None,
    opset: Annotated[Optional[int], typer.Option(
        "--opset", help="ONNX opset, 18 or newer (default: 18, or 19 when native DeformConv "
                        "needs it).")] = None,
    input_size: InputSizeOpt = None,
    batch: BatchOpt = None,
    num_classes: NumClassesOpt = None,
    in_channels: Annotated[Optional[int], typer.Option(help="Input channels (default: the model's).")] = None,
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
    model_option: Annotated[Optional[list[str]], typer.Option(
        "--option", metavar="KEY=VALUE",
        help="Architecture option of the model's builder, repeatable, e.g. upsample=bilinear "
             "(fcn_resnet18), paper_lrn=true (alexnet_original); see docs/zoo.md.")] = None,
    json_output: JsonOpt = False,
) -> None:
    """Export a model to ONNX (dynamo exporter), embed its metadata and check parity."""
    from edgecnn.export import export_model

    options = dict(opset=opset, input_size=parse_input_size(input_size), batch=batch,
                   num_classes=num_classes, in_channels=in_channels, weights=weights, seed=seed,
                   check=check, labels=labels, deform_lowering=deform_lowering,
                   model_options=parse_model_options(model_option))
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
    if weights is None:  # after the export: a failed one prints only its error line
        print_warning("random weights: predictions are meaningless; give --weights")
    if json_output:
        print_json(result.as_dict())
    else:
        print_export_summary(result)
        if result.quantization is not None:
            print_quantize_summary(result.quantization)
