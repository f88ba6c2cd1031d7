"""Find the first module where an exported graph stops computing what eager PyTorch computes.

The dynamo exporter records, on every ONNX node, the module path that produced it
(``pkg.torch.onnx.name_scopes``: ``['', 'layer1', 'layer1.0', 'layer1.0.bn1', <op>]``). A run
of consecutive nodes inside one module path is one call of that module; the output of its
last node is the module's output. We expose those tensors as extra graph outputs, capture the
eager outputs of the same module calls with forward hooks, and compare them in graph order.

Modules folded away by the exporter (a Conv2d whose BatchNorm was fused into it reports under
the BatchNorm's path) simply have no ONNX counterpart and are skipped.

In a quantized (QDQ) graph the next layer never sees a module's float output, only what its
QuantizeLinear -> DequantizeLinear pair made of it, so that DequantizeLinear output is compared
(``quantized_views``). The quantizer's own nodes carry no scope record and split no run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from edgecnn.export.name_scopes import node_scopes, quantized_views
from edgecnn.export.parity import ParityMetrics, compare, module_outputs
from edgecnn.runtime import load_session
from edgecnn.runtime.onnx_file import with_outputs

@dataclass
class ModuleCall:
    module: str  # dotted path, as in model.named_modules()
    call: int  # 0 for the first call of the module, 1 for the second...
    tensor: str  # the ONNX tensor holding this call's output
    position: int  # index of the node producing it (graph order)
    # The tensor is a DequantizeLinear output whose Q clips negatives to 0 (see quantized_views):
    # compare it with the eager output through the same ReLU.
    clipped_at_zero: bool = False


@dataclass
class LayerComparison:
    module: str
    call: int
    tensor: str
    metrics: ParityMetrics
    diverged: bool

    def as_dict(self) -> dict:
        return {"module": self.module, "call": self.call, "tensor": self.tensor,
                "diverged": self.diverged, **self.metrics.as_dict()}


@dataclass
class BisectResult:
    tolerance: float
    layers: list[LayerComparison]
    first_divergent: LayerComparison | None

    def as_dict(self) -> dict:
        first = self.first_divergent
        return {"tolerance": self.tolerance, "compared_layers": len(self.layers),
                "first_divergent": first.as_dict() if first else None}


def module_calls(model: onnx.ModelProto, module_names: set[str]) -> list[ModuleCall]:
    """Each call of each module, with the ONNX tensor of its output, in graph order."""
    calls, open_runs, counts = [], {}, defaultdict(int)
    previous: set[str] = set()
    for position, node in enumerate(model.graph.node):
        scopes = node_scopes(node)  # the modules the node ran in
        if scopes is None:  # added after export (Q/DQ pairs, weight DQs): in no module call
            continue
        current = {scope for scope in scopes if scope and scope in module_names}
        for module in previous - current:  # a run ended on the previous node
            calls.append(open_runs.pop(module))
        for module in current:
            if module not in previous:
                open_runs[module] = ModuleCall(module, counts[module], "", position)
                counts[module] += 1
            open_runs[module].tensor = node.output[0]
            open_runs[module].position = position
        previous = current
    calls.extend(open_runs.values())
    views = quantized_views(model)
    for call in calls:
        if call.tensor in views:
            call.tensor, call.clipped_at_zero = views[call.tensor]
    return sorted(calls, key=lambda c: (c.position, -c.module.count(".")))


def bisect(module: nn.Module, model: onnx.ModelProto, inputs: np.ndarray, tolerance: float,
           providers: list | None = None) -> BisectResult:
    """Compare every module call's output eager vs ONNX; name the first over ``tolerance``.
    ``module`` runs as it is: in eval mode for a check (``check_onnx`` sets it)."""
    module_names = {name for name, _ in module.named_modules() if name}
    calls = module_calls(model, module_names)
    session = load_session(with_outputs(model, [c.tensor for c in calls]).SerializeToString(),
                           providers=providers)
    exposed = [output.name for output in session.get_outputs()]
    feed = {session.get_inputs()[0].name: inputs}
    onnx_values = dict(zip(exposed, session.run(exposed, feed)))
    eager: dict[str, list] = defaultdict(list)

    def record(name: str, output) -> None:  # clone: later in-place ops change it
        eager[name].append(output.detach().clone().numpy() if isinstance(output, torch.Tensor)
                           else None)

    module_outputs(module, torch.from_numpy(inputs), record, {c.module for c in calls})
    layers = []
    for call in calls:
        eager_calls = eager.get(call.module, [])
        if call.tensor not in onnx_values or call.call >= len(eager_calls):
            continue
        reference, candidate = eager_calls[call.call], onnx_values[call.tensor]
        if reference is None or reference.shape != candidate.shape:
            continue  # the last node of the run is not the module's output (rare)
        if call.clipped_at_zero:
            reference = np.maximum(reference, 0)
        metrics = compare(reference, candidate)
        layers.append(LayerComparison(call.module, call.call, call.tensor, metrics,
                                      diverged=not metrics.rel_l2 <= tolerance))
    first = next((layer for layer in layers if layer.diverged), None)
    return BisectResult(tolerance=tolerance, layers=layers, first_divergent=first)


def why_nothing_compared(model: onnx.ModelProto) -> str:
    """The note for a bisect of ``model`` that found no module output to compare."""
    if any(node_scopes(node) for node in model.graph.node):
        return ("bisect compared nothing: the module paths the graph's nodes record name none "
                "of this module's (was the file exported from another module?)")
    producer = model.producer_name or "the tool that wrote it"
    return (f"bisect compared nothing: the graph's nodes record no module path ({producer} did "
            "not write them; torch.onnx.export(..., dynamo=True) and edgecnn export do)")
