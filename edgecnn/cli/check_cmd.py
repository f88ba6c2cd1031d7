"""`edgecnn check NAME`: eager vs ONNX parity, with optional layer-by-layer bisection."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from edgecnn.cli._app import (
    InputSizeOpt, JsonOpt, ModelOptionOpt, NumClassesOpt, WeightsOpt, app, err, out,
    in_flags, print_int8_report, print_json, progress, safe,
)
from edgecnn.cli._parsing import parse_input_size, parse_model_options
from edgecnn.errors import BadInput


def _print_report(report) -> None:
    table = Table("output", "rel_l2", "max_abs", "worst at", "cosine", "SQNR dB", "top-1 agree",
                  "result")
    for output in report.outputs:
        m = output.metrics
        table.add_row(safe(output.name), f"{m.rel_l2:.3e}", f"{m.max_abs:.3e}",
                      str(list(m.worst_index)) if m.worst_index is not None else "–",
                      f"{m.cosine:.8f}", f"{m.sqnr_db:.1f}",
                      "–" if m.top1_agreement is None else f"{m.top1_agreement:.4f}",
                      "[green]pass[/green]" if output.passed else "[red]FAIL[/red]")
    out.print(f"{safe(report.model)} {report.precision} on {', '.join(report.providers)}: "
              f"{report.rows} rows in {report.samples} batches"
              + (f" ({report.images} from images)" if report.images else "")
              + f", criterion {report.verdict.criterion}")
    out.print(table)
    if report.bisect is not None:
        first = report.bisect.first_divergent
        if not report.bisect.layers:
            out.print("bisect: no module output to compare (see the note)")
        elif first is None:
            out.print(f"bisect: {len(report.bisect.layers)} module outputs compared, "
                      "none over the tolerance")
        else:
            out.print(f"bisect: first divergence at [bold]{safe(first.module)}[/bold]"
                      f" (call {first.call}, ONNX tensor {safe(first.tensor)}): "
                      f"rel_l2 {first.metrics.rel_l2:.3e}, max_abs {first.metrics.max_abs:.3e}")
    if report.per_layer is not None:
        print_int8_report(report.per_layer)
    command = typer.main.get_command(app)  # notes are in the API's words: shown as flags
    for note in report.notes:
        err.print(f"note: {safe(in_flags(note, command, ['check'], leading=False))}",
                  highlight=False, soft_wrap=True)  # one line, whatever the width


@app.command("check")
def check_command(
    model: Annotated[str, typer.Argument(
        metavar="SPEC",
        help="The eager side: a registered model (see `edgecnn list`), package.module:callable, "
             "path/file.py:callable or a .pt2 file, as `edgecnn export` takes it.")],
    onnx_argument: Annotated[Optional[str], typer.Argument(
        metavar="FILE.onnx", help="Check this file instead of a fresh export (or --onnx).",
        show_default=False)] = None,
    onnx_file: Annotated[Optional[str], typer.Option(
        "--onnx", help="Check this file instead of a fresh export.")] = None,
    precision: Annotated[Optional[str], typer.Option(
        metavar="PRECISION",
        help="{precisions} (default: fp32, or the --onnx file's).")] = None,
    batch: Annotated[Optional[int], typer.Option(
        help="Batch size of each random input (default: 2, or the --onnx file's fixed batch).")
    ] = None,
    samples: Annotated[int, typer.Option(help="Number of random batches.")] = 3,
    images: Annotated[Optional[str], typer.Option(
        help="Folder of images (jpg, png, ...) added to the inputs (int8: also the calibration set).")] = None,
    provider: Annotated[str, typer.Option(
        help="Execution provider: {providers} (openvino:DEVICE, default CPU; in f32). "
             "Default cpu, unlike run and bench (auto): a "
             "parity check proves the export against its reference provider, and an "
             "accelerator (TF32, TensorRT's own kernels) is checked when asked for by name.")
    ] = "cpu",
    min_top1: Annotated[Optional[float], typer.Option(
        "--min-top1", metavar="FRACTION",
        help="Also fail when the top-1 agreement with eager is below FRACTION, e.g. 0.99 "
             "(default: off; the rel_l2 bound decides).")] = None,
    tolerance: Annotated[Optional[float], typer.Option(
        help="rel_l2 bound (default: the file's own bound for its precision: 1e-5 fp32, "
             "5e-3 fp16, the 20 dB SQNR floor for int8, unless the model says otherwise).")] = None,
    seed: Annotated[int, typer.Option(help="Seed the file was exported with.")] = 0,
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    input_size: InputSizeOpt = None,
    in_channels: Annotated[Optional[int], typer.Option(
        help="Input channels of a fresh export of a model that is not registered (a file "
             "gives its own).")] = None,
    model_options: ModelOptionOpt = None,
    bisect: Annotated[bool, typer.Option(help="Find the first module where outputs diverge.")] = False,
    per_layer: Annotated[bool, typer.Option(
        "--per-layer", help="int8 files: where the error comes from, per quantized activation "
                            "and weight (SQNR against a fresh fp32 export), worst first.")] = False,
    report: Annotated[Optional[str], typer.Option(help="Also write the report to FILE.md or FILE.json.")] = None,
    json_output: JsonOpt = False,
) -> None:
    """Compare eager PyTorch with the ONNX model; exit 1 when a criterion fails."""
    from edgecnn.export.check import check_parity
    from edgecnn.export.check_report import check_report_path, write_report

    if onnx_argument is not None and onnx_file is not None:
        raise BadInput(f"give the ONNX file once: {onnx_argument} or --onnx {onnx_file}")
    onnx_file = onnx_file if onnx_argument is None else onnx_argument
    if report:
        check_report_path(report)

    with progress(enabled=not json_output) as (on_step, _):
        result = check_parity(
            model, onnx_file, precision=precision, batch=batch, samples=samples, images=images,
            providers=provider, tolerance=tolerance, min_top1=min_top1, seed=seed, weights=weights,
            num_classes=num_classes, input_size=parse_input_size(input_size),
            in_channels=in_channels, model_options=parse_model_options(model_options),
            bisect=bisect, per_layer=per_layer, on_step=on_step)
    if report:
        write_report(result, report)
    if json_output:
        print_json(result.as_dict())
    else:
        _print_report(result)
    if not result.passed:
        raise typer.Exit(1)
