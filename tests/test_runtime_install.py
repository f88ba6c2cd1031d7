"""The documented device installs work, in fresh venvs: `pip install edgecnn[cpu]` (no PyTorch
comes along), and the same on the oldest onnxruntime the `cpu` extra admits (1.17.3, with the
numpy<2 it needs), where deformable models run through the load-time switch to their decomposed
lowering.

Each venv costs about 30 s on 2 cores (pip from its cache, an editable install); they need the
package index pip is configured with, as the CI's own install does.
EDGECNN_SKIP_INSTALL_TEST=1 skips them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
OLDEST_ONNXRUNTIME = "1.17.3"


def sh(*command, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{command}:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    return done


def device_venv(where: Path, *extra_requirements: str) -> Path:
    """A fresh venv with the README's device install, `pip install edgecnn[cpu]` (editable
    here), plus ``extra_requirements``; its python."""
    sh(sys.executable, "-m", "venv", where)
    python = where / "bin" / "python"
    sh(python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
       "--no-compile",  # byte-compiling the site-packages costs ~10 s here
       "-e", f"{REPO}[cpu]", *extra_requirements)
    return python


def installed(python: Path, *modules: str) -> list[str]:
    probe = ("import importlib.util as u, json; "
             f"print(json.dumps([m for m in {modules!r} if u.find_spec(m)]))")
    return json.loads(sh(python, "-c", probe).stdout)


def run_bench_info_and_a_deformable_model(python: Path, tmp_path: Path, resnet18: Path,
                                          dcn: Path) -> dict:
    """The device's commands on resnet18 agree with this environment's Engine; the deformable
    model's output is compared too. Returns what the venv reported of itself."""
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)).save(image)
    edgecnn = python.parent / "edgecnn"
    report = json.loads(sh(edgecnn, "run", resnet18, image, "--json").stdout)
    expected = Engine(resnet18).predict(image)
    assert [entry["index"] for entry in report["results"][0]["top_k"]] == [i for i, _ in expected]
    bench = json.loads(sh(edgecnn, "bench", resnet18, "--runs", "2", "--warmup", "0",
                          "--json").stdout)
    assert bench["providers"] == ["CPUExecutionProvider"] and bench["latency_ms"]["p50"] > 0
    info = json.loads(sh(edgecnn, "info", resnet18, "--json").stdout)
    assert info["metadata"]["model"] == "resnet18"

    height, width = models.get_spec("deform_testnet").ci_input_size
    batch = np.random.default_rng(1).standard_normal((2, 3, height, width)).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    done = sh(python, "-c", "import json, sys, numpy as np, onnxruntime; "
              "from edgecnn.runtime import Engine; "
              f"engine = Engine({str(dcn)!r}); "
              f"np.save({str(tmp_path / 'out.npy')!r}, "
              f"engine.run(np.load({str(tmp_path / 'batch.npy')!r}))['logits']); "
              "print(json.dumps({'onnxruntime': onnxruntime.__version__, "
              "'swapped': engine.deform_lowering_swapped, 'torch': 'torch' in sys.modules}))")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), Engine(dcn).run(batch)["logits"],
                               rtol=0, atol=1e-5)
    return json.loads(done.stdout)


def test_device_install_has_no_pytorch_and_runs_models(tmp_path, resnet18_64, zoo_onnx):
    python = device_venv(tmp_path / "device-venv")
    assert installed(python, "torch", "onnx", "onnxscript", "onnxruntime") == ["onnxruntime"]
    seen = run_bench_info_and_a_deformable_model(python, tmp_path, resnet18_64,
                                                 zoo_onnx("deform_testnet"))
    # onnxruntime's own DeformConv kernel runs the op: probing for it needs no onnx package
    assert seen["swapped"] is False and seen["torch"] is False
    edgecnn = python.parent / "edgecnn"
    for command in ([], ["run"], ["quantize"]):  # the help crashed: its lists imported onnx
        assert "Usage: edgecnn" in sh(edgecnn, *command, "--help").stdout


def test_oldest_supported_onnxruntime_runs_models(tmp_path, resnet18_64, zoo_onnx):
    # onnx: the switch to the decomposed lowering edits the graph (1.17 has no DeformConv kernel)
    python = device_venv(tmp_path / "old-venv", f"onnxruntime=={OLDEST_ONNXRUNTIME}",
                         "numpy<2", "onnx")
    assert installed(python, "torch", "onnxscript") == []
    seen = run_bench_info_and_a_deformable_model(python, tmp_path, resnet18_64,
                                                 zoo_onnx("deform_testnet"))
    assert seen["onnxruntime"] == OLDEST_ONNXRUNTIME
    assert seen["swapped"] is True and seen["torch"] is False


def test_extras_keep_pytorch_and_the_two_onnxruntime_builds_apart():
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
    name = re.compile(r"[A-Za-z0-9_.-]+")

    def names(requirements):
        return {name.match(requirement).group() for requirement in requirements}

    extras = project["optional-dependencies"]
    assert not names(project["dependencies"]) & {"torch", "onnx", "onnxscript", "onnxruntime",
                                                  "onnxruntime-gpu"}
    assert names(extras["gpu"]) == {"onnxruntime-gpu"}
    for extra, requirements in extras.items():  # only the gpu extra brings onnxruntime-gpu
        assert extra == "gpu" or "onnxruntime-gpu" not in names(requirements)
    torch_ranges = [req for reqs in extras.values() for req in reqs if name.match(req).group() == "torch"]
    assert torch_ranges == ["torch>=2.6,<2.14"]  # never a range that pulls a CUDA build
