"""The parity vocabulary: how an exported model's output is compared with eager PyTorch.

    rel_l2          ||onnx - eager|| / ||eager||
    max_abs         max |onnx - eager|
    cosine          <onnx, eager> / (||onnx|| ||eager||)
    top1_agreement  fraction of rows (pixels for segmentation) with the same argmax over axis 1
    sqnr_db         20 log10(||eager|| / ||onnx - eager||)

Export, ``edgecnn check`` and the tests all use this one module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Default rel_l2 bounds per precision. int8 is judged by an SQNR floor on random inputs plus
# top-1 agreement and accuracy on real data (tests/test_quantize*.py), not by rel_l2 alone.
REL_L2_TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3}
# int8 floor. With per-channel int8 weights and per-tensor uint8 activations calibrated on
# inputs drawn like the checked ones, the zoo measures 20.5-48 dB (most 25-31 dB: about 8-bit
# noise, ~35 dB per layer, summed over tens of layers). One conv whose weight scale is off by
# 2x (a 7-bit/8-bit range mix-up) drops ResNet-18 from 30.6 dB to 6-10 dB. 20 dB passes every
# correct zoo model and fails such a layer (tests/test_parity_matrix.py shows both).
INT8_SQNR_FLOOR_DB = 20.0
# The largest finite float16. An fp16 model whose activations pass it gives inf/NaN wherever the
# arithmetic is really fp16 (CUDA); onnxruntime's CPU provider runs most fp16 graphs' ops in
# fp32, so there it goes unnoticed (docs/gpu.md).
FP16_MAX = 65504.0


def sqnr_to_rel_l2(sqnr_db: float) -> float:
    """SQNR = -20 log10(rel_l2), so an SQNR floor is a rel_l2 bound."""
    return 10.0 ** (-sqnr_db / 20.0)


def default_tolerance(precision: str, spec=None) -> float:
    """The rel_l2 bound for ``precision``; a model spec may loosen it, with a written reason."""
    if spec is not None and precision in spec.tolerances:
        return spec.tolerances[precision]
    if precision == "int8":
        return sqnr_to_rel_l2(INT8_SQNR_FLOOR_DB)
    return REL_L2_TOLERANCE[precision]


@dataclass(frozen=True)
class ParityMetrics:
    rel_l2: float
    max_abs: float
    cosine: float
    top1_agreement: float | None
    sqnr_db: float

    def as_dict(self) -> dict:
        # JSON has no inf: an exact match reports sqnr_db as None.
        return {key: (None if isinstance(value, float) and math.isinf(value) else value)
                for key, value in asdict(self).items()}


def compare(reference: np.ndarray, candidate: np.ndarray) -> ParityMetrics:
    """Metrics of ``candidate`` (ONNX output) against ``reference`` (eager output)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"output shapes differ: eager {reference.shape}, onnx {candidate.shape}")
    error_norm = float(np.linalg.norm(candidate - reference))
    reference_norm = float(np.linalg.norm(reference))
    candidate_norm = float(np.linalg.norm(candidate))
    if reference_norm > 0:
        rel_l2 = error_norm / reference_norm
    else:
        rel_l2 = 0.0 if error_norm == 0 else math.inf
    if error_norm == 0:
        sqnr_db = math.inf
    elif reference_norm == 0:
        sqnr_db = -math.inf
    else:
        sqnr_db = 20.0 * math.log10(reference_norm / error_norm)
    denominator = reference_norm * candidate_norm
    if denominator > 0:
        cosine = float(np.dot(reference.ravel(), candidate.ravel()) / denominator)
    else:
        cosine = 1.0 if error_norm == 0 else 0.0
    top1 = None
    if reference.ndim >= 2 and reference.shape[1] > 1:
        top1 = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    max_abs = float(np.max(np.abs(candidate - reference))) if reference.size else 0.0
    return ParityMetrics(rel_l2=rel_l2, max_abs=max_abs, cosine=cosine,
                         top1_agreement=top1, sqnr_db=sqnr_db)


def activation_peak(module, inputs) -> tuple[float, str]:
    """(largest |value| any submodule of ``module`` outputs on ``inputs``, that submodule's name):
    what an fp16 model must hold without overflowing (``FP16_MAX``)."""
    import torch

    peak, where = 0.0, ""

    def record(name):
        def hook(_module, _inputs, output):
            nonlocal peak, where
            if isinstance(output, torch.Tensor) and output.is_floating_point() and output.numel():
                value = float(output.detach().abs().max())
                if value > peak:
                    peak, where = value, name
        return hook

    handles = [sub.register_forward_hook(record(name)) for name, sub in module.named_modules()]
    try:
        with torch.no_grad():
            module(torch.as_tensor(inputs))
    finally:
        for handle in handles:
            handle.remove()
    return peak, where or "output"


def assert_parity(module, onnx_path, inputs, *, precision: str = "fp32",
                  tolerance: float | None = None, providers: list | None = None) -> list[ParityMetrics]:
    """Assert that an .onnx file computes what the eager ``module`` computes; for users' CI.

    ``inputs``: one array/tensor, or a tuple of them for a multi-input model (in the ONNX
    graph's input order). Every output is compared; an AssertionError names the first output
    over the rel_l2 bound (default: the precision's, see ``default_tolerance``) with its
    figures. Returns the metrics of every output.

        from edgecnn.export.parity import assert_parity
        assert_parity(MyNet().eval(), "mynet.onnx", torch.randn(4, 3, 64, 64))
    """
    import torch  # numpy-only at import time; torch is needed only to run the module

    from edgecnn.runtime import load_session

    bound = default_tolerance(precision) if tolerance is None else tolerance
    arrays = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    tensors = [torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a) for a in arrays]
    with torch.no_grad():
        eager = module.eval()(*tensors)
    eager = eager if isinstance(eager, (tuple, list)) else (eager,)
    session = load_session(onnx_path, providers=providers)
    feeds = {spec.name: tensor.numpy() for spec, tensor in zip(session.get_inputs(), tensors)}
    onnx_outputs = session.run(None, feeds)
    if len(onnx_outputs) != len(eager):
        raise AssertionError(f"{onnx_path}: {len(onnx_outputs)} outputs, eager gives {len(eager)}")
    results = []
    for spec, reference, candidate in zip(session.get_outputs(), eager, onnx_outputs):
        metrics = compare(reference.detach().numpy(), candidate)
        if not metrics.rel_l2 <= bound:
            raise AssertionError(
                f"{onnx_path} output {spec.name!r} differs from eager: rel_l2 {metrics.rel_l2:.3e}"
                f" > {bound:g} (max_abs {metrics.max_abs:.3e}, SQNR {metrics.sqnr_db:.1f} dB)")
        results.append(metrics)
    return results
