"""The documented torch-free install works: a fresh venv with ONLY requirements-runtime.txt.

Costs about 30 s on 2 cores (venv, pip from its cache, an editable install); needs the package
index pip is configured with, as the CI's own install does. EDGECNN_SKIP_INSTALL_TEST=1 skips it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from edgecnn.runtime import Engine

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("EDGECNN_SKIP_INSTALL_TEST") == "1",
                       reason="EDGECNN_SKIP_INSTALL_TEST=1"),
]


def sh(*command, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{command}:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    return done


def test_runtime_only_venv_runs_an_exported_model(tmp_path, resnet18_64):
    venv = tmp_path / "device-venv"
    sh(sys.executable, "-m", "venv", venv)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
           "--no-compile"]  # byte-compiling the site-packages costs ~10 s here
    sh(*pip, "-r", REPO / "requirements-runtime.txt")
    sh(*pip, "--no-deps", "-e", REPO)
    python = venv / "bin" / "python"
    missing = sh(python, "-c", "import importlib.util as u; "
                 "print([m for m in ('torch', 'onnx', 'onnxscript') if u.find_spec(m)])")
    assert missing.stdout.strip() == "[]"  # nothing of the PyTorch side came along

    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)).save(image)
    edgecnn = venv / "bin" / "edgecnn"
    report = json.loads(sh(edgecnn, "run", resnet18_64, image, "--json").stdout)
    expected = Engine(resnet18_64).predict(image)
    assert [entry["label"] for entry in report["results"][0]["top_k"]] == [i for i, _ in expected]
    bench = json.loads(sh(edgecnn, "bench", resnet18_64, "--runs", "2", "--warmup", "0",
                          "--json").stdout)
    assert bench["provider"] == "cpu" and bench["latency_ms"]["p50"] > 0
    info = json.loads(sh(edgecnn, "info", resnet18_64, "--json").stdout)
    assert info["metadata"]["model"] == "resnet18"  # described by onnxruntime alone
