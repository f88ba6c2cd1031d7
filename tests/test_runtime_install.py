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

from edgecnn import models
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


def test_runtime_only_venv_runs_an_exported_model(tmp_path, resnet18_64, zoo_onnx):
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
    assert [entry["index"] for entry in report["results"][0]["top_k"]] == [i for i, _ in expected]
    bench = json.loads(sh(edgecnn, "bench", resnet18_64, "--runs", "2", "--warmup", "0",
                          "--json").stdout)
    assert bench["providers"] == ["CPUExecutionProvider"] and bench["latency_ms"]["p50"] > 0
    info = json.loads(sh(edgecnn, "info", resnet18_64, "--json").stdout)
    assert info["metadata"]["model"] == "resnet18"  # described by onnxruntime alone

    # A model with the ai.edgecnn::DeformConv2d custom op runs on onnxruntime's own DeformConv
    # kernel: probing for it needs no onnx package, so the function body is not swapped.
    dcn = zoo_onnx("deform_testnet")
    height, width = models.get_spec("deform_testnet").ci_input_size
    batch = np.random.default_rng(1).standard_normal((2, 3, height, width)).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    sh(python, "-c", "import sys, numpy as np; from edgecnn.runtime import Engine; "
       f"engine = Engine({str(dcn)!r}); assert not engine.deform_lowering_swapped; "
       f"np.save({str(tmp_path / 'out.npy')!r}, engine.run(np.load({str(tmp_path / 'batch.npy')!r}))['logits']); "
       "assert 'onnx' not in sys.modules and 'torch' not in sys.modules")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), Engine(dcn).run(batch)["logits"],
                               rtol=0, atol=1e-6)
