"""The typer app and what every command shares: option types, output, progress.

Command modules must not import torch at module level: ``edgecnn run``, ``bench`` and
``info`` run on devices without it. Heavy imports go inside the command functions.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import sys
import warnings
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn,
    TimeElapsedColumn, TimeRemainingColumn,
)
from rich.text import Text
from rich.table import Table
from rich.markup import escape

from edgecnn.errors import alternatives

app = typer.Typer(
    name="edgecnn",
    help="Classic CNNs from PyTorch to the edge: export to ONNX, quantize, run, check parity.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help: flags without '<bool>' metavars, no boxes in pipes
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

# C0, DEL and C1 controls, lone surrogates (JSON's "\ud800" decodes to one; no encoding can
# print it), and what breaks or reorders a line without showing: U+2028/2029 (line and
# paragraph separators), zero-width and direction marks, bidi embeddings and isolates, the BOM.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u2028-\u202e"
                          "\u2060-\u2069\ufeff]")


def printable(text: object) -> str:
    """``text`` with control characters as visible ``\\x1b``-style escapes: names, labels and
    paths come from files, and an ESC in one would otherwise reach the terminal (clear the
    screen, move the cursor); a newline (or U+2028) would break the one-line error, and a bidi
    override would show the text reversed. A lone surrogate is shown as ``\\ud800``."""
    def visible(match: re.Match) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNPRINTABLE.sub(visible, str(text))


def safe(text: object) -> str:
    """``text`` for a rich markup string: control characters shown (``printable``) and
    brackets escaped, so '[b]' in a path is not read as a style."""
    return escape(printable(text))


def _print_version(value: bool) -> None:
    if value:
        from edgecnn import __version__

        out.print(f"edgecnn {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show the traceback of an error (anywhere on the command line; "
                        "also EDGECNN_DEBUG=1).")] = False,
) -> None:
    """Classic CNNs from PyTorch to the edge: export to ONNX, quantize, run, check parity."""


def _code(module: str, name: str):
    return getattr(importlib.import_module(module), name)


# What the build-side commands (list, export, quantize, check) need beyond the runtime install,
# and the extras that bring what a module missing from this install is part of.
BUILD_PACKAGES = ("torch", "onnx", "onnxscript")
INSTALL_FOR = {**{name: "pip install 'edgecnn[export,cpu]'" for name in BUILD_PACKAGES},
               "onnxruntime": "pip install 'edgecnn[cpu]' (or edgecnn[gpu] with an NVIDIA GPU, "
                              "edgecnn[openvino] for Intel's devices)"}


# Help texts may name lists that the code owns ({modes}, {providers}, ...): they are filled in
# from the code when help is shown (``fill_help``), so the help can never drift from what the
# commands accept, and a command that runs does not import the modules that own the lists.
HELP_LISTS = {
    "providers": lambda: _providers_list(),
    "precisions": lambda: alternatives(_code("edgecnn.export.parity", "PRECISIONS")),
    "modes": lambda: alternatives(f"{mode} ({recipe.summary})" for mode, recipe
                                   in _code("edgecnn.export.quantize_recipes", "RECIPES").items()),
    "export_modes": lambda: alternatives(_code("edgecnn.export.quantize_recipes", "EXPORT_MODES")),
    "methods": lambda: alternatives(_code("edgecnn.export.quantize_recipes", "METHODS")),
    "targets": lambda: alternatives(_code("edgecnn.export.quantize_recipes", "TARGETS")),
    "min_crop": lambda: str(_code("edgecnn.runtime.metadata", "MIN_CROP_FRACTION")),
}


def _providers_list() -> str:
    from edgecnn.runtime.providers import SHORT_NAMES

    return alternatives(["auto", *(short for short in SHORT_NAMES if short != "trt")])


def fill_help(command) -> None:
    """Fill the {list} placeholders of every option's help under ``command`` (a click group)."""
    commands = command.commands.values() if hasattr(command, "commands") else [command]
    for sub in commands:
        for param in sub.params:
            text = getattr(param, "help", None)
            if text and "{" in text:
                param.help = text.format(**{key: _help_list(key) for key in HELP_LISTS
                                            if "{" + key + "}" in text})


def _help_list(key: str) -> str:
    """The list a help text names, or, on an install without the module that owns it (the
    device install has no onnx), how to get it."""
    try:
        return HELP_LISTS[key]()
    except ModuleNotFoundError as error:
        if error.name not in INSTALL_FOR:
            raise
        return f"(the list needs {error.name}: {INSTALL_FOR[error.name]})"


# Options shared by several commands (docs/contributing.md, "A CLI command").
OutputOpt = Annotated[Optional[str], typer.Option("--output", "-o", help="Output .onnx path.")]
InputSizeOpt = Annotated[Optional[str], typer.Option(
    "--input-size", metavar="H W",
    help="Input height and width: one int (square) or two (H W). Default: the model's.")]
BatchOpt = Annotated[Optional[int], typer.Option(
    "--batch", help="Fix the batch size (default: a dynamic 'batch' axis).")]
BenchBatchOpt = Annotated[Optional[int], typer.Option(
    "--batch", help="Rows per call: sizes a dynamic batch axis, must equal a fixed one "
                    "(default: 1, or the fixed size).")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="Number of classes.")]
WeightsOpt = Annotated[Optional[str], typer.Option(
    "--weights", help="state_dict file (e.g. a torchvision checkpoint); default: seeded random.")]
ProviderOpt = Annotated[str, typer.Option(
    "--provider", help="Execution provider: {providers}. openvino:DEVICE and openvino:bf16 (or "
                       "f16) pick OpenVINO's device and precision (default CPU, f32).")]
TargetOpt = Annotated[str, typer.Option(
    "--target", help="int8: the provider the file is tuned for: {targets} (cpu rewrites the RGB "
                     "stem for onnxruntime's int8 kernel; OpenVINO runs the plain one faster).")]
ExternalDataOpt = Annotated[bool, typer.Option(
    "--external-data", help="Write the weights to OUTPUT.data beside the .onnx file (always "
                            "for a model over protobuf's 2 GB); both files or neither.")]
ModelOptionOpt = Annotated[Optional[list[str]], typer.Option(
    "--option", metavar="KEY=VALUE",
    help="Keyword argument of the model's builder (or your callable), repeatable, e.g. "
         "upsample=bilinear (fcn_resnet18), paper_lrn=true (alexnet_original); docs/zoo.md.")]
CacheDirOpt = Annotated[Optional[str], typer.Option(
    "--cache-dir", help="Where TensorRT and OpenVINO keep what they compile, so the next run "
                        "starts faster (made if missing).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="onnxruntime intra-op threads.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout, nothing else.")]
CalibrationOpt = Annotated[Optional[str], typer.Option(
    "--calibration", metavar="PATH|random",
    help="int8 calibration data: a folder of images (any of run's formats; preprocessed from the model's "
         "metadata), a .npy/.npz of ready inputs (N, C, H, W), or 'random' (no accuracy "
         "guarantee).")]
StreamBatchOpt = Annotated[Optional[int], typer.Option(
    "--batch", help="Images per session call (default 16, or the model's fixed batch).")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", help="Threads decoding and preprocessing images while the model runs "
                      "(default: the cores but one, 1 to 8).")]
RayOpt = Annotated[Optional[str], typer.Option(
    "--ray", metavar="ADDRESS",
    help="Score the images on Ray Data (pip install 'edgecnn[ray]'): 'local' (an instance on "
         "this machine), 'auto' (the cluster `ray start` joined) or ray://HOST:10001. The model "
         "path must be readable by every worker.")]
MaxPixelsOpt = Annotated[Optional[int], typer.Option(
    "--max-pixels", metavar="N",
    help="Refuse images of more pixels than this before decoding them (default: Pillow's "
         "limit, 89,478,485: about 9459 x 9459).")]
CalibrationSizeOpt = Annotated[int, typer.Option(
    "--calibration-size", metavar="N", help="Calibration samples to use (a seeded subset).")]


def in_flags(message: str, command, argv: list[str], *, leading: bool = True) -> str:
    """An API message in the words of the command line that was run: a leading parameter name
    ("batch must be an integer >= 1") becomes its flag ("--batch must be an integer >= 1"),
    and a setting written as a keyword argument ("use opset=19 or deform_lowering='decomposed'")
    becomes the flag and its value ("use --opset 19 or --deform-lowering decomposed"). Other
    words stay as they are; ``leading=False`` leaves the first word too (a note is a sentence:
    "bisect compared nothing" is not about the --bisect flag)."""
    name = next(iter(argv), None)
    sub = command.commands.get(name) if hasattr(command, "commands") else command
    options = [param for param in getattr(sub, "params", ()) if param.param_type_name == "option"]
    flags = {param.name: param.opts[0] for param in options if param.opts[0].startswith("--")}
    switches = {param.name for param in options if param.is_flag}

    def setting(match: re.Match) -> str:
        flag = flags.get(match[1])
        if flag and match[1] in switches and match[2] == "True":  # per_tensor=True: --per-tensor
            return flag
        return f"{flag} {match[2].strip(chr(39))}" if flag else match[0]

    # A setting starts a word, or a parenthesis that does: "Node(target=" quoted from another
    # tool's error is its own text, not a flag of this command.
    message = re.sub(r"(?:^|(?<=\s)|(?<=\s\())([a-z_]+)=('[^']*'|[^\s,;:)]+)", setting, message)
    parameter = message.split(" ", 1)[0]
    flag = flags.get(parameter) if leading else None
    return flag + message[len(parameter):] if flag else message


def print_json(payload: dict) -> None:
    out.out(json.dumps(payload, indent=2, default=str), highlight=False)  # raw: no markup, no wrap


def print_fields(rows: list[tuple[str, str]]) -> None:
    """Key/value lines with the values aligned (``info``, ``bench``): plain text, so values read
    from files are never taken as markup, and nothing is padded after the value when piped."""
    width = max(len(key) for key, _ in rows) + 2
    for key, value in rows:
        out.print(Text(f"{key:<{width}}{printable(value)}"), soft_wrap=True)


def print_warning(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {safe(message)}", markup=True, highlight=False,
              soft_wrap=True)


@contextlib.contextmanager
def warnings_as_lines():
    """Python warnings (e.g. a provider fallback) as one `warning: ...` line each on stderr.
    Pillow's are dropped: they name no file ("Corrupt EXIF data", an icon of another size than
    its directory says), and the image either decodes or fails with its own line."""
    def show(message, category, *args, **kwargs) -> None:
        print_warning(str(message))

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", module=r"PIL\.")
        warnings.showwarning = show
        yield


def quantize_description(precision: str, details: dict) -> str:
    """'int8 static, minmax calibration on 5 images, bias-corrected': the recipe in a few words,
    from the metadata's ``quantization`` entry."""
    how = f"int8 {details['mode']}" if precision == "int8" else precision
    if details.get("calibration"):
        size = details["calibration_size"]
        kind = "image" if details["calibration"] == "images" else f"{details['calibration']} sample"
        how += f", {details['method']} calibration on {size} {kind}{'' if size == 1 else 's'}"
    if details.get("bias_correction"):
        how += ", bias-corrected"
    return how


def print_quantize_summary(result) -> None:
    """What `quantize` and `export --quantize` print about a ``QuantizeResult``."""
    how = quantize_description(result.precision, result.quantization)
    out.print(f"[green]wrote[/green] {safe(result.path)} ({safe(how)}) "
              f"{human_size(result.size_bytes)} = {result.size_ratio:.2f}x of "
              f"{human_size(result.source_size_bytes)}, in {result.seconds:.1f} s")
    verdict = result.verdict
    if verdict is None:
        out.print("[yellow]comparison with fp32 skipped (--no-check)[/yellow]")
    else:
        for output in verdict.outputs:
            m = output.metrics
            sqnr = "inf" if m.sqnr_db == float("inf") else f"{m.sqnr_db:.1f}"
            out.print(f"vs fp32{'' if len(verdict.outputs) == 1 else ' ' + safe(output.name)}: "
                      f"rel_l2 {m.rel_l2:.2e}  SQNR {sqnr} dB"
                      + (f"  top-1 agreement {m.top1_agreement:.1%}"
                         if m.top1_agreement is not None else "")
                      + f"  (tolerance {verdict.tolerance:g}) "
                      + ("[green]ok[/green]" if output.passed else "[red]FAIL[/red]"))
    accuracy = result.accuracy
    if accuracy:
        budget = accuracy["budget_points"]
        out.print(f"top-1 on {accuracy['samples']} validation samples: fp32 {accuracy['fp32']:.2%}"
                  f"  {result.precision} {accuracy['quantized']:.2%}  (drop "
                  f"{accuracy['drop_points']:.2f} points"
                  + (f", budget {budget:g})" if budget is not None else ")"))
    if result.kept_float:
        out.print(f"kept in float: {safe(', '.join(result.kept_float))}")


def print_keep_float_suggestions(suggestions: list[dict]) -> None:
    """The per-layer report's ``--keep-float`` suggestions, one line each."""
    for suggestion in suggestions:
        out.print(f"suggestion: --keep-float {safe(','.join(suggestion['nodes']))}  "
                  f"({safe(suggestion['module'])}: {safe(suggestion['reason'])})")


def print_int8_report(report, limit: int = 10) -> None:
    """The worst rows of an int8 per-layer report (export/int8_report.py) and its suggestions."""
    from edgecnn.export.int8_report import format_db

    table = Table("module", "tensor", "op", "own SQNR dB", "worst channel dB", "accumulated dB",
                  title=f"int8 activations, worst {min(limit, len(report.activations))} of "
                        f"{len(report.activations)}")
    for row in report.activations[:limit]:
        table.add_row(safe(row.module), safe(row.tensor), safe(row.op_type), format_db(row.sqnr_db),
                      f"{format_db(row.worst_channel_sqnr_db)} (ch {row.worst_channel})",
                      format_db(row.accumulated_sqnr_db))
    out.print(table)
    weights = Table("module", "weight", "SQNR dB", "worst channel dB", "range", "scales",
                    title=f"int8 weights, worst {min(limit, len(report.weights))} of "
                          f"{len(report.weights)}")
    for row in report.weights[:limit]:
        weights.add_row(safe(row.module), safe(row.name), format_db(row.sqnr_db),
                        f"{format_db(row.worst_channel_sqnr_db)} (ch {row.worst_channel})",
                        f"[{row.minimum:.3g}, {row.maximum:.3g}]",
                        "per channel" if row.per_channel else "per tensor")
    out.print(weights)
    print_keep_float_suggestions(report.keep_float_suggestions())


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024


class _StepAware:
    """A column that stays empty on the step line (a task without a total)."""

    def render(self, task):
        return Text("") if task.total is None else super().render(task)


class _Bar(_StepAware, BarColumn):
    pass


class _Count(_StepAware, MofNCompleteColumn):
    pass


class _Remaining(_StepAware, TimeRemainingColumn):
    pass


class _Rate(ProgressColumn):
    """Items done per second (images/s in `run`); empty on the step line."""

    def render(self, task):
        return Text("" if task.total is None or task.speed is None else f"{task.speed:,.1f}/s")


@contextlib.contextmanager
def progress(enabled: bool = True) -> Iterator[tuple]:
    """(on_step, on_progress) callbacks drawing the current step and progress bars on stderr."""
    if not (enabled and err.is_terminal):  # progress bars in a log file are noise
        yield (lambda message: None), None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), _Bar(), _Count(), _Rate(),
               TimeElapsedColumn(), _Remaining())
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
