"""``--accuracy-budget``: the fewest layers to keep in float so int8 stays within a budget of
top-1 percentage points on a labelled validation set. The search (quantize all; rank the weighted
layers by how much their float copy recovers; keep the most sensitive in float until the budget
holds; prune) is docs/quantization.md's "--keep-float and --accuracy-budget". A trial re-runs
only onnxruntime's graph rewrite: ``int8_static`` caches the activation ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx

from edgecnn.errors import CheckFailed
from edgecnn.export.parity import judge
from edgecnn.export.quantize_recipes import ProgressCallback

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Trial:
    kept: tuple[str, ...]  # layers in float
    correct: int  # validation samples classified right
    sqnr_db: float  # logits against fp32
    model: onnx.ModelProto = field(repr=False)


@dataclass
class BudgetSearch:
    """Find the layers to keep in float; ``quantize(excluded_nodes)`` builds a candidate."""

    quantize: Callable[[list[str]], onnx.ModelProto]
    evaluate: Callable[[onnx.ModelProto], np.ndarray]  # model -> logits on the validation set
    labels: np.ndarray
    reference: np.ndarray  # the fp32 logits
    budget_points: float
    base: Sequence[str] = ()  # layers the user already keeps in float
    progress: ProgressCallback | None = None
    trials: int = 0

    @property
    def fp32_correct(self) -> int:
        return int(np.sum(self.reference.argmax(axis=1) == self.labels))

    def drop_points(self, trial: Trial) -> float:
        return 100.0 * (self.fp32_correct - trial.correct) / len(self.labels)

    def within_budget(self, trial: Trial) -> bool:
        return self.drop_points(trial) <= self.budget_points + 1e-9

    def trial(self, kept: Sequence[str]) -> Trial:
        self.trials += 1
        model = self.quantize([*self.base, *kept])
        logits = self.evaluate(model)
        correct = int(np.sum(logits.argmax(axis=1) == self.labels))
        (fit,) = judge([self.reference], [logits], "int8").outputs
        return Trial(tuple(kept), correct, fit.metrics.sqnr_db, model)

    def _report(self, task: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(task, done, total)

    def rank(self, candidates: Sequence[str]) -> list[str]:
        """``candidates`` ordered most sensitive first: by the accuracy with only that layer in
        float, ties (small validation sets) broken by the logits' SQNR against fp32."""
        scores = {}
        for index, layer in enumerate(candidates):
            self._report("layer sensitivity", index, len(candidates))
            trial = self.trial([layer])
            scores[layer] = (trial.correct, trial.sqnr_db)
        self._report("layer sensitivity", len(candidates), len(candidates))
        return sorted(candidates, key=lambda layer: scores[layer], reverse=True)

    def run(self, candidates: Sequence[str]) -> Trial:
        """The trial with the fewest float layers found within the budget; CheckFailed when
        even every candidate in float misses it."""
        best = self.trial([])
        if self.within_budget(best):
            return best
        ranked = self.rank(candidates)
        kept: list[str] = []
        for layer in ranked:
            kept.append(layer)
            best = self.trial(kept)
            if self.within_budget(best):
                break
        else:
            raise CheckFailed(
                f"int8 misses the accuracy budget even with all {len(ranked)} weighted layers "
                f"in float (drop {self.drop_points(best):.2f} points > {self.budget_points:g}); "
                "nothing written")
        for layer in reversed(kept[:-1]):  # least sensitive first; the last one was needed
            self._report("pruning", kept.index(layer), len(kept))
            smaller = [name for name in best.kept if name != layer]
            trial = self.trial(smaller)
            if self.within_budget(trial):
                best = trial
        return best


def candidate_layers(model: onnx.ModelProto, excluded: Sequence[str]) -> list[str]:
    """The weighted layers that ``--accuracy-budget`` may keep in float, in graph order."""
    return [node.name for node in model.graph.node
            if node.op_type in WEIGHTED_OPS and node.domain in ("", "ai.onnx")
            and node.name not in excluded]
