"""Shared fixtures: the in-process CLI runner and exports reused across test modules."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """Run the real `edgecnn` entry point (argument parsing, error handling) in-process."""
    from edgecnn.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_console_script(*args: str, env: dict | None = None, timeout: float = 300) -> CliResult:
    """Run `edgecnn ...` as a separate process, exactly as a user would."""
    command = [sys.executable, "-c", "import sys; from edgecnn.cli import main; sys.exit(main())",
               *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    return CliResult(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(result: CliResult, code: int, *fragments: str) -> None:
    """The CLI error contract: exit code, one line on stderr, no traceback."""
    assert result.code == code, (result.code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="session")
def resnet18_64(tmp_path_factory) -> Path:
    """resnet18 exported once at 64x64 with a dynamic batch axis (seed 0)."""
    from edgecnn.export import export_model

    path = tmp_path_factory.mktemp("resnet18") / "resnet18.onnx"
    export_model("resnet18", path, input_size=64)
    return path
