"""Where the int8 error of a QDQ file comes from: a per-layer report (docs/quantization.md,
"The per-layer report").

    report = int8_report("model.onnx", "model_int8.onnx", inputs)
    write_int8_report(report, "report.html")   # or .md, .json

The tensors are collected and matched by onnxruntime's ``qdq_loss_debug`` (both models run
with every float tensor exposed; each QuantizeLinear input paired with its DequantizeLinear
output, each weight with its dequantized value). For each quantized activation the report
gives its own quantization SQNR (the tensor entering the QuantizeLinear against what the
DequantizeLinear makes of it, in the int8 run), the same per channel (the worst channel: one
channel with an outlier range leaves the others a few levels), and the accumulated SQNR (the
fp32 run against the int8 run at that tensor); for each weight its SQNR, worst channel and
range. Rows are named by the module that produced them (the exporter's name scopes, as
``check --bisect`` uses them), else by the node, and sorted worst first.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgecnn.errors import BadInput
from edgecnn.export.name_scopes import producing_module, quantized_views
from edgecnn.export.calibration import batches
from edgecnn.export.parity import INT8_SQNR_FLOOR_DB, sqnr_db
from edgecnn.export.quiet import silenced
from edgecnn.runtime.files import check_report_path, work_directory, write_text
from edgecnn.runtime.onnx_file import attribute, dims, fixed_batch, graph_inputs, load_model

REPORT_SUFFIXES = (".html", ".md", ".json")
REPORT_SAMPLES = 16  # input rows run through both models (every activation is kept in memory)
RUN_BATCH = 8
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# A channel below this share of the median channel's norm is not rated: a near-silent channel
# rounds to zero at any scale; the outlier failure is the typical channel losing its levels.
QUIET_CHANNEL = 0.1


def worst_channel(reference: np.ndarray, candidate: np.ndarray, axis: int) -> tuple[float, int | None]:
    """(the lowest per-channel SQNR along ``axis``, that channel); quiet channels are skipped."""
    if reference.ndim <= axis:
        return sqnr_db(reference, candidate), None
    reference, candidate = np.moveaxis(reference, axis, 0), np.moveaxis(candidate, axis, 0)
    norms = np.linalg.norm(reference.reshape(len(reference), -1).astype(np.float64), axis=1)
    rated = [c for c in range(len(norms)) if norms[c] > 0 and norms[c] >= QUIET_CHANNEL * np.median(norms)]
    if not rated:
        return math.inf, None
    values = {c: sqnr_db(reference[c], candidate[c]) for c in rated}
    channel = min(values, key=values.get)
    return values[channel], channel


def _stacked(arrays) -> np.ndarray:
    return np.concatenate(list(arrays)) if isinstance(arrays, (list, tuple)) else np.asarray(arrays)


def _json_number(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) or math.isnan(value) else round(value, 3)


def format_db(value: float | None) -> str:
    return "–" if value is None else ("inf" if math.isinf(value) else f"{value:.1f}")


def _channel(index: int | None) -> str:
    return "–" if index is None else str(index)


class RatedRow:
    """A row of the report: rated by the lower of its SQNR and its worst channel's."""

    sqnr_db: float
    worst_channel_sqnr_db: float

    @property
    def score(self) -> float:
        return min(self.sqnr_db, self.worst_channel_sqnr_db)

    def as_dict(self) -> dict:
        values = asdict(self)
        return {key: _json_number(value) if key.endswith("_db") else value
                for key, value in values.items()}


@dataclass
class ActivationRow(RatedRow):
    tensor: str
    module: str  # the producing module's name scope, else the producing node's name
    node: str  # the node producing the tensor ("" for a graph input)
    op_type: str
    depth: int  # the producing node's position in the int8 graph
    sqnr_db: float  # the tensor against its QDQ rounding, in the int8 run
    worst_channel_sqnr_db: float
    worst_channel: int | None
    accumulated_sqnr_db: float | None  # fp32 run against int8 run at this tensor (None: no match)
    consumers: list[str] = field(default_factory=list)  # the nodes reading its dequantized value

    COLUMNS = ("module", "tensor", "op", "own SQNR dB", "worst channel dB", "channel",
               "accumulated dB")

    def cells(self) -> list[str]:
        """The row as the reports' tables show it (COLUMNS)."""
        return [self.module, self.tensor, self.op_type, format_db(self.sqnr_db),
                format_db(self.worst_channel_sqnr_db), _channel(self.worst_channel),
                format_db(self.accumulated_sqnr_db)]


@dataclass
class WeightRow(RatedRow):
    name: str
    module: str
    node: str  # the node that reads the dequantized weight
    sqnr_db: float
    worst_channel_sqnr_db: float
    worst_channel: int | None
    minimum: float
    maximum: float
    per_channel: bool

    COLUMNS = ("module", "weight", "SQNR dB", "worst channel dB", "channel", "min", "max",
               "scales")

    def cells(self) -> list[str]:
        return [self.module, self.name, format_db(self.sqnr_db),
                format_db(self.worst_channel_sqnr_db), _channel(self.worst_channel),
                f"{self.minimum:.4g}", f"{self.maximum:.4g}",
                "per channel" if self.per_channel else "per tensor"]


@dataclass
class Int8Report:
    model: str
    samples: int
    activations: list[ActivationRow]  # worst first
    weights: list[WeightRow]  # worst first
    floor_db: float = INT8_SQNR_FLOOR_DB

    @property
    def by_depth(self) -> list[ActivationRow]:
        return sorted(self.activations, key=lambda row: row.depth)

    def keep_float_suggestions(self, limit: int = 3) -> list[dict]:
        """The nodes to keep in float for the worst rows under the SQNR floor: an activation's
        producer and readers (its QuantizeLinear goes only when none of them is quantized), a
        weight's reader."""
        suggestions, seen = [], set()
        rows = sorted([*self.activations, *self.weights], key=lambda row: row.score)
        for row in rows:
            if len(suggestions) == limit or not row.score < self.floor_db:
                break
            if isinstance(row, ActivationRow):
                nodes = [name for name in (row.node, *row.consumers) if name]
                what = f"activation {row.tensor}"
            else:
                nodes, what = [row.node], f"weight {row.name}"
            nodes = [name for name in nodes if name not in seen]
            if not nodes:
                continue
            seen.update(nodes)
            suggestions.append({"nodes": nodes, "module": row.module, "reason": (
                f"{what}: SQNR {row.sqnr_db:.1f} dB, worst channel {row.worst_channel_sqnr_db:.1f}"
                f" dB (channel {row.worst_channel})")})
        return suggestions

    def as_dict(self) -> dict:
        return {"model": self.model, "samples": self.samples, "floor_db": self.floor_db,
                "activations": [row.as_dict() for row in self.activations],
                "weights": [row.as_dict() for row in self.weights],
                "keep_float_suggestions": self.keep_float_suggestions()}


def _markdown_table(rows: list[ActivationRow] | list[WeightRow], columns) -> list[str]:
    return [f"| {' | '.join(columns)} |", "|" + "---|" * len(columns),
            *(f"| {' | '.join(row.cells())} |" for row in rows)]


def markdown_tables(report: Int8Report) -> list[str]:
    """The report's tables as Markdown lines (the .md report and ``check --per-layer``'s)."""
    return [f"Activations ({len(report.activations)}), worst first: own SQNR is the tensor "
            "against its QDQ rounding; accumulated is fp32 against int8 at that tensor.", "",
            *_markdown_table(report.activations, ActivationRow.COLUMNS),
            "", f"Weights ({len(report.weights)}), worst first:", "",
            *_markdown_table(report.weights, WeightRow.COLUMNS)]


def to_markdown(report: Int8Report) -> str:
    lines = [f"# int8 per-layer report: {report.model}", "",
             f"{report.samples} input rows; SQNR floor {report.floor_db:g} dB.", "",
             *markdown_tables(report)]
    suggestions = report.keep_float_suggestions()
    if suggestions:
        lines += ["", "Suggested `--keep-float` (rows under the floor):", ""]
        lines += [f"- `--keep-float {','.join(s['nodes'])}` ({s['module']}: {s['reason']})"
                  for s in suggestions]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Collecting the tensors (onnxruntime's qdq_loss_debug)


def _activations(model_path: Path, augmented: Path, chunks: list[np.ndarray], input_name: str):
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations, modify_model_output_intermediate_tensors,
    )

    from edgecnn.export.quantize_recipes import calibration_reader

    modify_model_output_intermediate_tensors(str(model_path), str(augmented))
    return collect_activations(str(augmented), calibration_reader(input_name, chunks, None))


def _restore_shapes(tensors: dict[str, list], shapes: dict[str, list], rows: list[int]) -> None:
    """qdq_loss_debug flattens every tensor it saves: back to (rows, channels, rest) where the
    graph knows the channel count."""
    for name, runs in tensors.items():
        shape = shapes.get(name)
        if shape and len(shape) >= 2 and shape[1] and len(runs) == len(rows):
            if all(run.size % (count * shape[1]) == 0 for run, count in zip(runs, rows)):
                tensors[name] = [run.reshape(count, shape[1], -1) for run, count in zip(runs, rows)]


def _value_shapes(model: onnx.ModelProto) -> dict[str, list]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    return {value.name: dims(value) for value in values}


def _node_label(node: onnx.NodeProto | None) -> str:
    if node is None:
        return "(graph input)"
    return producing_module(node) or node.name or node.op_type


def _quantized_tensors(qdq: onnx.ModelProto) -> dict[str, str]:
    """qdq_loss_debug's activation name -> the tensor its QuantizeLinear reads (the quantizer
    renames a graph output X to X_QuantizeLinear_Input)."""
    from onnxruntime.quantization.quant_utils import QUANT_INPUT_SUFFIX

    return {(name[:-len(QUANT_INPUT_SUFFIX)] if name.endswith(QUANT_INPUT_SUFFIX) else name): name
            for node in qdq.graph.node if node.op_type == "QuantizeLinear"
            for name in node.input[:1]}


def _activation_rows(qdq: onnx.ModelProto, matches: dict, errors: dict) -> list[ActivationRow]:
    producers = {out: (position, node) for position, node in enumerate(qdq.graph.node)
                 for out in node.output}
    views, quantized = quantized_views(qdq), _quantized_tensors(qdq)
    rows = []
    for tensor, match in matches.items():
        position, node = producers.get(quantized.get(tensor, tensor), (-1, None))
        view = views.get(quantized.get(tensor, tensor), (None, False))[0]
        consumers = [n.name for n in qdq.graph.node if view in n.input and n.op_type not in QDQ_OPS]
        pre, post = _stacked(match["pre_qdq"]), _stacked(match["post_qdq"])
        channel_db, channel = worst_channel(pre, post, axis=1)
        rows.append(ActivationRow(
            tensor=tensor, module=_node_label(node), node=node.name if node is not None else "",
            op_type=node.op_type if node is not None else "input", depth=position + 1,
            sqnr_db=errors[tensor]["qdq_err"], worst_channel_sqnr_db=channel_db,
            worst_channel=channel, accumulated_sqnr_db=errors[tensor].get("xmodel_err"),
            consumers=consumers))
    return sorted(rows, key=lambda row: (row.score, row.depth))


def _weight_rows(qdq: onnx.ModelProto, matched: dict) -> list[WeightRow]:
    dequantize = {node.input[0]: node for node in qdq.graph.node
                  if node.op_type == "DequantizeLinear"}
    readers = {name: node for node in qdq.graph.node for name in node.input}
    sizes = {init.name: int(np.prod(init.dims)) for init in qdq.graph.initializer}
    rows = []
    for name, match in matched.items():
        weight, dequantized = match["float"], match["dequantized"].reshape(match["float"].shape)
        node = dequantize.get(f"{name}_quantized")
        if weight.ndim < 2 or node is None:  # biases: int32 at the product of two scales
            continue
        axis = attribute(node, "axis", 0)
        per_channel = sizes.get(node.input[1], 1) > 1
        channel_db, channel = worst_channel(weight, dequantized, axis=axis if per_channel else 0)
        reader = readers.get(node.output[0])
        rows.append(WeightRow(name=name, module=_node_label(reader),
                              node=reader.name if reader is not None else "",
                              sqnr_db=sqnr_db(weight, dequantized),
                              worst_channel_sqnr_db=channel_db, worst_channel=channel,
                              minimum=float(weight.min()), maximum=float(weight.max()),
                              per_channel=per_channel))
    return sorted(rows, key=lambda row: row.score)


def int8_report(float_model: str | os.PathLike | onnx.ModelProto,
                int8_model: str | os.PathLike | onnx.ModelProto, inputs: np.ndarray, *,
                name: str | None = None, samples: int = REPORT_SAMPLES) -> Int8Report:
    """The per-layer report of ``int8_model`` (QDQ) against ``float_model`` (the fp32 model it
    was quantized from) on the first ``samples`` rows of ``inputs`` (N, C, H, W)."""
    from onnxruntime.quantization.qdq_loss_debug import (
        compute_activation_error, create_activation_matching, create_weight_matching,
    )

    inputs = np.asarray(inputs, dtype=np.float32)[:samples]
    if not len(inputs):
        raise BadInput("inputs holds no row to run the models on")
    with work_directory("edgecnn-int8-report-") as work:
        paths = []
        for label, model in (("fp32", float_model), ("int8", int8_model)):
            if isinstance(model, onnx.ModelProto):
                path = work / f"{label}.onnx"
                onnx.save(model, str(path))
                model = path
            paths.append(Path(model))
        qdq = load_model(paths[1])
        if not any(node.op_type == "QuantizeLinear" for node in qdq.graph.node):
            raise BadInput(f"per_layer needs an int8 QDQ file; {paths[1]} has no QuantizeLinear")
        input_name = graph_inputs(qdq)[0].name
        chunks = batches(inputs, fixed_batch(qdq), RUN_BATCH)
        rows = [len(chunk) for chunk in chunks]
        with silenced(""):
            float_tensors = _activations(paths[0], work / "fp32-all.onnx", chunks, input_name)
            qdq_tensors = _activations(paths[1], work / "int8-all.onnx", chunks, input_name)
            logging.disable(logging.ERROR)  # it logs each weight the fp32 file lacks (a rewrite's)
            try:
                weights = create_weight_matching(str(paths[0]), str(paths[1]))
            finally:
                logging.disable(logging.NOTSET)
        shapes = _value_shapes(qdq)
        _restore_shapes(float_tensors, shapes, rows)
        _restore_shapes(qdq_tensors, shapes, rows)
    matches = create_activation_matching(qdq_tensors, float_tensors)
    clipping = {tensor for tensor, (_, clips) in quantized_views(qdq).items() if clips}
    for tensor, quantized_input in _quantized_tensors(qdq).items():
        if quantized_input in clipping and tensor in matches:  # a Relu folded into the Q: the Q input is pre-ReLU
            matches[tensor]["pre_qdq"] = [np.maximum(run, 0) for run in matches[tensor]["pre_qdq"]]
    for match in matches.values():
        match.setdefault("float", [])
        if match["float"] and any(f.shape != p.shape for f, p in zip(match["float"], match["post_qdq"])):
            match["float"] = []  # another tensor of the same name (a rewritten graph)
    errors = compute_activation_error(matches, err_func=sqnr_db)
    label = name or Path(paths[1]).name
    return Int8Report(model=label, samples=len(inputs),
                      activations=_activation_rows(qdq, matches, errors),
                      weights=_weight_rows(qdq, weights))


# ---------------------------------------------------------------------------------------------
# Files


def check_int8_report_path(path: str | os.PathLike) -> Path:
    """BadInput unless ``path`` is a writable FILE.html, FILE.md or FILE.json (before any work)."""
    return check_report_path(path, REPORT_SUFFIXES)


def write_int8_report(report: Int8Report, path: str | os.PathLike) -> Path:
    import json

    from edgecnn.export.int8_report_html import to_html

    path = check_int8_report_path(path)
    return write_text(path, {".json": lambda: json.dumps(report.as_dict(), indent=2) + "\n",
                             ".md": lambda: to_markdown(report),
                             ".html": lambda: to_html(report)}[path.suffix]())
