"""The runtime is what ships to devices: it must never pull in torch (DESIGN.md, layers)."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys; print(','.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.strip().splitlines()[-1].split(","))


def test_runtime_import_is_torch_free():
    loaded = _modules_after("import edgecnn.runtime, edgecnn.runtime.describe")
    assert "torch" not in loaded
    assert "edgecnn.models" not in loaded and "edgecnn.export" not in loaded
    assert "onnxruntime" in loaded


def test_cli_start_and_info_are_torch_free(resnet18_64):
    loaded = _modules_after(
        "from edgecnn.cli import main\n"
        f"assert main(['info', {str(resnet18_64)!r}, '--json']) == 0")
    assert "torch" not in loaded and "edgecnn.cli" in loaded
