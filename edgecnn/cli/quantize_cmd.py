"""`edgecnn quantize IN.onnx -o OUT.onnx --mode MODE`: a thin layer over
edgecnn.export.quantize.quantize_model (imported inside the command: it needs the onnx package)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgecnn.cli._app import (
    CalibrationOpt, CalibrationSizeOpt, ExternalDataOpt, JsonOpt, OutputOpt, TargetOpt, app,
    out, print_json, print_keep_float_suggestions, print_quantize_summary, print_warning,
    progress, safe,
)
from edgecnn.cli._preprocessing_flags import with_preprocessing_flags

ModeOpt = Annotated[str, typer.Option("--mode", help="{modes}.")]
MethodOpt = Annotated[str, typer.Option("--method", help="Calibration method: {methods}.")]


def split_names(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated --keep-float values as one list."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


@app.command("quantize")
@with_preprocessing_flags
def quantize_command(
    model: Annotated[str, typer.Argument(
        help="An fp32 .onnx file: exported by edgecnn, or any single-input image model. A file "
             "without edgecnn metadata needs the preprocessing flags only to read images "
             "(--calibration or --validation of a folder); fp16, int8-dynamic and int8 from an "
             ".npy/.npz need none.")],
    output: OutputOpt = None,
    mode: ModeOpt = "int8",
    calibration: CalibrationOpt = None,
    calibration_size: CalibrationSizeOpt = 100,
    method: MethodOpt = "minmax",
    keep_float: Annotated[Optional[list[str]], typer.Option(
        "--keep-float", metavar="NAME|OP",
        help="Node names or op types to leave in float (repeat or comma-separate).")] = None,
    accuracy_budget: Annotated[Optional[float], typer.Option(
        "--accuracy-budget", metavar="POINTS",
        help="Top-1 percentage points int8 may lose on --validation; the fewest layers are "
             "kept in float to stay within it.")] = None,
    validation: Annotated[Optional[str], typer.Option(
        "--validation", metavar="PATH",
        help="Labelled set: an .npz with 'inputs' and 'labels', or one image folder per class.")] = None,
    keep_io_float: Annotated[bool, typer.Option(
        "--keep-io-float/--fp16-io", help="fp16: keep the input and output float32.")] = True,
    check: Annotated[bool, typer.Option(
        "--check/--no-check",
        help="Fail (writing nothing) when the result differs from fp32 beyond the model's bound "
             "for its precision, the same bound `edgecnn check` applies.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the calibration subset and random inputs.")] = 0,
    target: TargetOpt = "cpu",
    external_data: ExternalDataOpt = False,
    report: Annotated[Optional[str], typer.Option(
        "--report", metavar="FILE",
        help="int8: also write the per-layer report (SQNR of every quantized activation and "
             "weight against fp32, worst first; the HTML one plots it) to FILE.html, .md or "
             ".json, and print --keep-float suggestions from it.")] = None,
    per_tensor: Annotated[bool, typer.Option(
        "--per-tensor", help="int8: one scale per weight tensor instead of per output channel "
                             "(NPUs and DSPs that need per-tensor scales).")] = False,
    equalize: Annotated[bool, typer.Option(
        "--equalize", help="int8: cross-layer equalization of consecutive conv pairs (conv -> "
                           "[Relu|ReLU6] -> conv, depthwise included; exact in float) "
                           "before quantizing.")] = False,
    bias_correction: Annotated[Optional[bool], typer.Option(
        "--bias-correction/--no-bias-correction",
        help="int8: after quantizing, each conv's bias absorbs its mean int8 error on the "
             "calibration data, conv after conv (on by default).")] = None,
    json_output: JsonOpt = False,
    preprocessing: dict | None = None,
) -> None:
    """Quantize an fp32 model: int8 static (QDQ), int8 dynamic, or fp16; metadata updated."""
    from edgecnn.export.quantize import quantize_model

    with progress(enabled=not json_output) as (on_step, on_progress):
        result = quantize_model(
            model, output, mode=mode, calibration=calibration, calibration_size=calibration_size,
            method=method, keep_float=split_names(keep_float), accuracy_budget=accuracy_budget,
            validation=validation, keep_io_float=keep_io_float,
            preprocessing=preprocessing, external_data=external_data, check=check, seed=seed,
            target=target, report=report, per_tensor=per_tensor, equalize=equalize,
            bias_correction=bias_correction, on_step=on_step, on_progress=on_progress,
            on_warning=print_warning)
    if json_output:
        print_json(result.as_dict())
    else:
        print_quantize_summary(result)
        if result.report is not None:
            out.print(f"per-layer report: {safe(result.report_path)}")
            print_keep_float_suggestions(result.report.keep_float_suggestions())
