"""Deformable-convolution hardening: reference evaluation, non-finite and far offsets, shape and
dtype checks of the decomposed body, onnxruntime's tools, TorchScript and FX, BatchNorm folding.

The ONNX files are small exports (deform_testnet at 16 px, resnet18_dcn at 32 px), made once per
module in both lowerings.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops import op_deform_conv

from deform_helpers import bare_model, custom_model, eager, random_case, standard_model
from edgecnn.export.deform import fold_batchnorm_into_deform
from edgecnn.export.build import build_model, random_input
from edgecnn.export.parity import compare
from edgecnn.ops import DeformConv2d, deform_conv2d
from edgecnn.runtime import deform, load_session

SIZES = {"deform_testnet": 16, "resnet18_dcn": 32}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(name, lowering) -> Path``: a small export by the real `edgecnn export` entry
    point (seed 0, no parity check: the tests compare with eager themselves), once per module."""
    from edgecnn.cli import main

    directory = tmp_path_factory.mktemp("deform_hardening")
    files = {}

    def export(name: str, lowering: str):
        if (name, lowering) not in files:
            path = directory / f"{name}_{lowering}.onnx"
            code = main(["export", name, "-o", str(path), "--input-size", str(SIZES[name]),
                         "--deform-lowering", lowering, "--no-check"])
            assert code == 0, (name, lowering)
            files[name, lowering] = path
        return files[name, lowering]

    return export


def _eager(name: str, batch: int = 1, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(input, eager output) of the seed-0 model the exports were made from."""
    x = random_input((batch, 3, SIZES[name], SIZES[name]), seed)
    with torch.no_grad():
        return x.numpy(), build_model(name, seed=0)(x).numpy()


# ---- 19: native call sites carry all five inputs ---------------------------------------------

class DeformConv(op_deform_conv.DeformConv):
    """onnx.reference's DeformConv in vectorised numpy (the shipped one runs one GridSample per
    output pixel and channel pair: about an hour for resnet18_dcn at 32 px)."""

    def _run(self, X, W, offset, B=None, mask=None, dilations=None, group=None,
             kernel_shape=None, offset_group=None, pads=None, strides=None):
        (batch, channels, height, width), (out_channels, group_channels, kh, kw) = X.shape, W.shape
        groups, offset_groups = group or 1, offset_group or 1
        (stride_h, stride_w), (dilation_h, dilation_w) = strides or (1, 1), dilations or (1, 1)
        out_h, out_w = offset.shape[2:]
        offset = offset.reshape(batch, offset_groups, kh, kw, 2, out_h, out_w)
        taps_y = np.arange(kh)[:, None, None, None] * dilation_h - (pads or [0] * 4)[0]
        taps_x = np.arange(kw)[None, :, None, None] * dilation_w - (pads or [0] * 4)[1]
        y = offset[:, :, :, :, 0] + taps_y + np.arange(out_h)[:, None] * stride_h
        x = offset[:, :, :, :, 1] + taps_x + np.arange(out_w) * stride_w  # (N, G, kh, kw, oh, ow)
        planes = X.reshape(batch, offset_groups, channels // offset_groups, height, width)
        images = np.arange(batch)[:, None, None, None, None, None]
        plane = np.arange(offset_groups)[None, :, None, None, None, None]
        columns = 0
        for corner_y, corner_x in ((0, 0), (0, 1), (1, 0), (1, 1)):
            row, column = np.floor(y) + corner_y, np.floor(x) + corner_x
            weight = (1 - np.abs(y - row)) * (1 - np.abs(x - column))
            inside = (row >= 0) & (row < height) & (column >= 0) & (column < width)
            values = planes[images, plane, :, np.clip(row, 0, height - 1).astype(int),
                            np.clip(column, 0, width - 1).astype(int)]
            columns = columns + values * np.where(inside, weight, 0)[..., None]
        if mask is not None:
            columns = columns * mask.reshape(batch, offset_groups, kh, kw, out_h, out_w, 1)
        # (N, G, kh, kw, oh, ow, C/G) -> (N, conv groups, C/groups * kh * kw, oh * ow)
        columns = columns.transpose(0, 1, 6, 2, 3, 4, 5).reshape(
            batch, groups, group_channels * kh * kw, out_h * out_w)
        kernels = W.reshape(groups, out_channels // groups, group_channels * kh * kw)
        out = np.matmul(kernels, columns).reshape(batch, out_channels, out_h, out_w)
        return ((out if B is None else out + B.reshape(1, -1, 1, 1)).astype(X.dtype),)


def test_vectorised_reference_deformconv_matches_onnx_reference():
    case = random_case(np.random.default_rng(9), batch=1, channels=4, out_channels=4, size=(4, 5),
                       groups=2, offset_groups=2, stride=(2, 1), dilation=(1, 2), padding=(1, 2))
    model = standard_model(case)
    expected = ReferenceEvaluator(model).run(None, case.feeds())[0]
    result = ReferenceEvaluator(model, new_ops=[DeformConv]).run(None, case.feeds())[0]
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def reference_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """``model`` in onnx.reference, with the vectorised DeformConv inside its functions too
    (ReferenceEvaluator(model, new_ops=...) builds the model's functions without new_ops). The
    functions are still called as the model calls them, so a call with fewer inputs than the
    function declares fails as it does in ReferenceEvaluator(model)."""
    functions = [ReferenceEvaluator(function, new_ops=[DeformConv]) for function in model.functions]
    opsets = {entry.domain: entry.version for entry in model.opset_import}
    evaluator = ReferenceEvaluator(model.graph, opsets=opsets, functions=functions,
                                   new_ops=[DeformConv])
    return evaluator.run(None, feeds)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_native_files_run_in_the_onnx_reference_evaluator(exported, name):
    model = onnx.load(str(exported(name, "native")))
    assert all(len(node.input) == len(deform.INPUTS) for node in deform.call_sites(model))
    x, expected = _eager(name)
    result = reference_run(model, {"input": x})[0]
    assert compare(expected, result).rel_l2 <= 1e-5


# ---- 20: the decomposed body's edge cases ------------------------------------------------------

LOWERINGS = [("native", 19), ("decomposed", 18), ("decomposed", 20)]


@pytest.mark.parametrize("value", [1e19, -1e19, 3e38, np.inf, -np.inf, np.nan])
def test_far_and_non_finite_offsets_agree_in_eager_and_both_lowerings(value):
    """A sampling position at +-inf, beyond the image or NaN reads zeros, as in onnxruntime's
    DeformConv kernel: every (dy or dx) such offset zeroes its tap at that position."""
    case = random_case(np.random.default_rng(5), far=False)
    case.offset[0, 0, 1, 1] = case.offset[1, 3, 2, 2] = case.offset[1, 16, 0, 3] = value
    expected = eager(case)
    assert np.isfinite(expected).all()
    stand_in = random_case(np.random.default_rng(5), far=False)  # the same taps 1e4 px away
    stand_in.offset[0, 0, 1, 1] = stand_in.offset[1, 3, 2, 2] = stand_in.offset[1, 16, 0, 3] = -1e4
    assert compare(eager(stand_in), expected).rel_l2 <= 1e-6
    for lowering, opset in LOWERINGS:
        session = load_session(custom_model(case, lowering, opset).SerializeToString())
        metrics = compare(expected, session.run(None, case.feeds())[0])
        assert metrics.rel_l2 <= 1e-6, (lowering, opset, metrics)


@pytest.mark.parametrize("shape", [(5, 7), (6, 6), (7, 6), (1, 7)])
def test_decomposed_body_rejects_offsets_of_another_spatial_size(shape):
    """The output is 6x7: an offset (and mask) of any other size fails, as in the native kernel."""
    case = random_case(np.random.default_rng(6), far=False)
    assert case.offset.shape[2:] == (6, 7)
    rng = np.random.default_rng(7)
    feeds = dict(case.feeds(), offset=rng.standard_normal((2, 18, *shape)).astype(np.float32),
                 mask=rng.uniform(0, 1, (2, 9, *shape)).astype(np.float32))
    for lowering, opset in LOWERINGS:
        session = load_session(custom_model(case, lowering, opset).SerializeToString())
        with pytest.raises(Exception, match="offset|Offset"):
            session.run(None, feeds)


@pytest.mark.parametrize("opset", [18, 19, 20])
def test_double_precision_runs_in_the_decomposed_body_at_every_opset(opset):
    """The schema lists tensor(double); onnxruntime's GridSample-16 has float kernels only."""
    case = random_case(np.random.default_rng(8), dtype=np.float64)
    model = custom_model(case, "decomposed", opset)
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.DOUBLE
    onnx.checker.check_model(model, full_check=True)
    result = load_session(model.SerializeToString()).run(None, case.feeds())[0]
    assert result.dtype == np.float64
    # Below opset 20 the sampling runs in float32 (see _deform_decomposed).
    assert compare(eager(case), result).rel_l2 <= (1e-6 if opset < 20 else 1e-12)


# ---- 21: onnxruntime's tools on decomposed files ---------------------------------------------

@pytest.mark.parametrize("name", sorted(SIZES))
def test_onnxruntime_shape_tools_accept_decomposed_files(exported, name, tmp_path):
    """symbolic_shape_infer and quant_pre_process run in a fresh process (without edgecnn's
    schema, as users run them); the preprocessed file still computes the model."""
    source = exported(name, "decomposed")
    tools = {"symbolic.onnx": "onnxruntime.tools.symbolic_shape_infer",
             "preprocessed.onnx": "onnxruntime.quantization.preprocess"}
    for output, module in tools.items():
        done = subprocess.run([sys.executable, "-m", module, "--input", str(source), "--output",
                               str(tmp_path / output)], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)  # a failure leaves a file in cwd
        assert done.returncode == 0, (module, done.stderr[-2000:])
    x, expected = _eager(name, batch=2)
    for output in tools:
        result = load_session(str(tmp_path / output)).run(None, {"input": x})[0]
        assert compare(expected, result).rel_l2 <= 1e-5, output


# ---- 22: TorchScript and FX ------------------------------------------------------------------

MODULES = [dict(modulated=False, bias=True), dict(modulated=True, bias=False, groups=2,
                                                   offset_groups=2, stride=(2, 1), dilation=2)]


def _module(options: dict) -> DeformConv2d:
    torch.manual_seed(0)
    module = DeformConv2d(4, 6, 3, padding=1, **options).eval()
    with torch.no_grad():  # non-zero offsets, so that the deformation is exercised
        module.conv_offset.bias.normal_()
        module.conv_offset.weight.normal_(std=0.1)
    return module


@pytest.mark.parametrize("options", MODULES)
def test_module_scripts_and_saves_with_torch_jit(options, tmp_path):
    module = _module(options)
    x = torch.randn(2, 4, 9, 8)
    scripted = torch.jit.script(module)
    torch.jit.save(scripted, str(tmp_path / "deform.pt"))
    loaded = torch.jit.load(str(tmp_path / "deform.pt"))
    with torch.no_grad():
        expected = module(x)
        torch.testing.assert_close(scripted(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)


def test_functions_calling_deform_conv2d_script_and_check_shapes():
    def padded(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, offset, weight, padding=1, stride=(1, 1), dilation=[1, 1])

    scripted = torch.jit.script(padded)
    x, offset, weight = torch.randn(2, 4, 6, 7), torch.randn(2, 18, 6, 7), torch.randn(3, 4, 3, 3)
    torch.testing.assert_close(scripted(x, offset, weight), padded(x, offset, weight))
    with pytest.raises(Exception, match=r"offset must have shape .*\(2, 18, 6, 7\)"):
        scripted(x, offset[:, :, 1:], weight)


@pytest.mark.parametrize("options", MODULES)
def test_module_traces_with_torch_fx_as_one_call(options):
    module = _module(options)
    traced = torch.fx.symbolic_trace(module)
    calls = [node for node in traced.graph.nodes if node.target is deform_conv2d]
    assert len(calls) == 1
    x = torch.randn(2, 4, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), module(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="offset must have shape"):  # still checked when run
        torch.fx.symbolic_trace(lambda x, o, w: deform_conv2d(x, o, w))(
            x, torch.zeros(2, 18, 9, 8), torch.randn(6, 4, 3, 3))


def test_fx_graph_mode_quantization_prepares_and_converts_a_deformable_model():
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = build_model("deform_testnet", seed=0)
    x = random_input((2, 3, 16, 16), 1)
    with torch.no_grad():
        expected = model(x)
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (x,))
        prepared(x)
        quantized = convert_fx(prepared)(x)
    assert compare(expected.numpy(), quantized.numpy()).rel_l2 <= 0.1  # int8 parity bound


def test_offset_group_error_names_the_valid_offset_shapes():
    """54 offset channels of a 3x3 kernel are 3 offset groups, which do not divide 4 channels."""
    with pytest.raises(ValueError) as error:
        deform_conv2d(torch.randn(2, 4, 6, 7), torch.randn(2, 54, 6, 7), torch.randn(6, 4, 3, 3),
                      padding=1)
    message = str(error.value)
    assert "got (2, 54, 6, 7)" in message and "offset_groups 3" in message
    assert "(2, 54, 6, 7) with" not in message and "= (2, 54, 6, 7)" not in message
    for channels in (18, 36, 72):  # offset groups 1, 2, 4
        assert f"(2, {channels}, 6, 7)" in message


# ---- 24: BatchNorm folded into the deformable convs ------------------------------------------

@pytest.mark.parametrize("lowering", ["native", "decomposed"])
def test_exported_deformable_resnet_has_its_batchnorms_folded(exported, lowering):
    """The 8 BatchNorms after resnet18_dcn's deformable convs are folded at export, before the
    lowering: every call site has a real bias (no zero bias computed in the graph)."""
    path = exported("resnet18_dcn", lowering)
    model = onnx.load(str(path))
    assert not any(node.op_type in ("BatchNormalization", "ConstantOfShape")
                   for node in model.graph.node)
    sites = deform.call_sites(model)
    constants = {init.name for init in model.graph.initializer}
    assert len(sites) == 8 and all(node.input[3] in constants for node in sites)
    assert deform.model_lowering(model) == lowering
    onnx.checker.check_model(str(path), full_check=True)
    x, expected = _eager("resnet18_dcn", batch=2)
    assert compare(expected, load_session(str(path)).run(None, {"input": x})[0]).rel_l2 <= 1e-5
    assert fold_batchnorm_into_deform(model) == 0  # nothing left to fold


def _with_batchnorm(case, opset: int, lowering: str | None = None) -> onnx.ModelProto:
    """``bare_model(case)`` with W and B as initializers and Y = BatchNormalization(conv) (random
    non-trivial statistics), then the ``lowering`` if given."""
    model = bare_model(case, opset)
    graph, rng = model.graph, np.random.default_rng(0)
    weights = {"W": case.weight, "B": case.bias}
    kept = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)
    channels = case.weight.shape[0]
    stats = {"scale": rng.uniform(0.5, 2.0, channels), "beta": rng.standard_normal(channels),
             "mean": rng.standard_normal(channels), "var": rng.uniform(0.05, 3.0, channels)}
    graph.initializer.extend(numpy_helper.from_array(np.asarray(value, np.float32), name)
                             for name, value in {**weights, **stats}.items() if value is not None)
    graph.node[0].output[0] = "conv"
    graph.node.append(onnx.helper.make_node("BatchNormalization", ["conv", *stats], ["Y"],
                                            epsilon=1e-3))
    return deform.set_deform_lowering(model, lowering) if lowering else model


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    inputs = {value.name for value in model.graph.input}
    return load_session(model.SerializeToString()).run(
        None, {name: value for name, value in feeds.items() if name in inputs})


BODIES = [("native", 19), ("decomposed", 18)]


@pytest.mark.parametrize("lowered", [False, True], ids=["unlowered", "lowered"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lowering, opset", BODIES)
def test_fold_batchnorm_into_deform_is_exact(lowering, opset, bias, lowered):
    """Before the lowering, as the exporter folds, and on a model that has one: its body is then
    rebuilt for the folded bias (a decomposed body built without one would ignore it), and a
    zero bias computed in the graph for the decomposed body goes."""
    case = random_case(np.random.default_rng(11), bias=bias, mask=not bias)
    model = _with_batchnorm(case, opset, lowering if lowered else None)
    reference = deform.set_deform_lowering(onnx.ModelProto.FromString(
        model.SerializeToString()), lowering)
    expected = _run(reference, case.feeds())[0]
    assert fold_batchnorm_into_deform(model) == 1
    assert [node.op_type for node in model.graph.node] == [deform.OP_TYPE]
    assert {init.name for init in model.graph.initializer} == {"W", "B" if bias else "W_bias"}
    if not lowered:
        deform.set_deform_lowering(model, lowering)
    assert [node.op_type for node in model.graph.node] == [deform.OP_TYPE]
    assert deform.model_lowering(model) == lowering
    onnx.checker.check_model(model, full_check=True)
    result = _run(model, case.feeds())[0]
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    assert compare(expected, result).rel_l2 <= 1e-6
    assert fold_batchnorm_into_deform(model) == 0


def _output(name: str) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 6, "out_h", "out_w"])


def _read_twice(model: onnx.ModelProto) -> None:
    """The conv output is also read by a Relu, a second graph output."""
    model.graph.node.append(onnx.helper.make_node("Relu", ["conv"], ["relu"]))
    model.graph.output.append(_output("relu"))


def _graph_output(model: onnx.ModelProto) -> None:
    model.graph.output.append(_output("conv"))


def _statistics_as_input(model: onnx.ModelProto) -> None:
    """The mean is a graph input (older exporters list initializers so: overridable)."""
    model.graph.input.append(onnx.helper.make_tensor_value_info("mean", TensorProto.FLOAT, [6]))


def _training_mode(model: onnx.ModelProto) -> None:
    """The BatchNorm normalises with the batch's statistics (and outputs the running ones)."""
    model.graph.node[-1].attribute.append(onnx.helper.make_attribute("training_mode", 1))
    model.graph.node[-1].output.extend(["running_mean", "running_var"])


@pytest.mark.parametrize("change", [_read_twice, _graph_output, _statistics_as_input,
                                    _training_mode])
@pytest.mark.parametrize("lowering, opset", BODIES)
def test_batchnorm_that_cannot_be_folded_stays(lowering, opset, change):
    case = random_case(np.random.default_rng(12))
    model = _with_batchnorm(case, opset, lowering)
    change(model)
    before = model.SerializeToString()
    expected = _run(model, case.feeds())
    assert fold_batchnorm_into_deform(model) == 0
    assert model.SerializeToString() == before
    for result, reference in zip(_run(model, case.feeds()), expected):
        np.testing.assert_array_equal(result, reference)


def test_fold_copies_a_weight_that_another_call_site_reads():
    """Two call sites share W; only the first is followed by a BatchNorm. The second still
    reads the original W, the first its folded copy."""
    case = random_case(np.random.default_rng(14), bias=False, mask=False)
    model = _with_batchnorm(case, 18)
    second = onnx.NodeProto()
    second.CopyFrom(model.graph.node[0])
    second.output[0] = "Y2"
    model.graph.node.insert(0, second)
    model.graph.output.append(_output("Y2"))
    deform.set_deform_lowering(model, "decomposed")
    expected = _run(model, case.feeds())
    assert fold_batchnorm_into_deform(model) == 1
    assert sorted(init.name for init in model.graph.initializer) == ["W", "W_bias", "W_bn_folded"]
    assert len(deform.call_sites(model)) == 2
    onnx.checker.check_model(model, full_check=True)
    result = _run(model, case.feeds())
    weight = next(init for init in model.graph.initializer if init.name == "W")
    np.testing.assert_array_equal(numpy_helper.to_array(weight), case.weight)
    assert compare(expected[0], result[0]).rel_l2 <= 1e-6
    np.testing.assert_array_equal(result[1], expected[1])  # the other call site: untouched
