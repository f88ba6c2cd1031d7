"""torchvision compatibility: same state_dict layout, same logits, checkpoints export.

The reference data in tests/data was made once with real torchvision by
tests/data/make_torchvision_reference.py (it cannot run here: torchvision is not installable
next to edgecnn's torch). Weights are a deterministic function of the key names
(``fill_state``), so the same checkpoint is rebuilt here without torchvision.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecnn import BadInput, models
from edgecnn.export import build_model, compare
from edgecnn.runtime import load_session

DATA = Path(__file__).resolve().parent / "data"
_generator = importlib.util.spec_from_file_location(
    "make_torchvision_reference", DATA / "make_torchvision_reference.py")
reference = importlib.util.module_from_spec(_generator)
_generator.loader.exec_module(reference)

MANIFEST = json.loads(reference.MANIFEST_FILE.read_text())["architectures"]
LOGITS = np.load(reference.LOGITS_FILE)
TOLERANCE = 1e-5


def _layout(model: torch.nn.Module) -> list:
    return [[key, list(value.shape)] for key, value in model.state_dict().items()]


def _torch_state(manifest: list) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in reference.fill_state(manifest).items()}


def test_reference_covers_every_torchvision_architecture():
    shared = {"alexnet", "googlenet", "densenet121", "mobilenet_v2",
              *models.list_models("vgg*"), *(f"resnet{d}" for d in (18, 34, 50, 101, 152))}
    assert shared <= set(reference.ARCHITECTURES) <= set(LOGITS.files)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_state_dict_layout_equals_torchvision(name):
    """Same keys, same order, same shapes (BatchNorm running statistics included)."""
    options = MANIFEST[name]["kwargs"]
    edgecnn_name = name.removesuffix("_aux_logits")
    with torch.device("meta"):
        model = models.create(edgecnn_name, aux_logits=True) if name != edgecnn_name \
            else models.create(edgecnn_name)
    assert options.get("aux_logits", False) == (name != edgecnn_name)
    assert _layout(model) == MANIFEST[name]["state_dict"]


@pytest.mark.parametrize("name", sorted(reference.ARCHITECTURES))
def test_torchvision_state_dict_loads_strictly_and_reproduces_logits(name):
    entry = MANIFEST[name]
    with torch.device("meta"):
        model = models.create(name)
    model.load_state_dict(_torch_state(entry["state_dict"]), strict=True, assign=True)
    x = torch.from_numpy(reference.reference_input(entry["input"][-1]))
    with torch.no_grad():
        logits = model.eval()(x).numpy()
    metrics = compare(LOGITS[name], logits)
    assert metrics.rel_l2 <= TOLERANCE and metrics.top1_agreement == 1.0, (name, metrics)


def test_googlenet_torchvision_checkpoint_exports_with_the_cli(cli, tmp_path):
    """torchvision's GoogLeNet checkpoints carry the (untrained) auxiliary heads: they load
    into the default model (no aux heads), export, and the ONNX reproduces torchvision."""
    state = _torch_state(MANIFEST["googlenet_aux_logits"]["state_dict"])
    assert any(key.startswith("aux1.") for key in state)
    checkpoint = tmp_path / "googlenet.pth"
    torch.save(state, checkpoint)
    out = tmp_path / "googlenet.onnx"
    size = MANIFEST["googlenet"]["input"][-1]
    result = cli("export", "googlenet", "--weights", checkpoint, "--input-size", size,
                 "-o", out, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["parity"]["rel_l2"] <= TOLERANCE
    onnx_logits = load_session(out).run(None, {"input": reference.reference_input(size)})[0]
    metrics = compare(LOGITS["googlenet"], onnx_logits)
    assert metrics.rel_l2 <= TOLERANCE and metrics.top1_agreement == 1.0, metrics


def test_densenet_legacy_torchvision_checkpoint_loads(tmp_path):
    """torchvision's DenseNet download files predate its layer names (``norm.1``) and
    PyTorch 0.4.1 (no BatchNorm ``num_batches_tracked``); they load, every other key strictly."""
    entry = MANIFEST["densenet121"]
    state = _torch_state(entry["state_dict"])
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key): value
              for key, value in state.items() if not key.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    checkpoint = tmp_path / "densenet121.pth"
    torch.save(legacy, checkpoint)
    model = build_model("densenet121", weights=checkpoint)
    with torch.no_grad():
        logits = model(torch.from_numpy(reference.reference_input(entry["input"][-1]))).numpy()
    assert compare(LOGITS["densenet121"], logits).rel_l2 <= TOLERANCE


def test_checkpoint_adapters_stay_strict_otherwise(tmp_path):
    state = _torch_state(MANIFEST["googlenet"]["state_dict"])
    state["head.weight"] = torch.zeros(3)
    checkpoint = tmp_path / "googlenet.pth"
    torch.save(state, checkpoint)
    with pytest.raises(BadInput, match="unexpected keys: head.weight"):
        build_model("googlenet", weights=checkpoint)
    del state["head.weight"]
    torch.save(state, checkpoint)  # no aux heads in the file: a model that has them misses keys
    with pytest.raises(BadInput, match="missing keys: aux1"):
        build_model("googlenet", weights=checkpoint, aux_logits=True)
