"""`edgecnn quantize IN.onnx -o OUT.onnx --mode int8|int8-dynamic|fp16`: a thin layer over
edgecnn.export.quantize.quantize_model (imported inside the command: it pulls in torch)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgecnn.cli._app import (
    CalibrationOpt, CalibrationSizeOpt, InputSizeOpt, JsonOpt, OutputOpt, app, err, escape,
    human_size, out, parse_input_size, print_json, progress,
)
from edgecnn.errors import BadInput

ModeOpt = Annotated[str, typer.Option(
    "--mode", help="int8 (static QDQ, calibrated), int8-dynamic (weights only) or fp16.")]
MethodOpt = Annotated[str, typer.Option(
    "--method", help="Calibration method: minmax, entropy or percentile.")]


def parse_floats(text: str | None, flag: str) -> list[float] | None:
    """'0.5' or '0.485,0.456,0.406' -> floats; BadInput naming the flag otherwise."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.replace(" ", ",").split(",") if part]
    except ValueError:
        raise BadInput(f"{flag} takes one number or comma-separated numbers, got {text!r}") from None


def split_names(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated --keep-float values as one list."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


def print_quantize_summary(summary: dict) -> None:
    details = summary["quantization"]
    how = f"int8 {details['mode']}" if summary["precision"] == "int8" else "fp16"
    if details.get("calibration"):
        how += (f", {details['method']} calibration on {details['calibration_size']} "
                f"{details['calibration']} samples")
    out.print(f"[green]wrote[/green] {escape(summary['path'])} ({escape(how)}) "
              f"{human_size(summary['size_bytes'])} = {summary['size_ratio']:.2f}x of "
              f"{human_size(summary['source_size_bytes'])}, in {summary['seconds']:.1f} s")
    parity = summary["parity"]
    if parity is None:
        out.print("[yellow]comparison with fp32 skipped (--no-check)[/yellow]")
    else:
        agreement = parity["top1_agreement"]
        out.print(f"vs fp32: rel_l2 {parity['rel_l2']:.2e}  "
                  f"SQNR {parity['sqnr_db'] or float('inf'):.1f} dB"
                  + (f"  top-1 agreement {agreement:.1%}" if agreement is not None else "")
                  + (f"  (tolerance {summary['tolerance']:g}) [green]ok[/green]"
                     if summary["tolerance"] else ""))
    accuracy = summary["accuracy"]
    if accuracy:
        budget = accuracy["budget_points"]
        out.print(f"top-1 on {accuracy['samples']} validation samples: fp32 {accuracy['fp32']:.2%}"
                  f"  {summary['precision']} {accuracy['quantized']:.2%}  (drop "
                  f"{accuracy['drop_points']:.2f} points"
                  + (f", budget {budget:g})" if budget is not None else ")"))
    if summary["kept_float"]:
        out.print(f"kept in float: {escape(', '.join(summary['kept_float']))}")


@app.command("quantize")
def quantize_command(
    model: Annotated[str, typer.Argument(help="An fp32 .onnx file (exported by edgecnn, or "
                                              "any single-input image model with --input-size/--mean/--std).")],
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
    input_size: InputSizeOpt = None,
    mean: Annotated[Optional[str], typer.Option(
        "--mean", metavar="M[,M,M]", help="Per-channel mean (0-1 scale); overrides the metadata.")] = None,
    std: Annotated[Optional[str], typer.Option(
        "--std", metavar="S[,S,S]", help="Per-channel std (0-1 scale); overrides the metadata.")] = None,
    check: Annotated[bool, typer.Option(
        "--check/--no-check", help="fp16: fail when it differs from fp32 beyond rel_l2 5e-3.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the calibration subset and random inputs.")] = 0,
    json_output: JsonOpt = False,
) -> None:
    """Quantize an fp32 model: int8 static (QDQ), int8 dynamic, or fp16; metadata updated."""
    from edgecnn.export.quantize import quantize_model

    with progress(enabled=not json_output) as (on_step, on_progress):
        result = quantize_model(
            model, output, mode=mode, calibration=calibration, calibration_size=calibration_size,
            method=method, keep_float=split_names(keep_float), accuracy_budget=accuracy_budget,
            validation=validation, keep_io_float=keep_io_float,
            input_size=parse_input_size(input_size), mean=parse_floats(mean, "--mean"),
            std=parse_floats(std, "--std"), check=check, seed=seed, on_step=on_step,
            on_progress=on_progress, on_warning=print_warning)
    summary = result.as_dict()
    if json_output:
        print_json(summary)
    else:
        print_quantize_summary(summary)


def print_warning(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
