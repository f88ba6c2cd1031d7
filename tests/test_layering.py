"""The runtime is what ships to devices: it must never pull in torch (docs/design.md, layers)."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys; print(','.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.strip().splitlines()[-1].split(","))


def test_runtime_import_is_torch_free():
    # Every module of the package (found by pkgutil, so new ones are covered too).
    loaded = _modules_after(
        "import importlib, pkgutil, edgecnn.runtime as rt\n"
        "for info in pkgutil.iter_modules(rt.__path__):\n"
        "    importlib.import_module(f'edgecnn.runtime.{info.name}')")
    assert "torch" not in loaded
    assert "edgecnn.models" not in loaded and "edgecnn.export" not in loaded
    assert "onnxruntime" in loaded and "edgecnn.runtime.preprocess" in loaded


def test_cli_start_and_info_are_torch_free(resnet18_64):
    loaded = _modules_after(
        "from edgecnn.cli import main\n"
        f"assert main(['info', {str(resnet18_64)!r}, '--json']) == 0")
    assert "torch" not in loaded and "edgecnn.cli" in loaded


def test_cli_run_and_bench_are_torch_free(resnet18_64, tmp_path):
    image = tmp_path / "image.png"
    loaded = _modules_after(
        "import numpy as np\n"
        "from PIL import Image\n"
        f"Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save({str(image)!r})\n"
        "from edgecnn.cli import main\n"
        f"assert main(['run', {str(resnet18_64)!r}, {str(image)!r}, '--json']) == 0\n"
        f"assert main(['bench', {str(resnet18_64)!r}, '--runs', '2', '--warmup', '0', '--json']) == 0")
    assert "torch" not in loaded and "edgecnn.models" not in loaded
    assert "edgecnn.export" not in loaded and "onnx" not in loaded  # nor the 40 MB onnx package
    assert {"edgecnn.runtime.engine", "edgecnn.runtime.bench"} <= loaded


def test_cli_quantize_does_not_import_torch(resnet18_64, tmp_path):
    """Quantizing an .onnx file is onnx + onnxruntime work: torch would add ~2 s and ~200 MB."""
    output = tmp_path / "int8.onnx"
    loaded = _modules_after(
        "from edgecnn.cli import main\n"
        f"assert main(['quantize', {str(resnet18_64)!r}, '-o', {str(output)!r}, '--mode', "
        "'int8-dynamic', '--json']) == 0")
    assert output.is_file()
    assert "torch" not in loaded and "edgecnn.models" not in loaded
    assert "edgecnn.export.quantize" in loaded
