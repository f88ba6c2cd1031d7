"""`edgecnn run MODEL.onnx IMAGE...` and `edgecnn bench MODEL.onnx [MORE.onnx...] [--matrix]`.
Torch-free.

Both are thin layers over edgecnn.runtime (predict_files, benchmark); the runtime is imported
inside the commands so `edgecnn --help` and the other commands do not pay for onnxruntime.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from edgecnn.cli._app import (
    BenchBatchOpt, CacheDirOpt, JsonOpt, ProviderOpt, ThreadsOpt, app, out, print_fields,
    print_json, progress, safe, warnings_as_lines,
)
from edgecnn.cli._preprocessing_flags import (
    InputNameOpt, LayoutOpt, PreprocessInputSizeOpt, preprocessing_settings,
    with_preprocessing_flags,
)
from edgecnn.errors import BadInput


@app.command("run")
@with_preprocessing_flags
def run_command(
    model: Annotated[str, typer.Argument(
        help="An .onnx file: exported by edgecnn (or annotated), or any image model with the "
             "preprocessing flags.")],
    images: Annotated[list[str], typer.Argument(help="Image files (any format Pillow reads).")],
    top_k: Annotated[int, typer.Option("--top-k", help="Classes to show per image.")] = 5,
    provider: ProviderOpt = "auto",
    threads: ThreadsOpt = None,
    cache_dir: CacheDirOpt = None,
    json_output: JsonOpt = False,
    preprocessing: dict | None = None,
) -> None:
    """Classify (top-k) or segment images; preprocessing comes from the model's metadata, or
    from the flags (which replace the metadata's values; `edgecnn annotate` stores them)."""
    from edgecnn.runtime.predict import predict_files

    with warnings_as_lines():
        report = predict_files(model, images, top_k=top_k, provider=provider, threads=threads,
                               cache_dir=cache_dir, preprocessing=preprocessing)
    if json_output:
        print_json(report)
        return
    say = functools.partial(out.print, soft_wrap=True)  # long paths stay on one line
    weights = f", weights {safe(report['weights'])}" if report.get("weights") else ""
    say(f"{safe(report['name'])} ({safe(report['task'])}, "
        f"{report['precision']}{weights}) on {', '.join(report['providers'])}")
    for result in report["results"]:
        say(f"[bold]{safe(result['image'])}[/bold]")
        if "top_k" in result:
            for rank, entry in enumerate(result["top_k"], 1):
                say(f"  {rank}. {safe(entry.get('label', entry['index']))}  "
                    f"{entry['probability']:.4f}")
        else:
            classes = ", ".join(f"{safe(entry.get('label', entry['index']))} {entry['fraction']:.1%}"
                                for entry in result["classes"][:top_k])
            say(f"  {result['shape'][0]}x{result['shape'][1]} class map: {classes}")


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
        "--matrix", help="Every installed provider x the files (an fp32 file also in bf16 on "
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
