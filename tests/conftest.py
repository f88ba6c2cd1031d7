"""Shared fixtures: the in-process CLI runner and exports reused across test modules."""

from __future__ import annotations

import os
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


CONSOLE_SCRIPT = [sys.executable, "-c", "import sys; from edgecnn.cli import main; sys.exit(main())"]


def run_console_script(*args: str, env: dict | None = None, timeout: float = 300) -> CliResult:
    """Run `edgecnn ...` as a separate process, exactly as a user would."""
    command = [*CONSOLE_SCRIPT, *map(str, args)]
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
def zoo_onnx(tmp_path_factory):
    """``zoo_onnx(name) -> Path``: a registered model exported once per test session.

    Seed-0 random weights (``build_model``, so ``build_model(name, seed=0)`` is the eager
    twin), the spec's CI-sized ``test_input``, a dynamic batch axis, fp32, the default opset
    and deform lowering. No parity check inside the export: the tests that use a file compare
    it themselves. The files (the VGGs are ~550 MB each) are deleted when the session ends.
    """
    import shutil

    from edgecnn import models
    from edgecnn.export import export_model

    directory = tmp_path_factory.mktemp("zoo")
    exported: dict[str, Path] = {}

    def export(name: str) -> Path:
        if name not in exported:
            spec = models.get_spec(name)
            path = directory / f"{name}.onnx"
            export_model(name, path, input_size=spec.ci_input_size, check=False)
            exported[name] = path
        return exported[name]

    yield export
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def resnet18_64(zoo_onnx) -> Path:
    """resnet18 exported once at 64x64 (its test_input) with a dynamic batch axis (seed 0)."""
    return zoo_onnx("resnet18")


# ---- parallel runs and the parity report ----------------------------------------------------

def pytest_configure(config):
    """Under pytest-xdist with two workers or more, each worker computes on its share of the
    cores (one on the 2-core CI machine): torch's and onnxruntime's defaults (a thread per core
    in each worker) oversubscribe the cores and spin: 12 parity-matrix cases took 118 s with
    them and 110 s with one thread each (0.93x; each setting in its own pytest run, lscpu
    "AMD EPYC", 2 cores, 2026-12-07; README, "Development"). Sessions given a thread count
    keep it, and the tests that start `edgecnn` as a process run the defaults a user gets."""
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    if workers < 2:
        return
    import onnxruntime
    import torch

    share = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(share)
    create = onnxruntime.InferenceSession.__init__

    def shared_cores_by_default(self, path_or_bytes, sess_options=None, *args, **kwargs):
        sess_options = sess_options or onnxruntime.SessionOptions()
        if sess_options.intra_op_num_threads == 0:  # onnxruntime's "one per core"
            sess_options.intra_op_num_threads = share
        create(self, path_or_bytes, sess_options, *args, **kwargs)

    onnxruntime.InferenceSession.__init__ = shared_cores_by_default


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (--dist loadgroup) the tests parametrized by one model (``name``) run
    on one worker and share its export. Other tests that use a model (``resnet18_64``,
    ``zoo_onnx("lenet")``) may run on either worker: at most one export per worker."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("name") if callspec else None
        if isinstance(name, str):
            item.add_marker(pytest.mark.xdist_group(name))


_PARITY_ROWS: list[dict] = []


def pytest_runtest_logreport(report):
    """Gather the figures tests record with record_property("parity", {...}); under xdist the
    workers' reports arrive here on the controller."""
    if report.when == "call":
        _PARITY_ROWS.extend(value for key, value in report.user_properties if key == "parity")


def pytest_sessionfinish(session):
    """EDGECNN_PARITY_REPORT=FILE.md: every recorded parity figure as one table."""
    path = os.environ.get("EDGECNN_PARITY_REPORT")
    if not path or not _PARITY_ROWS or hasattr(session.config, "workerinput"):
        return
    order = {"fp32": 0, "fp16": 1, "int8": 2}
    lines = ["| model | precision | provider | batch | rel_l2 | max_abs | cosine | SQNR dB | top-1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    key = lambda r: (r["model"], order[r["precision"]], r["provider"], r["batch"])  # noqa: E731
    for row in sorted(_PARITY_ROWS, key=key):
        top1 = "–" if row["top1_agreement"] is None else f"{row['top1_agreement']:.3f}"
        sqnr = "inf" if row["sqnr_db"] is None else f"{row['sqnr_db']:.1f}"
        lines.append(f"| {row['model']} | {row['precision']} | {row['provider']} | {row['batch']} "
                     f"| {row['rel_l2']:.2e} | {row['max_abs']:.2e} | {row['cosine']:.6f} "
                     f"| {sqnr} | {top1} |")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
