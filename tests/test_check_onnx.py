"""check_onnx: any module against any file, every output compared, in the graph's order."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from foreign_models import TinyClassifier, export_dynamo, export_legacy

from edgecnn.errors import BadInput
from edgecnn.export import check_onnx, check_parity

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


class SmallNet(nn.Module):
    """A conv net without edgecnn metadata once exported (as any user's to_onnx file)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


@pytest.mark.parametrize("mode, precision", [("int8", "int8"), ("fp16", "fp16")])
def test_a_quantized_file_without_metadata_is_judged_at_its_precision(tmp_path, mode, precision):
    """README's CI example: quantize a to_onnx file from arrays (no metadata is written), then
    assert_parity at its precision. The precision comes from the graph (QDQ nodes, fp16
    weights) when the file has no metadata."""
    from edgecnn.export import quantize_model, to_onnx
    from edgecnn.export.parity import assert_parity

    module = SmallNet().eval()
    source, target = tmp_path / "net.onnx", tmp_path / f"net_{mode}.onnx"
    onnx.save(to_onnx(module, torch.randn(2, 3, 16, 16)), source)
    calibration = np.random.default_rng(1).standard_normal((16, 3, 16, 16), dtype=np.float32)
    quantize_model(source, target, mode=mode,
                   calibration=calibration if mode == "int8" else None)
    x = calibration[:4]
    report = check_onnx(module, target, [x])
    assert report.passed and report.precision == precision, report.verdict.failures()
    assert_parity(module, target, x, precision=precision)
    with pytest.raises(BadInput, match=f"holds a {precision} model, not fp32"):
        check_onnx(module, target, [x], precision="fp32")


def test_check_feeds_an_nhwc_file_in_its_layout(cli, tmp_path):
    """A file annotated NHWC gets (N, H, W, C) inputs (was: (N, C, H, W) from the metadata's
    C, H, W, which the module refused), as the same file without metadata does."""
    module = TinyClassifier(nhwc=True)
    path = export_legacy(module, tmp_path / "nhwc.onnx", (torch.randn(1, 16, 20, 3),))
    annotated = tmp_path / "annotated.onnx"
    assert cli("annotate", path, "-o", annotated, "--layout", "NHWC").code == 0
    for file in (path, annotated):
        report = check_parity(module, file, samples=2)
        assert report.passed and report.rows == 2, (file, report.notes)
        assert report.outputs[0].metrics.rel_l2 < 1e-5


class Dropping(SmallNet):
    """SmallNet with Dropout and BatchNorm, whose modes matter."""

    def __init__(self):
        super().__init__()
        self.body.append(nn.BatchNorm2d(8))
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.head(self.drop(self.body(x).mean((2, 3))))


def test_a_check_leaves_the_modules_training_mode_as_it_was(tmp_path, inputs):
    """A parity check inside a training loop compares in eval mode and gives the module back
    training (to_onnx, check_onnx and assert_parity left it in eval mode: no Dropout, frozen
    BatchNorm statistics for the rest of training); a submodule frozen in eval stays so."""
    from edgecnn.export import to_onnx
    from edgecnn.export.parity import assert_parity

    module = Dropping().train()
    module.body[0].eval()
    modes = {name: part.training for name, part in module.named_modules()}
    path = tmp_path / "net.onnx"
    onnx.save(to_onnx(module, torch.from_numpy(inputs[0])), path)
    assert {name: part.training for name, part in module.named_modules()} == modes
    assert check_onnx(module, path, inputs).passed
    assert {name: part.training for name, part in module.named_modules()} == modes
    assert_parity(module, path, inputs[0])
    assert {name: part.training for name, part in module.named_modules()} == modes


def test_inputs_are_checked_against_the_graph_in_the_apis_words(tmp_path, inputs):
    """One array is one batch (it was 'the truth value of an array ... is ambiguous'); a float64
    batch or one of another size is BadInput naming the input (were torch's and
    onnxruntime's own errors)."""
    module = SmallNet().eval()
    path = tmp_path / "net.onnx"
    export_dynamo(module, path, (torch.randn(2, 3, 16, 16),))
    assert check_onnx(module, path, inputs[0]).passed
    assert check_onnx(module, path, torch.from_numpy(inputs[0])).passed
    with pytest.raises(BadInput, match=r"^inputs: input '\w+': expected float32 .*, got float64"):
        check_onnx(module, path, [inputs[0].astype(np.float64)])
    with pytest.raises(BadInput, match=r"^inputs: input '\w+': expected float32 .*, got "
                                       r"float32 \[2, 3, 16, 8\]"):
        check_onnx(module, path, [inputs[0][..., :8]])


def test_an_int8_file_that_fails_on_check_inputs_says_why(tmp_path):
    """int8 calibrated on 0..0.1 data passes quantize's comparison on that data and fails check's
    standard-normal inputs: the report says so and how to compare on real inputs (it asked
    whether the file had the same --seed/--weights, which a module passed in does not have)."""
    from edgecnn.export import quantize_model, to_onnx

    module = TinyClassifier().eval()
    source, int8 = tmp_path / "tiny.onnx", tmp_path / "tiny_int8.onnx"
    onnx.save(to_onnx(module, torch.randn(2, 3, 32, 32)), source)
    narrow = (np.random.default_rng(0).random((32, 3, 32, 32)) * 0.1).astype(np.float32)
    assert quantize_model(source, int8, calibration=narrow).verdict.passed
    report = check_parity(module, int8)
    assert not report.passed
    # images need the preprocessing the file does not carry: annotate first
    assert any("standard-normal inputs" in note and "`edgecnn annotate`" in note
               and "images=" in note for note in report.notes), report.notes
    assert not any("--seed" in note for note in report.notes), report.notes
