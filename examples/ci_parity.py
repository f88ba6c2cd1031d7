"""Parity in your own CI: prove that your exported .onnx computes what your PyTorch model does.

Run it as a test:   pytest examples/ci_parity.py
Copy the pattern:   export once per test session, then assert parity on a few input batches
                    (including batch sizes other than the one you exported with).
"""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from edgecnn.export import to_onnx
from edgecnn.export.parity import assert_parity


class MyNet(nn.Module):
    """Stand-in for your model: anything torch.export can trace."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, stride=(2, 1), padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    net = MyNet().eval()
    # Freshly initialised BatchNorm is the identity in eval mode; give it statistics so the
    # check would catch a BatchNorm exported wrongly (use your trained weights instead).
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "mynet.onnx"
    onnx.save(to_onnx(model, torch.randn(2, 3, 32, 32)), str(path))  # dynamic batch axis
    return path


@pytest.mark.parametrize("batch", [1, 4])
def test_onnx_matches_eager(model, onnx_path, batch):
    inputs = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    (metrics,) = assert_parity(model, onnx_path, inputs)  # fp32 bound: rel_l2 <= 1e-5
    assert metrics.top1_agreement == 1.0
