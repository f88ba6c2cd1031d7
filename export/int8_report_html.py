"""The per-layer int8 report as one self-contained HTML file: an inline SVG plot of SQNR along
the depth of the graph and every row of the tables (no script, no external file)."""

from __future__ import annotations

import math
from html import escape

from edgecnn.export.int8_report import ActivationRow, Int8Report, WeightRow, format_db

WIDTH, HEIGHT, MARGIN = 900, 320, 48
SERIES = (("own SQNR", "sqnr_db", "#1f77b4"),
          ("worst channel", "worst_channel_sqnr_db", "#d62728"),
          ("accumulated (fp32 vs int8)", "accumulated_sqnr_db", "#2ca02c"))
STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
         "tr.bad td{background:#fde0dc}code{font-size:12px}")


def _finite(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def sqnr_plot(report: Int8Report) -> str:
    """An SVG line plot: x the activations in graph order, y their SQNRs in dB (inf drawn at the
    top), a dashed line at the floor."""
    rows = report.by_depth
    values = _finite([getattr(row, key) for row in rows for _, key, _ in SERIES])
    top = max([report.floor_db + 10, *values]) + 5
    bottom = min([0.0, *values]) - 5
    inner_w, inner_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN

    def x(index: int) -> float:
        return MARGIN + inner_w * (index / max(len(rows) - 1, 1))

    def y(value: float) -> float:
        value = top if math.isinf(value) and value > 0 else max(value, bottom)
        return MARGIN + inner_h * (top - value) / (top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="sqnr-plot" width="{WIDTH}" '
             f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">',
             f'<rect x="{MARGIN}" y="{MARGIN}" width="{inner_w}" height="{inner_h}" '
             'fill="none" stroke="#999"/>']
    for tick in range(int(math.ceil(bottom / 10)) * 10, int(top) + 1, 10):
        parts.append(f'<text x="{MARGIN - 6}" y="{y(tick) + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{tick}</text>')
    parts.append(f'<line x1="{MARGIN}" x2="{WIDTH - MARGIN}" y1="{y(report.floor_db):.1f}" '
                 f'y2="{y(report.floor_db):.1f}" stroke="#555" stroke-dasharray="4 3"/>')
    for number, (label, key, color) in enumerate(SERIES):
        points = [(x(i), y(getattr(row, key))) for i, row in enumerate(rows)
                  if getattr(row, key) is not None and not math.isnan(getattr(row, key))]
        if points:
            coordinates = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                         f'points="{coordinates}"/>')
        parts.append(f'<text x="{MARGIN + 10 + 230 * number}" y="{MARGIN - 12}" font-size="12" '
                     f'fill="{color}">{escape(label)}</text>')
    for i, row in enumerate(rows):
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(row.score):.1f}" r="2.5" fill="#d62728">'
                     f'<title>{escape(row.module)}: {escape(row.tensor)} '
                     f'{format_db(row.score)} dB</title></circle>')
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 12}" font-size="12" text-anchor="middle">'
                 f'quantized activations in graph order ({len(rows)}); dB</text></svg>')
    return "\n".join(parts)


def _table(rows: list[ActivationRow] | list[WeightRow], columns, floor: float) -> str:
    """The rows as an HTML table, those under the SQNR floor shaded."""
    head = "".join(f"<th>{escape(column)}</th>" for column in columns)
    body = "\n".join(f'<tr{" class=bad" if row.score < floor else ""}>'
                     + "".join(f"<td>{escape(cell)}</td>" for cell in row.cells()) + "</tr>"
                     for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def to_html(report: Int8Report) -> str:
    floor = report.floor_db
    activations = _table(report.activations, ActivationRow.COLUMNS, floor)
    weights = _table(report.weights, WeightRow.COLUMNS, floor)
    suggestions = "".join(f"<li><code>--keep-float {escape(','.join(s['nodes']))}</code> "
                          f"({escape(s['module'])}: {escape(s['reason'])})</li>"
                          for s in report.keep_float_suggestions())
    title = f"int8 per-layer report: {escape(report.model)}"
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
            f"<p>{report.samples} input rows. Own SQNR: the tensor entering its QuantizeLinear "
            "against its dequantized value; worst channel: the same for its worst channel; "
            "accumulated: the fp32 run against the int8 run at that tensor. Rows under the "
            f"{floor:g} dB floor are shaded.</p>\n{sqnr_plot(report)}\n"
            + (f"<h2>Suggested --keep-float</h2><ul>{suggestions}</ul>\n" if suggestions else "")
            + f"<h2>Activations ({len(report.activations)}), worst first</h2>\n{activations}\n"
            f"<h2>Weights ({len(report.weights)}), worst first</h2>\n{weights}\n</body></html>\n")
