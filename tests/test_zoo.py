"""The model zoo: every registered model is complete, listed, and exports a well-formed graph.

One export per model per session (the ``zoo_onnx`` fixture, at the spec's CI-sized
``test_input``), shared with tests/test_parity_matrix.py, which compares every file with the
seed-0 eager model at batch 1 and 3 and at every precision.
"""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from torch import nn

from edgecnn import models
from edgecnn.export import build_model

# The architectures the zoo promises (README, Model zoo); the registry may hold more.
ZOO = ["lenet", "lenet5", "mnist_cnn", "fashion_cnn", "alexnet", "alexnet_original",
       *(f"vgg{depth}{bn}" for depth in (11, 13, 16, 19) for bn in ("", "_bn")),
       "nin", "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
       "preact_resnet18", "densenet121", "mobilenet_v1", "mobilenet_v2", "fcn_resnet18"]


def _output_shape(spec: models.ModelSpec, batch: int, height: int, width: int) -> tuple:
    if spec.task == "segmentation":
        return (batch, spec.num_classes, height, width)
    return (batch, spec.num_classes)


def test_the_zoo_is_registered_and_listed(cli):
    assert set(ZOO) <= set(models.list_models())
    rows = {row["name"]: row for row in json.loads(cli("list", "--json").stdout)["models"]}
    for name in ZOO:
        spec = models.get_spec(name)
        assert rows[name]["params"] == spec.params and rows[name]["task"] == spec.task
    table = cli("list").stdout
    assert all(name in table for name in ZOO)
    assert "fcn_resnet18" in table and "segmentation" in table and "132,863,336" in table


@pytest.mark.parametrize("name", models.list_models())
def test_spec_is_complete_and_counts_parameters(name):
    """Parameter count, normalization, CI input and output shape (on the meta device: free)."""
    spec = models.get_spec(name)
    channels, height, width = spec.input_size
    with torch.device("meta"):
        model = models.create(name)
        assert sum(p.numel() for p in model.parameters()) == spec.params
        for size in {(height, width), spec.ci_input_size}:
            out = model(torch.empty(2, channels, *size))
            assert tuple(out.shape) == _output_shape(spec, 2, *size)
    assert len(spec.mean) == len(spec.std) == channels
    assert all(0 < value < 1 for value in (*spec.mean, *spec.std))
    assert spec.test_input is not None
    assert all(lo <= ci <= full for lo, ci, full in
               zip(spec.min_input_size, spec.ci_input_size, (height, width)))
    if spec.fixed_input_size:
        assert spec.ci_input_size == (height, width)


def _trivial(norm: nn.modules.batchnorm._BatchNorm) -> bool:
    """Eval-mode identity: fresh statistics and affine parameters."""
    return bool((norm.running_mean == 0).all() and (norm.running_var == 1).all()
                and (norm.weight == 1).all() and (norm.bias == 0).all())


def test_random_models_get_non_trivial_batchnorm_statistics():
    """build_model's random weights (what the parity matrix compares) have no identity
    BatchNorm, 2-D or 1-D, so a broken BatchNorm export cannot pass a parity check."""
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 5),
                         nn.BatchNorm1d(5))
    norms = [tiny[1], tiny[4]]
    assert all(_trivial(norm) for norm in norms)
    models.randomize_batchnorm_stats(tiny, seed=0)
    for norm in norms:
        assert (norm.running_var - 1).abs().mean() > 0.05 and norm.running_mean.abs().mean() > 0.01
        assert (norm.weight - 1).abs().mean() > 0.05 and norm.bias.abs().mean() > 0.01
    model = build_model("resnet18", seed=0)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 20 and not any(_trivial(norm) for norm in norms)
    assert all((norm.running_var - 1).abs().mean() > 0.05 for norm in norms)


@pytest.mark.parametrize("name", models.list_models())
def test_zoo_export_structure(name, zoo_onnx):
    """One output with the task's name, no Dropout node, the input's dynamic batch axis. The
    numbers (ONNX vs eager at every precision) are tests/test_parity_matrix.py."""
    spec = models.get_spec(name)
    proto = onnx.load(str(zoo_onnx(name)), load_external_data=False)
    assert "Dropout" not in {node.op_type for node in proto.graph.node}
    assert [output.name for output in proto.graph.output] == [spec.output_name]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", spec.input_size[0], *spec.ci_input_size]
