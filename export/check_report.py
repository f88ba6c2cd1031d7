"""What a parity check found (``CheckReport``: ``check_onnx`` and ``check_parity`` return it),
and the report file ``edgecnn check --report`` writes of it (.md or .json)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgecnn.export import bisect as bisecting
from edgecnn.export.int8_report import Int8Report, markdown_tables
from edgecnn.export.parity import OutputReport, Verdict
from edgecnn.runtime import files


@dataclass
class CheckReport:
    model: str
    onnx_path: str
    precision: str
    providers: list[str]  # what the session ran on (the same key as bench's JSON)
    batch: int
    samples: int  # input batches compared
    images: int  # of which rows came from image files
    rows: int  # input rows compared in all
    verdict: Verdict
    bisect: bisecting.BisectResult | None = None
    notes: list[str] = field(default_factory=list)
    per_layer: Int8Report | None = None  # where the int8 error comes from (check --per-layer)

    @property
    def outputs(self) -> list[OutputReport]:
        return self.verdict.outputs

    @property
    def tolerance(self) -> float:
        return self.verdict.tolerance

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    def as_dict(self) -> dict:
        return {"model": self.model, "onnx": self.onnx_path, "precision": self.precision,
                "providers": self.providers, "batch": self.batch, "samples": self.samples,
                "images": self.images, "rows": self.rows, "tolerance_rel_l2": self.tolerance,
                "min_top1": self.verdict.min_top1,
                "passed": self.passed, "outputs": [o.as_dict() for o in self.outputs],
                "bisect": self.bisect.as_dict() if self.bisect else None, "notes": self.notes,
                "per_layer": self.per_layer.as_dict() if self.per_layer else None}

    def to_markdown(self) -> str:
        lines = [f"# Parity check: {self.model} ({self.precision})", "",
                 f"- ONNX: `{self.onnx_path}`", f"- providers: {', '.join(self.providers)}",
                 f"- inputs: {self.samples} batches of {self.batch}"
                 + (f" ({self.images} rows from images)" if self.images else ""),
                 f"- criterion: {self.verdict.criterion}",
                 f"- result: **{'PASS' if self.passed else 'FAIL'}**", "",
                 "| output | rel_l2 | max_abs | cosine | SQNR dB | top-1 agreement | pass |",
                 "|---|---|---|---|---|---|---|"]
        for output in self.outputs:
            m = output.metrics
            top1 = "–" if m.top1_agreement is None else f"{m.top1_agreement:.4f}"
            lines.append(f"| {output.name} | {m.rel_l2:.3e} | {m.max_abs:.3e} | {m.cosine:.8f} "
                         f"| {m.sqnr_db:.1f} | {top1} | {'yes' if output.passed else 'no'} |")
        if self.bisect is not None:
            first = self.bisect.first_divergent
            lines += ["", f"Bisect over {len(self.bisect.layers)} module outputs: " + (
                f"first divergence at `{first.module}` (call {first.call}, tensor "
                f"`{first.tensor}`), rel_l2 {first.metrics.rel_l2:.3e}" if first
                else "no module output over the tolerance")]
        lines += [f"- note: {note}" for note in self.notes]
        if self.per_layer is not None:
            lines += ["", "## int8 per layer", "", *markdown_tables(self.per_layer)]
        return "\n".join(lines) + "\n"


def check_report_path(path: str | os.PathLike) -> Path:
    """BadInput unless ``path`` is a writable FILE.md or FILE.json (checked before any work)."""
    return files.check_report_path(path, (".md", ".json"))


def write_report(report: CheckReport, path: str | os.PathLike) -> Path:
    path = check_report_path(path)
    return files.write_text(path, json.dumps(report.as_dict(), indent=2) + "\n"
                            if path.suffix == ".json" else report.to_markdown())
