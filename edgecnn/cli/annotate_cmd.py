"""`edgecnn annotate IN.onnx -o OUT.onnx` (or `--in-place`): edgecnn metadata for a file edgecnn
did not write. A thin layer over edgecnn.runtime.annotate (it needs the onnx package, never
torch). The preprocessing flags are `run`'s (``_preprocessing_flags``)."""

from __future__ import annotations

from typing import Annotated

import typer

from edgecnn.cli._app import JsonOpt, OutputOpt, app, out, print_json, safe
from edgecnn.cli._preprocessing_flags import with_preprocessing_flags


@app.command("annotate")
@with_preprocessing_flags
def annotate_command(
    model: Annotated[str, typer.Argument(help="An .onnx file (its .onnx.data beside it, if any).")],
    output: OutputOpt = None,
    in_place: Annotated[bool, typer.Option(
        "--in-place", help="Rewrite MODEL itself instead of writing --output.")] = False,
    json_output: JsonOpt = False,
    preprocessing: dict | None = None,
) -> None:
    """Write edgecnn metadata (preprocessing, task, labels) into an .onnx file from plain
    torch.onnx.export or elsewhere, so run, bench, quantize and check need no flags for it.
    Flags not given keep the file's current metadata, or take the defaults shown; the values
    are checked against the graph. External data stays beside the output (copied when the
    output is in another folder)."""
    from dataclasses import asdict

    from edgecnn.runtime.annotate import annotate

    result = annotate(model, output, in_place=in_place, **preprocessing)
    if json_output:
        print_json({"path": str(result.path), "external_data": result.data_files,
                    "metadata": asdict(result.metadata)})
        return
    info = result.metadata.input
    channels, height, width = info.shape
    labels_text = f", {len(result.metadata.labels)} labels" if result.metadata.labels else ""
    out.print(f"[green]wrote[/green] {safe(result.path)}: {safe(result.metadata.task)}, input "
              f"{safe(info.name)} {info.layout} {channels}x{height}x{width} {info.color} "
              f"/{info.scale:g} mean {info.mean} std {info.std} center-crop "
              f"{info.crop_fraction:g}{labels_text}", soft_wrap=True)
