"""The typer app and what every command shares: option types, output, progress.

Command modules must not import torch at module level: ``edgecnn run``, ``bench`` and
``info`` run on devices without it. Heavy imports go inside the command functions.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
)
from rich.text import Text
from rich.markup import escape  # noqa: F401  (for the command modules)

from edgecnn.errors import BadInput

app = typer.Typer(
    name="edgecnn",
    help="Classic CNNs from PyTorch to the edge: export to ONNX, quantize, run, check parity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _Stdout(Console):
    def on_broken_pipe(self) -> None:
        """The reader went away (`edgecnn list | head`): main() ends quietly (rich would exit 1)."""
        self.quiet = True
        raise BrokenPipeError


# Results go to stdout; piped output gets a fixed wide width instead of rich's 80 columns.
out = _Stdout(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)  # progress and warnings (stderr)
# Console output is rich markup: every value from the user or a file (paths, names, messages)
# goes through escape(), or '[b]' in a path would be read as a style.

# Options shared by several commands (DESIGN.md, "CLI conventions").
OutputOpt = Annotated[Optional[str], typer.Option("--output", "-o", help="Output .onnx path.")]
OpsetOpt = Annotated[int, typer.Option("--opset", help="ONNX opset (18 or newer).")]
InputSizeOpt = Annotated[Optional[str], typer.Option(
    "--input-size", metavar="H W",
    help="Input height and width: one int (square) or two (H W). Default: the model's.")]
BatchOpt = Annotated[Optional[int], typer.Option(
    "--batch", help="Fix the batch size (default: a dynamic 'batch' axis).")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="Number of classes.")]
WeightsOpt = Annotated[Optional[str], typer.Option(
    "--weights", help="state_dict file (e.g. a torchvision checkpoint); default: seeded random.")]
ProviderOpt = Annotated[str, typer.Option(
    "--provider", help="Execution provider: auto, cpu, cuda or tensorrt.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="onnxruntime intra-op threads.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout, nothing else.")]
CalibrationOpt = Annotated[Optional[str], typer.Option(
    "--calibration", metavar="PATH|random",
    help="int8 calibration data: a folder of jpg/png images (preprocessed from the model's "
         "metadata), a .npy/.npz of ready inputs (N, C, H, W), or 'random' (no accuracy "
         "guarantee).")]
CalibrationSizeOpt = Annotated[int, typer.Option(
    "--calibration-size", metavar="N", help="Calibration samples to use (a seeded subset).")]


def parse_input_size(text: str | None) -> tuple[int, int] | None:
    """'64', '64x48', '64,48' or '64 48' -> (H, W). main() joins `--input-size 64 48`."""
    if text is None:
        return None
    parts = [part for part in re.split(r"[x,\s]+", text.strip()) if part]
    if not 1 <= len(parts) <= 2 or not all(part.isdigit() for part in parts):
        raise BadInput(f"--input-size takes one int or two (H W), got {text!r}")
    sizes = [int(part) for part in parts]
    return (sizes[0], sizes[-1])


def join_input_size(argv: list[str]) -> list[str]:
    """Let `--input-size H W` take two values (click options take a fixed count)."""
    joined, index = [], 0
    while index < len(argv):
        token = argv[index]
        joined.append(token)
        if token == "--input-size":
            values = []
            while index + 1 < len(argv) and argv[index + 1].isdigit() and len(values) < 2:
                values.append(argv[index + 1])
                index += 1
            if values:
                joined.append("x".join(values))
        index += 1
    return joined


def print_json(payload: dict) -> None:
    out.out(json.dumps(payload, indent=2, default=str), highlight=False)  # raw: no markup, no wrap


def print_fields(rows: list[tuple[str, str]]) -> None:
    """Key/value lines with the values aligned (``info``, ``bench``): plain text, so values read
    from files are never taken as markup, and nothing is padded after the value when piped."""
    width = max(len(key) for key, _ in rows) + 2
    for key, value in rows:
        out.print(Text(f"{key:<{width}}{value}"), soft_wrap=True)


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024
    return f"{size:.1f} GB"


class _StepAware:
    """A column that stays empty on the step line (a task without a total)."""

    def render(self, task):
        return Text("") if task.total is None else super().render(task)


class _Bar(_StepAware, BarColumn):
    pass


class _Count(_StepAware, MofNCompleteColumn):
    pass


@contextlib.contextmanager
def progress(enabled: bool = True) -> Iterator[tuple]:
    """(on_step, on_progress) callbacks drawing the current step and progress bars on stderr."""
    if not (enabled and err.is_terminal):  # progress bars in a log file are noise
        yield (lambda message: None), None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), _Bar(), _Count(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as display:
        step_task = display.add_task("starting", total=None)
        bars: dict[str, int] = {}

        def on_step(message: str) -> None:
            display.update(step_task, description=f"{message}...")

        def on_progress(task: str, done: int, total: int) -> None:
            if task not in bars:
                bars[task] = display.add_task(task, total=total)
            display.update(bars[task], completed=done, total=total)

        yield on_step, on_progress
