"""`edgecnn run MODEL.onnx INPUT...` and `edgecnn bench MODEL.onnx [MORE.onnx...] [--matrix]`.
Torch-free.

Both are thin layers over edgecnn.runtime (run_files, benchmark); the runtime is imported
inside the commands so `edgecnn --help` and the other commands do not pay for onnxruntime.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecnn.cli._app import (
    BenchBatchOpt, CacheDirOpt, JsonOpt, MaxPixelsOpt, ProviderOpt, RayOpt, StreamBatchOpt,
    ThreadsOpt, WorkersOpt, app, out, print_fields, print_json, print_warning, progress, safe,
    warnings_as_lines,
)
from edgecnn.cli._preprocessing_flags import (
    InputNameOpt, LayoutOpt, PreprocessInputSizeOpt, preprocessing_settings,
    with_preprocessing_flags,
)
from edgecnn.errors import BadInput


InputsArg = Annotated[list[str], typer.Argument(
    metavar="INPUT",
    help="Images: files (any format Pillow reads), folders (their image files, sub-folders "
         "included), globs ('shots/**/*.jpg') or @list.txt (one path a line).")]


def _print_record(record: dict, top_k: int) -> None:
    say = functools.partial(out.print, soft_wrap=True)  # long paths stay on one line
    say(f"[bold]{safe(record['image'])}[/bold]")
    if "error" in record:
        say(f"  [red]skipped:[/red] {safe(record['error'])}")
    elif "top_k" in record:
        for rank, entry in enumerate(record["top_k"], 1):
            say(f"  {rank}. {safe(entry.get('label', entry['index']))}  "
                f"{entry['probability']:.4f}")
    else:
        classes = ", ".join(f"{safe(entry.get('label', entry['index']))} {entry['fraction']:.1%}"
                            for entry in record["classes"][:top_k])
        say(f"  {record['shape'][0]}x{record['shape'][1]} class map: {classes}")


def _print_header(summary: dict) -> None:
    weights = f", weights {safe(summary['weights'])}" if summary.get("weights") else ""
    out.print(f"{safe(summary['name'])} ({safe(summary['task'])}, {summary['precision']}"
              f"{weights}) on {', '.join(summary['providers'])}", soft_wrap=True)


@app.command("run")
@with_preprocessing_flags
def run_command(
    model: Annotated[str, typer.Argument(
        help="An .onnx file: exported by edgecnn (or annotated), or any image model with the "
             "preprocessing flags.")],
    images: InputsArg,
    top_k: Annotated[int, typer.Option("--top-k", help="Classes to show per image.")] = 5,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", metavar="FILE.jsonl|FILE.csv",
        help="Write one record per image as it is done (image, top-k or class shares, or the "
             "error of an unreadable file), one complete line each; stdout gets a summary.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Skip the images --output already holds and append the others.")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Stop at the first unreadable image (exit 2) instead of recording it "
                         "and going on (exit 3 when some failed).")] = False,
    masks: Annotated[Optional[str], typer.Option(
        "--masks", metavar="DIR",
        help="Segmentation: write each class map as a PNG of class indices under DIR, "
             "mirroring the image paths (photo.jpg -> DIR/photo.jpg.png).")] = None,
    batch: StreamBatchOpt = None,
    workers: WorkersOpt = None,
    max_pixels: MaxPixelsOpt = None,
    ray: RayOpt = None,
    provider: ProviderOpt = "auto",
    threads: ThreadsOpt = None,
    cache_dir: CacheDirOpt = None,
    json_output: JsonOpt = False,
    preprocessing: dict | None = None,
) -> int:
    """Classify (top-k) or segment images, streamed: threads decode the next images while the
    model runs. Preprocessing comes from the model's metadata, or from the flags (which
    replace the metadata's values; `edgecnn annotate` stores them). Exit 3: some images could
    not be read (each is reported; the others ran)."""
    from edgecnn.runtime.predict import SOME_FAILED_EXIT_CODE, run_files

    collected: list[dict] = []
    show = collected.append if json_output else (lambda record: _print_record(record, top_k))
    on_record = show if output is None else None  # else the records go to the file
    bar = not json_output and (output is not None or not out.is_terminal)
    with warnings_as_lines(), progress(enabled=bar) as (_, on_progress):
        summary = run_files(
            model, images, output=output, resume=resume, strict=strict, masks=masks,
            top_k=top_k, batch=batch, workers=workers, provider=provider, threads=threads,
            cache_dir=cache_dir, preprocessing=preprocessing, max_pixels=max_pixels, ray=ray,
            on_start=None if json_output else _print_header, on_record=on_record,
            on_progress=on_progress and (lambda done, total: on_progress("images", done, total)))
    failed = summary["failed"]
    if json_output or output is not None:  # no listing on stdout shows the failures
        for failure in summary["failures"]:
            print_warning(failure["error"])
    if json_output:
        print_json(summary if output is not None else {**summary, "results": collected})
    elif output is not None:
        out.print(f"wrote {summary['done']} record(s) to {safe(output)}"
                  + (f" after the {summary['resumed']} already there" if resume else "")
                  + (f"; {failed} image(s) failed" if failed else ""),
                  soft_wrap=True)
    return SOME_FAILED_EXIT_CODE if failed else 0


def _print_matrix(files: list[str], batch, threads, warmup: int, runs: int,
                  json_output: bool) -> None:
    from rich.table import Table

    from edgecnn.runtime.bench_matrix import bench_matrix

    with progress(enabled=not json_output) as (on_step, _):
        rows = bench_matrix(files, batch=batch, threads=threads, warmup=warmup, runs=runs,
                            on_cell=lambda index, total, what: on_step(
                                f"[{index + 1}/{total}] {what}"))
    if json_output:
        print_json({"rows": [row.as_dict() for row in rows]})
        return
    table = Table("file", "precision", "provider", "p50 ms", "p90 ms", "items/s", "peak RSS MB",
                  "start-up s", "rel_l2 vs cpu fp32", "")
    for row in rows:
        rss = "n/a" if row.peak_rss_mb is None else f"{row.peak_rss_mb:.0f}"
        parity = "–" if row.rel_l2 is None else f"{row.rel_l2:.2e}"
        marks = ", ".join(mark for mark, on in (("auto", row.auto), ("fastest", row.fastest)) if on)
        table.add_row(safe(Path(row.file).name), row.precision, safe(row.provider),
                      f"{row.latency_ms['p50']:.3f}", f"{row.latency_ms['p90']:.3f}",
                      f"{row.throughput:,.1f}", rss, f"{row.startup_s:.2f}", parity, marks)
    out.print(table)


@app.command("bench")
def bench_command(
    model: Annotated[list[str], typer.Argument(
        help="An .onnx file; with --matrix one or more (an fp32 file and its int8/fp16 files).")],
    provider: ProviderOpt = "auto",
    batch: BenchBatchOpt = None,
    threads: ThreadsOpt = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls first.")] = 10,
    runs: Annotated[int, typer.Option("--runs", help="Timed calls.")] = 100,
    cache_dir: CacheDirOpt = None,
    input_size: PreprocessInputSizeOpt = None,
    layout: LayoutOpt = None,
    input_name: InputNameOpt = None,
    matrix: Annotated[bool, typer.Option(
        "--matrix", help="Every provider that runs here x the files (an fp32 file also in bf16 on "
                         "OpenVINO), each in its own process: latency, throughput, peak RSS, "
                         "start-up, rel_l2 against the CPU provider's fp32 output, what auto "
                         "picks and the fastest.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Latency percentiles, throughput and peak memory of a model on random input (sized by
    the metadata, or --input-size/--layout/--input-name for dynamic axes of a file without)."""
    from edgecnn.runtime.bench import benchmark

    settings = preprocessing_settings(input_size=input_size, layout=layout, input_name=input_name)

    if matrix:
        if provider != "auto":
            raise BadInput("--matrix runs every installed provider; leave --provider out")
        if settings:
            raise BadInput("--matrix takes files with edgecnn metadata; `edgecnn annotate` them "
                           "first")
        _print_matrix(model, batch, threads, warmup, runs, json_output)
        return
    if len(model) > 1:
        raise BadInput(f"bench takes one file ({len(model)} given); compare several with --matrix")
    model = model[0]
    with warnings_as_lines():
        result = benchmark(model, provider, batch=batch, threads=threads, warmup=warmup, runs=runs,
                           cache_dir=cache_dir, preprocessing=settings)
    if json_output:
        print_json(result.as_dict())
        return
    latency = result.latency_ms
    rss = "n/a" if result.peak_rss_mb is None else f"{result.peak_rss_mb:.1f} MB"
    print_fields([
        ("model", f"{result.model} ({result.precision or 'no edgecnn metadata'})"),
        ("provider", ", ".join(result.providers)),
        ("batch / threads", f"{result.batch} / {result.threads or 'default'}"),
        ("latency (ms)", f"p50 {latency['p50']:.3f}  p90 {latency['p90']:.3f}  "
                         f"p99 {latency['p99']:.3f}  ({result.runs} runs after {result.warmup} warmup)"),
        ("throughput", f"{result.throughput:,.1f} items/s"),
        ("peak RSS", rss),
    ])
