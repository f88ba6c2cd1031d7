"""check_onnx: any module against any file, every output compared, in the graph's order."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from foreign_models import export_dynamo

from edgecnn.errors import BadInput
from edgecnn.export import check_onnx

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class TwoHeads(nn.Module):
    """A conv with two heads; ``as_dict`` returns them as torchvision's segmentation models do
    ({"out": ..., "aux": ...}), else as a tuple. ``shift`` moves the second head."""

    def __init__(self, as_dict: bool = False, shift: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.as_dict, self.shift = as_dict, shift

    def forward(self, x):
        features = self.conv(x)
        out, aux = features.mean((2, 3)), features.amax((2, 3)) + self.shift
        return {"out": out, "aux": aux} if self.as_dict else (out, aux)


class OneHead(TwoHeads):
    def forward(self, x):
        return super().forward(x)[0]


@pytest.fixture(scope="module")
def inputs():
    return [np.random.default_rng(0).standard_normal((2, 3, 16, 16), dtype=np.float32)]


def _exported(module: nn.Module, folder) -> str:
    return str(export_dynamo(module, folder / "model.onnx", (torch.randn(2, 3, 16, 16),)))


def test_a_module_that_returns_a_dict_is_compared_output_by_output(tmp_path, inputs):
    module = TwoHeads(as_dict=True)
    report = check_onnx(module, _exported(module, tmp_path), inputs)
    assert report.verdict.passed and len(report.outputs) == 2
    assert all(output.metrics.rel_l2 < 1e-5 for output in report.outputs)


def test_every_output_is_judged_not_only_the_first(tmp_path, inputs):
    report = check_onnx(TwoHeads(), _exported(TwoHeads(shift=0.5), tmp_path), inputs)
    assert not report.verdict.passed
    first, second = report.outputs
    assert first.passed and not second.passed
    assert report.verdict.failures().startswith(f"output {second.name!r}")


@pytest.mark.parametrize("module, file, eager, onnx", [(TwoHeads(), OneHead(), 2, 1),
                                                       (OneHead(), TwoHeads(), 1, 2)])
def test_a_different_number_of_outputs_is_one_clear_error(tmp_path, inputs, module, file, eager,
                                                          onnx):
    with pytest.raises(BadInput, match=f"has {onnx} outputs, the reference {eager}$"):
        check_onnx(module, _exported(file, tmp_path), inputs)


def test_a_batch_given_by_input_name_is_fed_in_the_graphs_order(tmp_path):
    from foreign_models import TwoInputsTwoOutputs

    module = TwoInputsTwoOutputs().eval()
    image = np.random.default_rng(1).standard_normal((2, 3, 16, 16), dtype=np.float32)
    scale = np.array([[0.5], [4.0]], np.float32)
    path = export_dynamo(module, tmp_path / "two.onnx", (torch.from_numpy(image),
                                                         torch.from_numpy(scale)))
    names = [value.name for value in onnx.load(str(path), load_external_data=False).graph.input]
    batch = dict(reversed(list(zip(names, (image, scale)))))  # keys not in the graph's order
    report = check_onnx(module, path, [batch])
    assert report.verdict.passed and all(o.metrics.rel_l2 < 1e-5 for o in report.outputs)
    with pytest.raises(BadInput, match="a batch names"):
        check_onnx(module, path, [{"x": image, "y": scale}])
