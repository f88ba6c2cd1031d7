"""`edgecnn info MODEL.onnx`: metadata, inputs/outputs, opsets, custom ops. Torch-free."""

from __future__ import annotations

from typing import Annotated

import typer

from edgecnn.cli._app import JsonOpt, app, human_size, print_fields, print_json


@app.command("info")
def info_command(
    model: Annotated[str, typer.Argument(help="An .onnx file.")],
    json_output: JsonOpt = False,
) -> None:
    """Describe an .onnx file: edgecnn metadata, inputs/outputs, opsets, custom ops, size
    (its external data files included)."""
    from edgecnn.runtime.describe import describe_model

    info = describe_model(model)
    if json_output:
        print_json(info)
        return
    meta = info["metadata"]
    rows: list[tuple[str, str]] = []

    def add(key: str, value: str) -> None:
        rows.append((key, value))

    data = info["external_data"]
    add("file", f"{info['path']} ({human_size(info['size_bytes'])}"
                + (f" with its external data {', '.join(data)})" if data else ")"))
    if meta:
        add("model", f"{meta['model']} ({meta['task']})")
        add("precision", meta["precision"])
        spec = meta["input"]
        add("preprocess", f"{spec['color']} {spec['layout']} /{spec['scale']:g} "
                          f"mean {spec['mean']} std {spec['std']} center-crop {spec['crop_fraction']:g}")
        if meta.get("deform_lowering"):
            add("deform lowering", meta["deform_lowering"])
        if meta.get("quantization"):
            for index, (key, value) in enumerate(meta["quantization"].items()):
                add("quantization" if index == 0 else "", f"{key}={value}")
        add("labels", f"{len(meta['labels'])} labels" if meta["labels"] else "none")
        add("weights", meta.get("weights") or "not recorded")
    else:
        add("metadata", "none (not exported by edgecnn): give `edgecnn run` the preprocessing "
                        "flags, or write them into the file with `edgecnn annotate`")
    for kind in ("inputs", "outputs"):
        for value in info[kind]:
            ends_in = (f" (probabilities: the graph ends in {value['probability_op']})"
                       if value.get("probabilities") else "")
            add(kind[:-1], f"{value['name']} {value['shape']} {value['dtype']}{ends_in}")
    if "opset_imports" in info:
        add("opsets", ", ".join(f"{d} {v}" for d, v in info["opset_imports"].items()))
        customs = [f"{op['domain']}::{op['op']} ×{op['count']}" for op in info["custom_ops"]]
        add("custom ops", ", ".join(customs) or "none")
        if info["functions"]:  # the bodies that make custom ops runnable (model-local functions)
            add("functions", ", ".join(info["functions"]))
        # edgecnn's exporter folds each BatchNorm into the convolution before it, so its file
        # holds fewer values than the PyTorch model's parameter count (`edgecnn list`); of a
        # file another tool wrote (annotated or not), that says nothing.
        folded = (" (edgecnn folds BatchNorm into the convolutions: a model with BatchNorm "
                  "counts fewer than in PyTorch)" if info["producer"].startswith("edgecnn") else "")
        add("parameters", f"{info['parameters']:,} values in {info['nodes']} nodes{folded}")
    add("producer", info["producer"])
    print_fields(rows)
