"""`edgecnn run MODEL.onnx IMAGE...` and `edgecnn bench MODEL.onnx`. Torch-free.

Both are thin layers over edgecnn.runtime (predict_files, benchmark); the runtime is imported
inside the commands so `edgecnn --help` and the other commands do not pay for onnxruntime.
"""

from __future__ import annotations

import functools
from typing import Annotated

import typer

from edgecnn.cli._app import (
    BenchBatchOpt, JsonOpt, ProviderOpt, ThreadsOpt, app, out, print_fields, print_json, safe,
    warnings_as_lines,
)


@app.command("run")
def run_command(
    model: Annotated[str, typer.Argument(help="An .onnx file exported by edgecnn.")],
    images: Annotated[list[str], typer.Argument(help="Image files (any format Pillow reads).")],
    top_k: Annotated[int, typer.Option("--top-k", help="Classes to show per image.")] = 5,
    provider: ProviderOpt = "auto",
    threads: ThreadsOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Classify (top-k) or segment images; preprocessing comes from the model's metadata."""
    from edgecnn.runtime.predict import predict_files

    with warnings_as_lines():
        report = predict_files(model, images, top_k=top_k, provider=provider, threads=threads)
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


@app.command("bench")
def bench_command(
    model: Annotated[str, typer.Argument(help="An .onnx file.")],
    provider: ProviderOpt = "auto",
    batch: BenchBatchOpt = None,
    threads: ThreadsOpt = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls first.")] = 10,
    runs: Annotated[int, typer.Option("--runs", help="Timed calls.")] = 100,
    json_output: JsonOpt = False,
) -> None:
    """Latency percentiles, throughput and peak memory of a model on random input."""
    from edgecnn.runtime.bench import benchmark

    with warnings_as_lines():
        result = benchmark(model, provider, batch=batch, threads=threads, warmup=warmup, runs=runs)
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
