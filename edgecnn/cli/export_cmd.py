"""`edgecnn export NAME`: a registered model to a checked .onnx file."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgecnn.cli._app import (
    BatchOpt, InputSizeOpt, JsonOpt, NumClassesOpt, OutputOpt, WeightsOpt, app,
    human_size, out, parse_input_size, print_json, progress_steps,
)
from edgecnn.cli.quantize_cmd import (
    CalibrationOpt, CalibrationSizeOpt, print_quantize_summary, print_warning, quantize_progress,
)


def print_export_summary(summary: dict) -> None:
    parity = summary.get("parity")
    out.print(f"[green]wrote[/green] {summary['path']} ({human_size(summary['size_bytes'])}, "
              f"opset {summary['opset']}, input {summary['input_shape']}) "
              f"in {summary['seconds']:.1f} s")
    if parity:
        out.print(f"parity vs eager: rel_l2 {parity['rel_l2']:.2e}  max_abs {parity['max_abs']:.2e}"
                  f"  (tolerance {summary['tolerance']:g}) [green]ok[/green]")
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
        "--quantize", metavar="int8|fp16",
        help="Write the int8 (static QDQ) or fp16 model instead (see `edgecnn quantize`).")] = None,
    calibration: CalibrationOpt = None,
    calibration_size: CalibrationSizeOpt = 100,
    deform_lowering: Annotated[str, typer.Option(
        "--deform-lowering", metavar="native|decomposed",
        help="Body of the deformable-conv custom op: ONNX DeformConv (opset 19+), or older ops "
             "for runtimes without a DeformConv kernel (onnxruntime < 1.32, TensorRT < 10.1).")
    ] = "native",
    json_output: JsonOpt = False,
) -> None:
    """Export a model to ONNX (dynamo exporter), embed its metadata and check parity."""
    from edgecnn.export import export_model

    options = dict(opset=opset, input_size=parse_input_size(input_size), batch=batch,
                   num_classes=num_classes, in_channels=in_channels, weights=weights, seed=seed,
                   check=check, labels=labels, deform_lowering=deform_lowering)
    if quantize is not None:
        from edgecnn.export.quantize import export_quantized

        with quantize_progress(enabled=not json_output) as (on_step, on_progress):
            result = export_quantized(model, output, quantize=quantize, calibration=calibration,
                                      calibration_size=calibration_size, on_step=on_step,
                                      on_progress=on_progress, on_warning=print_warning, **options)
    else:
        with progress_steps(enabled=not json_output) as on_step:
            result = export_model(model, output, on_step=on_step, **options)
    summary = result.as_dict()
    if json_output:
        print_json(summary)
    else:
        print_export_summary(summary)
        if "quantization" in summary:
            print_quantize_summary(summary["quantization"])
