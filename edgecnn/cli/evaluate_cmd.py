"""`edgecnn evaluate MODEL.onnx [MORE.onnx...] DATA`: accuracy on a labelled set. Torch-free;
a thin layer over edgecnn.runtime.evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecnn.cli._app import (
    JsonOpt, MaxPixelsOpt, ProviderOpt, RayOpt, StreamBatchOpt, ThreadsOpt, WorkersOpt, app, out,
    print_json, print_warning, progress, safe, warnings_as_lines,
)
from edgecnn.cli._preprocessing_flags import with_preprocessing_flags
from edgecnn.errors import BadInput

SHOWN_CLASSES = 50  # per-class rows printed (all of them in --json)
SHOWN_MATRIX = 12  # classes up to which the confusion matrix is printed


def _percent(value) -> str:
    return "–" if value is None else f"{value:.2%}"


def _print_report(report: dict) -> None:
    from rich.table import Table

    table = Table("model", "precision", "samples", "top-1", "top-5", "top-1 agreement")
    for row in report["models"]:
        table.add_row(safe(row["model"]), safe(row["precision"]), str(row["samples"]),
                      _percent(row["top1"]), _percent(row["top5"]),
                      _percent(row["top1_agreement"]))
    out.print(table)
    classes = report["classes"]
    if len(classes) <= SHOWN_CLASSES:
        per_class = Table("class", "samples", *(f"top-1 {safe(Path(row['model']).name)}"
                                                for row in report["models"]))
        for index, name in enumerate(classes):
            per_class.add_row(safe(name), str(report["models"][0]["per_class"][index]["samples"]),
                              *(_percent(row["per_class"][index]["top1"])
                                for row in report["models"]))
        out.print(per_class)
    if len(classes) <= SHOWN_MATRIX:
        matrix = Table("true \\ predicted", *map(safe, classes))
        for name, counts in zip(classes, report["models"][0]["confusion"]):
            matrix.add_row(safe(name), *map(str, counts))
        out.print(matrix)
    if len(classes) > SHOWN_MATRIX:
        out.print(f"{len(classes)} classes: the per-class figures and confusion matrices are in "
                  "--json (and --plot)")


@app.command("evaluate")
@with_preprocessing_flags
def evaluate_command(
    paths: Annotated[list[str], typer.Argument(
        metavar="MODEL.onnx [MODEL2.onnx ...] DATA",
        help="Classification models (e.g. one network in fp32, int8, fp16), then the labelled "
             "set: a folder with one sub-folder of images per class (named after the model's "
             "labels, else its classes in sorted order) or an .npz with 'inputs' and 'labels'.")],
    batch: StreamBatchOpt = None,
    workers: WorkersOpt = None,
    plot: Annotated[Optional[str], typer.Option(
        "--plot", metavar="FILE.png",
        help="Draw the first model's confusion matrix into FILE (needs matplotlib).")] = None,
    max_pixels: MaxPixelsOpt = None,
    ray: RayOpt = None,
    provider: ProviderOpt = "auto",
    threads: ThreadsOpt = None,
    json_output: JsonOpt = False,
    preprocessing: dict | None = None,
) -> None:
    """Top-1, top-5, per-class accuracy and the confusion matrix of each model on a labelled
    set, with each model's top-1 agreement with the first. Unreadable images are skipped (a
    warning line each) for every model alike. The preprocessing flags (for files without
    edgecnn metadata, or to replace its fields) apply to every model."""
    from edgecnn.runtime.evaluate import evaluate, plot_confusion, require_pyplot
    from edgecnn.runtime.files import check_output_path

    if len(paths) < 2:
        raise BadInput("evaluate takes MODEL.onnx [MODEL2.onnx ...] DATA (at least two paths)")
    if plot is not None:
        require_pyplot()
        check_output_path(plot)
    with warnings_as_lines(), progress(enabled=not json_output) as (_, on_progress):
        report = evaluate(paths[:-1], paths[-1], batch=batch, workers=workers, provider=provider,
                          threads=threads, max_pixels=max_pixels, ray=ray,
                          preprocessing=preprocessing, on_progress=on_progress)
    if plot is not None:
        first = report["models"][0]
        plot_confusion(first["confusion"], report["classes"], plot,
                       f"{first['name']} ({first['precision']}): top-1 {first['top1']:.2%}")
    for failure in report["unreadable"]:
        print_warning(f"skipped: {failure['error']}")
    if json_output:
        print_json(report)
    else:
        _print_report(report)
