"""The parity vocabulary: how an exported model's output is compared with eager PyTorch.

    rel_l2          ||onnx - eager|| / ||eager||
    max_abs         max |onnx - eager|
    cosine          <onnx, eager> / (||onnx|| ||eager||)
    top1_agreement  fraction of rows (pixels for segmentation) with the same argmax over axis 1
    sqnr_db         20 log10(||eager|| / ||onnx - eager||)

``judge`` turns reference and candidate outputs, a precision and the model's bounds into one
verdict; export, ``edgecnn check``, ``quantize`` and the tests all use it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from edgecnn.errors import BadInput
from edgecnn.runtime.metadata import TOLERANCE_KEYS

# The default rel_l2 bound per precision. int8 is judged by an SQNR floor, expressed as the rel_l2
# bound it implies (SQNR = -20 log10(rel_l2)): 20 dB passes every correct zoo model and fails a
# single conv with a wrong weight scale (docs/parity.md has the measured figures). A model's own
# bounds reach its file's metadata at export (docs/design.md, "Parity verdicts").
REL_L2_TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3}
INT8_SQNR_FLOOR_DB = 20.0
# bf16 is a compute precision, not a file's: an fp32 file run with OpenVINO's bf16 hint. It keeps
# 8 significant bits to fp16's 11, a unit roundoff 8x coarser, so its bound is 8x the model's fp16
# bound (docs/openvino.md has the measured figures).
BF16_PER_FP16 = 8
PRECISIONS = TOLERANCE_KEYS  # what a check may judge in; a model's bounds are keyed by them
# The largest finite float16. An fp16 model whose activations pass it gives inf/NaN wherever the
# arithmetic is really fp16 (CUDA); onnxruntime's CPU provider computes most fp16 graphs' ops in
# fp32, so there it goes unnoticed (docs/gpu.md).
FP16_MAX = 65504.0


def sqnr_to_rel_l2(sqnr_db: float) -> float:
    """SQNR = -20 log10(rel_l2), so an SQNR floor is a rel_l2 bound."""
    return 10.0 ** (-sqnr_db / 20.0)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise BadInput(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def model_bounds(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The rel_l2 bound of every precision: the defaults, with a model's ``overrides``."""
    bounds = {**REL_L2_TOLERANCE, "int8": sqnr_to_rel_l2(INT8_SQNR_FLOOR_DB), **(overrides or {})}
    bounds.setdefault("bf16", BF16_PER_FP16 * bounds["fp16"])
    return bounds


def model_bound(precision: str, spec=None) -> float:
    """The rel_l2 bound for ``precision``; a model spec may loosen it, with a written reason."""
    return model_bounds(spec.tolerances if spec is not None else None)[check_precision(precision)]


@dataclass(frozen=True)
class ParityMetrics:
    rel_l2: float
    max_abs: float
    cosine: float
    top1_agreement: float | None
    sqnr_db: float
    worst_index: tuple[int, ...] | None = None  # where |candidate - reference| is largest

    def as_dict(self) -> dict:
        # JSON has no inf: an exact match reports sqnr_db as None.
        values = asdict(self)
        values["worst_index"] = None if self.worst_index is None else list(self.worst_index)
        return {key: (None if isinstance(value, float) and math.isinf(value) else value)
                for key, value in values.items()}


def sqnr_from_norms(signal: float, error: float) -> float:
    """20 log10(signal / error) in dB: inf for an exact match, -inf for a zero signal."""
    if error == 0:
        return math.inf
    return 20.0 * math.log10(signal / error) if signal > 0 else -math.inf


def sqnr_db(reference, candidate) -> float:
    """The SQNR of ``candidate`` against ``reference`` (compare's, on its own)."""
    reference = np.asarray(reference, dtype=np.float64)
    error = float(np.linalg.norm(reference - np.asarray(candidate, dtype=np.float64)))
    return sqnr_from_norms(float(np.linalg.norm(reference)), error)


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
    sqnr = sqnr_from_norms(reference_norm, error_norm)
    denominator = reference_norm * candidate_norm
    if denominator > 0:
        cosine = float(np.dot(reference.ravel(), candidate.ravel()) / denominator)
    else:
        cosine = 1.0 if error_norm == 0 else 0.0
    top1 = None
    if reference.ndim >= 2 and reference.shape[1] > 1:
        top1 = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    max_abs, worst = 0.0, None
    if reference.size:
        error = np.abs(candidate - reference)
        error[np.isnan(error)] = np.inf  # a NaN is the worst element there is
        flat = int(np.argmax(error))
        max_abs = float(error.flat[flat])
        worst = tuple(int(i) for i in np.unravel_index(flat, error.shape))
    return ParityMetrics(rel_l2=rel_l2, max_abs=max_abs, cosine=cosine,
                         top1_agreement=top1, sqnr_db=sqnr, worst_index=worst)


def activation_peak(module, inputs) -> tuple[float, str]:
    """(largest |value| any submodule of ``module`` outputs on ``inputs``, that submodule's name):
    what an fp16 model must hold without overflowing (``FP16_MAX``)."""
    import torch

    peak, where = 0.0, ""

    def record(name, output):
        nonlocal peak, where
        if isinstance(output, torch.Tensor) and output.is_floating_point() and output.numel():
            value = float(output.detach().abs().max())
            if value > peak:
                peak, where = value, name

    module_outputs(module, torch.as_tensor(inputs), record)
    return peak, where or "output"


def module_outputs(module, inputs, record: Callable[[str, object], None],
                   names: set[str] | None = None) -> None:
    """Runs ``module`` on ``inputs`` without gradients, calling ``record(name, output)`` for the
    output of each call of each submodule (of those in ``names``; default: all), in call order."""
    import torch

    handles = [sub.register_forward_hook(lambda _module, _inputs, output, name=name:
                                         record(name, output))
               for name, sub in module.named_modules() if names is None or name in names]
    try:
        with torch.no_grad():
            module(inputs)
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class OutputReport:
    name: str
    metrics: ParityMetrics
    passed: bool

    def as_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, **self.metrics.as_dict()}


@dataclass
class Verdict:
    """Every output's metrics against one rel_l2 bound (and an optional top-1 floor)."""

    precision: str
    tolerance: float
    outputs: list[OutputReport]
    min_top1: float | None = None

    @property
    def passed(self) -> bool:
        return all(output.passed for output in self.outputs)

    @property
    def criterion(self) -> str:
        """'rel_l2 <= 0.005', and ', top-1 agreement >= 0.99' with a top-1 floor."""
        top1 = f", top-1 agreement >= {self.min_top1:g}" if self.min_top1 is not None else ""
        return f"rel_l2 <= {self.tolerance:g}{top1}"

    def failures(self) -> str:
        """The failing outputs in one line, e.g. "output 'logits': rel_l2 0.0078 > 0.005 ..."."""
        return "; ".join(f"output {output.name!r}: {_why(output.metrics, self)}"
                         for output in self.outputs if not output.passed)


def _why(metrics: ParityMetrics, verdict: Verdict) -> str:
    if not metrics.rel_l2 <= verdict.tolerance:
        return (f"rel_l2 {metrics.rel_l2:.3g} > {verdict.tolerance:g} (max_abs "
                f"{metrics.max_abs:.3g}, SQNR {metrics.sqnr_db:.1f} dB)")
    return f"top-1 agreement {metrics.top1_agreement:.4f} < {verdict.min_top1:g}"


def check_criteria(tolerance: float | None, min_top1: float | None) -> None:
    """BadInput unless ``tolerance`` (a rel_l2 bound) is a finite number > 0 and ``min_top1`` a
    fraction in [0, 1] (each may be None: the defaults apply)."""
    if tolerance is not None and not (isinstance(tolerance, numbers.Real)
                                      and math.isfinite(tolerance) and tolerance > 0):
        raise BadInput(f"tolerance must be a finite number > 0, got {tolerance!r}")
    if min_top1 is not None and not (isinstance(min_top1, numbers.Real) and 0 <= min_top1 <= 1):
        raise BadInput(f"min_top1 is a fraction of rows in [0, 1], got {min_top1}")


def judge(references: Sequence[np.ndarray], candidates: Sequence[np.ndarray], precision: str, *,
          bounds: Mapping[str, float] | None = None, tolerance: float | None = None,
          names: Sequence[str] | None = None, min_top1: float | None = None) -> Verdict:
    """The one parity verdict: each output of ``candidates`` against ``references``.

    The bound is ``tolerance`` when given, else ``bounds[precision]`` (a model's bounds, e.g.
    its file's metadata ``tolerances``), else the precision's default. ``min_top1`` also fails
    an output whose top-1 agreement is below it.
    """
    check_precision(precision)
    check_criteria(tolerance, min_top1)
    if len(references) != len(candidates):
        raise BadInput(f"the ONNX model has {len(candidates)} outputs, the reference "
                       f"{len(references)}")
    bound = tolerance if tolerance is not None else model_bounds(bounds)[precision]
    names = list(names) if names is not None else [f"output {k}" for k in range(len(references))]
    outputs = []
    for name, reference, candidate in zip(names, references, candidates):
        if np.shape(reference) != np.shape(candidate):
            raise BadInput(f"output {name!r} has shape {list(np.shape(candidate))}, the "
                           f"reference {list(np.shape(reference))}")
        metrics = compare(reference, candidate)
        passed = bool(metrics.rel_l2 <= bound)
        if min_top1 is not None and metrics.top1_agreement is not None:
            passed = passed and metrics.top1_agreement >= min_top1
        outputs.append(OutputReport(name, metrics, passed))
    return Verdict(precision, bound, outputs, min_top1)


def assert_parity(module, onnx_path, inputs, *, precision: str = "fp32",
                  tolerance: float | None = None, providers=None) -> list[ParityMetrics]:
    """Assert that an .onnx file computes what the eager ``module`` computes; for users' CI.

    ``inputs``: one array/tensor, or a tuple of them for a multi-input model (in the ONNX
    graph's input order). Every output is compared; an AssertionError names the outputs over
    the bound (default: the file's own bound for ``precision``, see ``judge``) with their
    figures. Returns the metrics of every output.

        from edgecnn.export.parity import assert_parity
        assert_parity(MyNet().eval(), "mynet.onnx", torch.randn(4, 3, 64, 64))
    """
    from edgecnn.export.check import check_onnx  # torch is needed only to run the module

    report = check_onnx(module, onnx_path, [inputs], precision=precision, tolerance=tolerance,
                        providers=providers or "cpu")
    if not report.passed:
        raise AssertionError(f"{onnx_path} differs from eager: {report.verdict.failures()}")
    return [output.metrics for output in report.outputs]
