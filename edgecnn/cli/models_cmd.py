"""`edgecnn list`: the registry as a table."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgecnn.cli._app import JsonOpt, app, out, print_json


def _rows(pattern: str) -> list[dict]:
    from edgecnn import models

    rows = []
    for name in models.list_models(pattern):
        spec = models.get_spec(name)
        rows.append({"name": name, "task": spec.task, "input": list(spec.input_size),
                     "num_classes": spec.num_classes, "params": spec.params,
                     "family": spec.family, "test_input": list(spec.ci_input_size)})
    return rows


@app.command("list")
def list_command(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'resnet*'.")] = "*",
    json_output: JsonOpt = False,
) -> None:
    """List the registered models: name, task, input, parameters."""
    rows = _rows(pattern)
    if json_output:
        print_json({"models": rows})
        return
    table = Table("name", "task", "input (C×H×W)", "classes", "params", "family")
    for row in rows:
        params = f"{row['params']:,}" if row["params"] else "–"
        table.add_row(row["name"], row["task"], "×".join(map(str, row["input"])),
                      str(row["num_classes"]), params, row["family"])
    out.print(table)
    out.print(f"{len(rows)} models")
