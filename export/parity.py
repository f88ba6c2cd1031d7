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

# Default rel_l2 bounds per precision. int8 is judged by top-1 agreement, SQNR and accuracy on
# real data (see INT8_SQNR_FLOOR_DB), not by rel_l2 alone.
REL_L2_TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3}


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
