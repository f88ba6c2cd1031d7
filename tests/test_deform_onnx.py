"""ai.edgecnn::DeformConv2d in ONNX: schema, the two function bodies, swapping lowerings.

One-node models (built in milliseconds) run in onnxruntime against the eager op; the function
bodies must serve any batch, any input size and any attribute values the node carries.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deform_helpers import custom_model, eager, random_case
from edgecnn.export.parity import compare
from edgecnn.runtime import InputInfo, ModelMetadata, deform, load_session
from edgecnn.runtime.metadata import METADATA_KEY

# Ops of the decomposed body: all run in onnxruntime 1.17 and import into TensorRT 8.6.
OLD_OPS = {"Constant", "Shape", "Gather", "Reshape", "Concat", "Squeeze", "Unsqueeze", "Range",
           "CastLike", "Add", "Sub", "Mul", "Div", "GridSample", "MatMul", "Identity",
           # the offset-size check, the clamping of far and NaN positions, float sampling:
           "Abs", "Min", "Max", "Equal", "Where", "Cast",
           "Slice"}  # an empty slice of the offset that pins Y's shape for shape inference

SETTINGS = [  # random_case options
    dict(),
    dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2), groups=2, offset_groups=2, channels=4),
    dict(kernel=(2, 3), stride=(2, 2), padding=(1, 0), dilation=(2, 1), groups=4, channels=4,
         out_channels=8, mask=False),
    dict(kernel=(1, 1), padding=(0, 0), offset_groups=4, bias=False),
]
LOWERINGS = [("native", 19), ("decomposed", 18), ("decomposed", 20)]  # GridSample mode renamed


@pytest.mark.parametrize("lowering,opset", LOWERINGS)
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_function_body_matches_eager_at_any_batch_and_size(setting, lowering, opset):
    rng = np.random.default_rng(setting)
    first = random_case(rng, **SETTINGS[setting])
    session = load_session(custom_model(first, lowering, opset).SerializeToString())
    for case in (first, random_case(rng, batch=3, size=(9, 5), **SETTINGS[setting])):
        result = session.run(None, case.feeds())[0]
        metrics = compare(eager(case), result)
        assert result.shape == eager(case).shape and metrics.rel_l2 <= 1e-6, metrics


def _function(model: onnx.ModelProto) -> onnx.FunctionProto:
    (function,) = [f for f in model.functions if (f.domain, f.name) == (deform.DOMAIN, deform.OP_TYPE)]
    return function


def test_function_bodies_reference_the_node_attributes():
    case = random_case(np.random.default_rng(0))
    native = _function(custom_model(case, "native", 19))
    (node,) = native.node
    assert node.op_type == "DeformConv" and list(node.input) == list(deform.INPUTS)
    assert {a.name: a.ref_attr_name for a in node.attribute} == {
        name: name for name in deform.ATTRIBUTE_DEFAULTS}
    for opset in (18, 21):
        decomposed = _function(custom_model(case, "decomposed", opset))
        ops = {n.op_type for n in decomposed.node}
        assert ops <= OLD_OPS and "GridSample" in ops and "MatMul" in ops
        references = {a.ref_attr_name for n in decomposed.node for a in n.attribute if a.ref_attr_name}
        assert references == set(deform.ATTRIBUTE_DEFAULTS)
        assert [(o.domain, o.version) for o in decomposed.opset_import] == [("", opset)]


def test_schema_checker_and_shape_inference():
    case = random_case(np.random.default_rng(1), batch=2, size=(8, 9), stride=(2, 1))
    model = custom_model(case, "decomposed", 18)
    assert onnx.defs.get_schema(deform.OP_TYPE, 1, deform.DOMAIN).domain == deform.DOMAIN
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    (output,) = inferred.graph.output
    dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
    assert dims == ["N", 6, "out_h", "out_w"]


def _two_call_site_model() -> tuple[onnx.ModelProto, callable]:
    """X -> DeformConv2d (bias, no mask, NO attributes: defaults) -> DeformConv2d (mask, no
    bias, stride 2): the decomposed body must serve both call sites. Returns model, reference."""
    rng = np.random.default_rng(2)
    first = random_case(rng, batch=1, channels=3, out_channels=4, size=(7, 7), padding=(0, 0),
                        mask=False)
    second = random_case(rng, batch=1, channels=4, out_channels=5, size=(5, 5), stride=(2, 2),
                         padding=(1, 1), bias=False, offset_groups=2)
    inits = [onnx.numpy_helper.from_array(a, n) for a, n in (
        (first.weight, "W1"), (first.bias, "B1"), (first.offset, "off1"), (second.weight, "W2"),
        (second.offset, "off2"), (second.mask, "mask2"))]
    nodes = [helper.make_node(deform.OP_TYPE, ["input", "W1", "off1", "B1"], ["hidden"],
                              domain=deform.DOMAIN, name="first"),
             helper.make_node(deform.OP_TYPE, ["hidden", "W2", "off2", "", "mask2"], ["out"],
                              domain=deform.DOMAIN, **second.attributes())]
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 7, 7])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5, 3, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19),
                                                    helper.make_opsetid(deform.DOMAIN, 1)])
    model.ir_version = 9  # opset 19's, which older onnxruntimes read
    model.metadata_props.add(key=METADATA_KEY, value=ModelMetadata(
        model="two", task="classification", input=InputInfo(shape=[3, 7, 7])).to_json())

    def reference(x):
        first.x = x
        second.x = eager(first)
        return eager(second)

    return model, reference


def test_set_deform_lowering_swaps_bodies_for_mixed_call_sites():
    model, reference = _two_call_site_model()
    x = np.random.default_rng(3).standard_normal((1, 3, 7, 7)).astype(np.float32)
    expected = reference(x)
    for lowering in ("decomposed", "native", "decomposed"):
        deform.set_deform_lowering(model, lowering)
        onnx.checker.check_model(model)
        assert deform.model_lowering(model) == lowering and len(model.functions) == 1
        meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
        assert meta.deform_lowering == lowering
        result = load_session(model.SerializeToString()).run(None, {"input": x})[0]
        assert compare(expected, result).rel_l2 <= 1e-6, lowering
    first = next(n for n in model.graph.node if n.name == "first")
    assert {a.name: helper.get_attribute_value(a) for a in first.attribute} == deform.ATTRIBUTE_DEFAULTS


def test_lowering_errors_and_models_without_the_op():
    case = random_case(np.random.default_rng(4))
    with pytest.raises(ValueError, match="opset >= 19"):
        custom_model(case, "native", 18)
    with pytest.raises(ValueError, match="opset >= 19"):
        deform.deform_function("native", 18)
    with pytest.raises(ValueError, match="native, decomposed"):
        deform.set_deform_lowering(onnx.ModelProto(), "fast")
    plain = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    before = plain.SerializeToString()
    assert deform.set_deform_lowering(plain, "decomposed").SerializeToString() == before
    assert deform.model_lowering(plain) is None


def test_onnxruntime_probe_finds_the_deformconv_kernel():
    """onnxruntime >= 1.32 (our dependency; the kernel exists since 1.25) has the kernel; the
    probe runs once, cached."""
    deform.onnxruntime_has_deformconv.cache_clear()
    assert deform.onnxruntime_has_deformconv() is True
    assert deform.onnxruntime_has_deformconv.cache_info().currsize == 1


def test_probe_bytes_are_the_one_node_deformconv_model():
    """The probe is stored serialized so the torch-free runtime needs no onnx to build it."""
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in
              (("X", [1, 1, 1, 1]), ("W", [1, 1, 1, 1]), ("offset", [1, 2, 1, 1]))]
    graph = helper.make_graph(
        [helper.make_node("DeformConv", ["X", "W", "offset"], ["Y"])], "probe", values,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", deform.NATIVE_MIN_OPSET)])
    model.ir_version = 9  # opset 19's IR version
    onnx.checker.check_model(model, full_check=True)
    assert model.SerializeToString() == deform.DEFORMCONV_PROBE


def test_runtime_deform_never_imports_torch():
    code = ("import sys; from edgecnn.runtime import deform; deform.register_schema(); "
            "deform.deform_function('decomposed'); assert deform.onnxruntime_has_deformconv(); "
            "print('torch' in sys.modules, 'edgecnn.export' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
