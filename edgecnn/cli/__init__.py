"""The ``edgecnn`` command line: a thin typer layer over the Python API.

Errors become one line on stderr and an exit code (2: bad input, 1: a failed check); pass
``--debug`` anywhere on the command line (or set EDGECNN_DEBUG=1) for the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from edgecnn.cli._app import INSTALL_FOR, app, err, fill_help, in_flags, safe
from edgecnn.cli._parsing import join_multi_value_flags
from edgecnn.cli._signals import SignalsAsInterrupts
from edgecnn.errors import EdgecnnError, first_line, out_of_memory, refused_write

# Command modules register themselves on `app` when imported, in this (help) order: the build
# side (list, export, quantize, check), then what runs on a device (annotate, info, run, bench,
# evaluate).
from edgecnn.cli import models_cmd, export_cmd, quantize_cmd, check_cmd  # noqa: E402,F401,I001
from edgecnn.cli import annotate_cmd, info_cmd, runtime_cmd, evaluate_cmd  # noqa: E402,F401,I001


def _fail(message: str, code: int) -> int:
    err.print(f"[red]error:[/red] {safe(message)}", markup=True, highlight=False, soft_wrap=True)
    return code


def main(argv: list[str] | None = None) -> int:
    # SIGTERM and SIGHUP clean up like Ctrl-C and exit with 128 + the signal number.
    with SignalsAsInterrupts() as caught:
        return caught.exit_code(_run(argv))


def _run(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("EDGECNN_DEBUG") == "1"
    argv = join_multi_value_flags([arg for arg in argv if arg != "--debug"]) or ["--help"]
    command = typer.main.get_command(app)
    if "--help" in argv or "-h" in argv:
        fill_help(command)
    try:
        result = command.main(args=argv, prog_name="edgecnn", standalone_mode=False)
        code = result if isinstance(result, int) else 0
        if code == 130:  # typer turned a KeyboardInterrupt into this exit code
            _fail("interrupted; nothing was written", 130)
    except typer.TyperException as error:  # usage errors: unknown option, missing argument...
        ctx = getattr(error, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        code = _fail(error.format_message() + where, error.exit_code)
    except typer.Exit as error:
        code = error.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = _fail("interrupted; nothing was written", 130)
    except EdgecnnError as error:
        if debug:
            traceback.print_exc()  # then the line and the exit code as without --debug
        code = _fail(in_flags(str(error), command, argv), error.exit_code)
    except BrokenPipeError:  # whoever read stdout stopped (`edgecnn list | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no 2nd error at exit
        code = 0
    except Exception as error:  # a bug: say so in one line, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        if isinstance(error, ModuleNotFoundError) and error.name in INSTALL_FOR:
            return _fail(f"`edgecnn {next(iter(argv), '')}` needs {error.name}, which this "
                         f"install does not have: {INSTALL_FOR[error.name]}", 2)
        if (message := out_of_memory(error)) is not None:
            return _fail(message, 2)
        # The atomic writers have removed their temporary files by the time a refused write
        # reaches main(); a streamed `run --output` says what it kept (runtime/predict.py).
        if isinstance(error, OSError) and (message := refused_write(error)) is not None:
            return _fail(message, 2)
        code = _fail(f"internal error: {type(error).__name__}: {first_line(error)} "
                     "(run again with --debug for the traceback)", 1)
    return code


__all__ = ["app", "main"]
