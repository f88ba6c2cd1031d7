"""Deformable conv vs plain conv, same shape: onnxruntime (both lowerings) and eager PyTorch.

    .venv/bin/python benchmarks/deform_conv.py [--repeats 30] [--threads 1] [--batch 1]
    python benchmarks/deform_conv.py --provider cuda --batch 32     # on a GPU (docs/gpu.md)

One interleaved run (batch 1, 64 -> 64 channels, 56x56, 3x3, stride 1, padding 1, offsets of
about a pixel): every round times each case once, in turn, and each ratio is the median of
its case over the median of the plain conv measured in the same rounds. Goals (CPU):

    onnxruntime ai.edgecnn::DeformConv2d, native lowering / onnxruntime Conv   <= 2.5
    onnxruntime ai.edgecnn::DeformConv2d, decomposed      / onnxruntime Conv   <= 6
    eager edgecnn.ops.deform_conv2d                       / eager F.conv2d     <= 7

Both runtimes use the same thread count (``--threads``; 1 by default because the machine is
shared and 1 thread gives steadier ratios). The onnxruntime models are one-node graphs with the
weight as initializer; the deformable one is the exported custom op with its function body.

``--provider cuda``: the onnxruntime cases run on the CUDA provider with inputs and output bound
on the GPU (IOBinding, so no host copies are timed) and the eager cases on torch's CUDA device;
TF32 is off on both sides, so every output is checked against the CPU eager op at the fp32
bound. A lowering the installed onnxruntime cannot run (native before 1.25) is reported and
skipped.
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

from edgecnn.runtime.onnx_file import set_minimal_ir_version
from edgecnn.export.parity import REL_L2_TOLERANCE, compare
from edgecnn.ops import deform_conv2d
from edgecnn.runtime import deform
from edgecnn.runtime.providers import resolve_providers

BATCH, CHANNELS, SIZE, KERNEL = 1, 64, 56, 3
GOALS = {"ort_native": 2.5, "ort_decomposed": 6.0, "eager": 7.0}


def onnx_model(node: onnx.NodeProto, inputs: list[str], weight: np.ndarray,
               opset: int) -> onnx.ModelProto:
    values = {"X": ["N", CHANNELS, SIZE, SIZE], "offset": ["N", 2 * KERNEL * KERNEL, SIZE, SIZE]}
    graph = helper.make_graph(
        [node], "bench", [helper.make_tensor_value_info(n, TensorProto.FLOAT, values[n]) for n in inputs],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", CHANNELS, SIZE, SIZE])],
        [numpy_helper.from_array(weight, "W")])
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(deform.DOMAIN, deform.VERSION)]
    model = helper.make_model(graph, opset_imports=imports)
    set_minimal_ir_version(model)  # onnx's newest IR version is newer than older onnxruntimes read
    return model


def sessions(weight: np.ndarray, threads: int, provider: str) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers = resolve_providers(provider, fallback=False, tf32=False)
    pads = dict(pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1])
    conv = onnx_model(helper.make_node("Conv", ["X", "W"], ["Y"], **pads), ["X"], weight, 19)
    models = {"ort_conv": conv}
    for lowering, opset in (("native", 19), ("decomposed", 18)):
        node = helper.make_node(deform.OP_TYPE, ["X", "W", "offset"], ["Y"], domain=deform.DOMAIN,
                                group=1, offset_group=1, **pads)
        models[f"ort_{lowering}"] = deform.set_deform_lowering(
            onnx_model(node, ["X", "offset"], weight, opset), lowering)
    created = {}
    for name, model in models.items():
        try:
            created[name] = ort.InferenceSession(model.SerializeToString(), options,
                                                 providers=providers)
        except Exception as error:  # e.g. NOT_IMPLEMENTED: no DeformConv kernel before 1.25
            print(f"{name}: onnxruntime {ort.__version__} cannot run it: "
                  f"{str(error).strip().splitlines()[0][:160]}")
    return created


def ort_runner(session: ort.InferenceSession, feeds: dict, device: str):
    """A call that runs ``session`` on ``feeds`` and returns Y as a numpy array; on a GPU the
    inputs and Y stay bound on the device and only the returned copy crosses (untimed)."""
    if device == "cpu":
        return lambda: session.run(None, feeds)[0], lambda y: y
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    binding.bind_output("Y", "cuda")
    return lambda: session.run_with_iobinding(binding), lambda _: binding.copy_outputs_to_cpu()[0]


def eager_runner(function, *tensors):
    device = tensors[0].device
    if device.type == "cpu":
        return lambda: function(*tensors), lambda y: y.numpy()

    def run():
        y = function(*tensors)
        torch.cuda.synchronize(device)
        return y
    return run, lambda y: y.cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.provider
    if device == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, CHANNELS, SIZE, SIZE)).astype(np.float32)
    weight = (rng.standard_normal((CHANNELS, CHANNELS, KERNEL, KERNEL)) * 0.05).astype(np.float32)
    offset = rng.standard_normal((args.batch, 2 * KERNEL * KERNEL, SIZE, SIZE)).astype(np.float32)
    ort_sessions = sessions(weight, args.threads, args.provider)
    feeds = {"X": x, "offset": offset}
    cases = {name: ort_runner(session, {"X": x} if name == "ort_conv" else feeds, device)
             for name, session in ort_sessions.items()}
    tx, tw, toff = (torch.from_numpy(a).to(device) for a in (x, weight, offset))
    cases["eager_conv"] = eager_runner(lambda a, w: F.conv2d(a, w, padding=1), tx, tw)
    cases["eager"] = eager_runner(lambda a, o, w: deform_conv2d(a, o, w, padding=1), tx, toff, tw)
    with torch.no_grad():
        reference = deform_conv2d(*(torch.from_numpy(a) for a in (x, offset, weight)),
                                  padding=1).numpy()  # the CPU eager op
        for name in ("ort_native", "ort_decomposed", "eager"):
            if name in cases:
                run, to_numpy = cases[name]
                rel_l2 = compare(reference, to_numpy(run())).rel_l2
                assert rel_l2 <= REL_L2_TOLERANCE["fp32"], (name, rel_l2)
        times = {name: [] for name in cases}
        for _ in range(3):  # warm-up
            for run, _ in cases.values():
                run()
        for _ in range(args.repeats):
            for name, (run, _) in cases.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    where = (f"{args.threads} thread(s)" if device == "cpu" else
             f"CUDA ({torch.cuda.get_device_name()}, TF32 off, device-bound inputs)")
    print(f"batch {args.batch}, {CHANNELS}->{CHANNELS} channels, {SIZE}x{SIZE}, {KERNEL}x{KERNEL}, "
          f"{where}, median of {args.repeats} interleaved rounds "
          f"(onnxruntime {ort.__version__}, torch {torch.__version__.split('+')[0]})")
    for name, base, label in (("ort_native", "ort_conv", "onnxruntime DeformConv2d native"),
                              ("ort_decomposed", "ort_conv", "onnxruntime DeformConv2d decomposed"),
                              ("eager", "eager_conv", "eager deform_conv2d")):
        if name not in median:
            continue
        ratio = median[name] / median[base]
        verdict = "ok" if ratio <= GOALS[name] else "ABOVE GOAL"
        goal = (f"goal <= {GOALS[name]:g}: {verdict}" if device == "cpu"
                else f"no goal on a GPU; the CPU goal is <= {GOALS[name]:g}")
        print(f"{label:38s} {median[name]:7.3f} ms / {base} {median[base]:6.3f} ms = "
              f"{ratio:5.2f}x  ({goal})")


if __name__ == "__main__":
    main()
