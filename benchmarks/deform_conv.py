"""Deformable conv vs plain conv, same shape: onnxruntime (both lowerings) and eager PyTorch.

    .venv/bin/python benchmarks/deform_conv.py [--repeats 30] [--threads 1]

One interleaved run (batch 1, 64 -> 64 channels, 56x56, 3x3, stride 1, padding 1, offsets of
about a pixel): every round times each case once, in turn, and each ratio is the median of
its case over the median of the plain conv measured in the same rounds. Goals:

    onnxruntime ai.edgecnn::DeformConv2d, native lowering / onnxruntime Conv   <= 2.5
    onnxruntime ai.edgecnn::DeformConv2d, decomposed      / onnxruntime Conv   <= 6
    eager edgecnn.ops.deform_conv2d                       / eager F.conv2d     <= 7

Both runtimes use the same thread count (``--threads``; 1 by default because the machine is
shared and 1 thread gives steadier ratios). The onnxruntime models are one-node graphs with the
weight as initializer; the deformable one is the exported custom op with its function body.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from edgecnn.export.parity import REL_L2_TOLERANCE, compare
from edgecnn.ops import deform_conv2d
from edgecnn.runtime import deform

BATCH, CHANNELS, SIZE, KERNEL = 1, 64, 56, 3
GOALS = {"ort_native": 2.5, "ort_decomposed": 6.0, "eager": 7.0}


def onnx_model(node: onnx.NodeProto, inputs: list[str], weight: np.ndarray,
               opset: int) -> onnx.ModelProto:
    values = {"X": [BATCH, CHANNELS, SIZE, SIZE], "offset": [BATCH, 2 * KERNEL * KERNEL, SIZE, SIZE]}
    graph = helper.make_graph(
        [node], "bench", [helper.make_tensor_value_info(n, TensorProto.FLOAT, values[n]) for n in inputs],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [BATCH, CHANNELS, SIZE, SIZE])],
        [numpy_helper.from_array(weight, "W")])
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(deform.DOMAIN, deform.VERSION)]
    return helper.make_model(graph, opset_imports=imports)


def sessions(weight: np.ndarray, threads: int) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    pads = dict(pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1])
    conv = onnx_model(helper.make_node("Conv", ["X", "W"], ["Y"], **pads), ["X"], weight, 19)
    models = {"ort_conv": conv}
    for lowering, opset in (("native", 19), ("decomposed", 18)):
        node = helper.make_node(deform.OP_TYPE, ["X", "W", "offset"], ["Y"], domain=deform.DOMAIN,
                                group=1, offset_group=1, **pads)
        models[f"ort_{lowering}"] = deform.set_deform_lowering(
            onnx_model(node, ["X", "offset"], weight, opset), lowering)
    return {name: ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
            for name, model in models.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, CHANNELS, SIZE, SIZE)).astype(np.float32)
    weight = (rng.standard_normal((CHANNELS, CHANNELS, KERNEL, KERNEL)) * 0.05).astype(np.float32)
    offset = rng.standard_normal((BATCH, 2 * KERNEL * KERNEL, SIZE, SIZE)).astype(np.float32)
    ort_sessions = sessions(weight, args.threads)
    tx, tw, toff = (torch.from_numpy(a) for a in (x, weight, offset))
    feeds = {"X": x, "offset": offset}
    cases = {
        "ort_conv": lambda: ort_sessions["ort_conv"].run(None, {"X": x}),
        "ort_native": lambda: ort_sessions["ort_native"].run(None, feeds),
        "ort_decomposed": lambda: ort_sessions["ort_decomposed"].run(None, feeds),
        "eager_conv": lambda: F.conv2d(tx, tw, padding=1),
        "eager": lambda: deform_conv2d(tx, toff, tw, padding=1),
    }
    with torch.no_grad():
        reference = cases["eager"]().numpy()
        for name in ("ort_native", "ort_decomposed"):
            rel_l2 = compare(reference, cases[name]()[0]).rel_l2
            assert rel_l2 <= REL_L2_TOLERANCE["fp32"], (name, rel_l2)
        times = {name: [] for name in cases}
        for _ in range(3):  # warm-up
            for run in cases.values():
                run()
        for _ in range(args.repeats):
            for name, run in cases.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    print(f"batch {BATCH}, {CHANNELS}->{CHANNELS} channels, {SIZE}x{SIZE}, {KERNEL}x{KERNEL}, "
          f"{args.threads} thread(s), median of {args.repeats} interleaved rounds "
          f"(onnxruntime {ort.__version__}, torch {torch.__version__.split('+')[0]})")
    for name, base, label in (("ort_native", "ort_conv", "onnxruntime DeformConv2d native"),
                              ("ort_decomposed", "ort_conv", "onnxruntime DeformConv2d decomposed"),
                              ("eager", "eager_conv", "eager deform_conv2d")):
        ratio = median[name] / median[base]
        verdict = "ok" if ratio <= GOALS[name] else "ABOVE GOAL"
        print(f"{label:38s} {median[name]:7.2f} ms / {base} {median[base]:6.2f} ms = "
              f"{ratio:5.2f}x  (goal <= {GOALS[name]:g}: {verdict})")


if __name__ == "__main__":
    main()
