"""The model registry: lookup, options, errors.

torchvision key names, order and shapes are tests/test_torchvision_compat.py.
"""

from __future__ import annotations

import pytest
import torch

from edgecnn import BadInput, models
from conftest import assert_one_line_error


def test_resnet18_parameter_count_and_options():
    assert sum(p.numel() for p in models.create("resnet18").parameters()) == 11_689_512
    spec = models.get_spec("resnet18")
    assert (spec.task, spec.input_size, spec.num_classes, spec.output_name) == (
        "classification", (3, 224, 224), 1000, "logits")
    small = models.create("resnet18", num_classes=10, in_channels=1)
    assert small.conv1.weight.shape == (64, 1, 7, 7) and small.fc.out_features == 10
    assert not small.training
    with torch.no_grad():
        assert small(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_registry_errors_and_filtering():
    with pytest.raises(BadInput, match="did you mean resnet18"):
        models.get_spec("resnt18")
    with pytest.raises(BadInput, match="unexpected keyword argument 'depth'"):
        models.create("resnet18", depth=3)
    assert models.list_models("resnet1*") == ["resnet101", "resnet152", "resnet18", "resnet18_dcn"]


def test_option_values_must_have_the_builders_type():
    """--option passes strings other than true/false through: "no" must not enable an option."""
    with pytest.raises(BadInput, match="alexnet_original: paper_lrn must be true or false, got 'no'"):
        models.create("alexnet_original", paper_lrn="no")
    with pytest.raises(BadInput, match="nin: dropout must be a number, got 'half'"):
        models.create("nin", dropout="half")
    with pytest.raises(BadInput, match="lenet: num_classes must be an integer, got 2.5"):
        models.create("lenet", num_classes=2.5)
    with pytest.raises(BadInput, match="lenet: in_channels must be an integer, got True"):
        models.create("lenet", in_channels=True)
    assert models.create("lenet", num_classes=3, in_channels=2)(torch.zeros(1, 2, 28, 28)).shape == (1, 3)


def test_builder_errors_are_bad_input_from_the_cli(cli, tmp_path):
    result = cli("export", "nin", "--option", "dropout=2", "-o", tmp_path / "x.onnx")
    assert_one_line_error(result, 2, "nin: dropout probability has to be between 0 and 1")
    with pytest.raises(BadInput, match="nin: dropout probability"):
        models.create("nin", dropout=-1)
    assert list(tmp_path.iterdir()) == []


def test_spec_normalization_for_other_channel_counts():
    spec = models.get_spec("resnet18")
    assert spec.normalization() == (list(spec.mean), list(spec.std))
    mean, std = spec.normalization(1)
    assert mean == [pytest.approx(sum(spec.mean) / 3)] and len(std) == 1
