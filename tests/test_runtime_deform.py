"""Engine on models with the ai.edgecnn::DeformConv2d custom op (docs/deform_conv.md).

When the installed onnxruntime lacks a DeformConv kernel, the Engine swaps the function body to
the decomposed lowering at load time. The probe is monkeypatched to False here, so the swap is
tested on an onnxruntime that does have the kernel, against that kernel's output.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.export.parity import compare
from edgecnn.runtime import Engine, InputInfo, ModelMetadata, deform
from edgecnn.runtime.metadata import METADATA_KEY
from edgecnn.runtime.session import load_session


@pytest.fixture(scope="module")
def deform_model(tmp_path_factory):
    """input (N, 4, 7, 7) -> DeformConv2d 3x3, stride 1, pad 1, group 2, offset_group 2, with
    fixed fractional offsets, a DCNv2 mask and a bias -> (N, 6, 7, 7)."""
    rng = np.random.default_rng(0)
    offsets = (rng.standard_normal((1, 2 * 2 * 9, 7, 7)) * 1.5).astype(np.float32)
    mask = rng.uniform(0.1, 1.0, (1, 2 * 9, 7, 7)).astype(np.float32)
    initializers = [numpy_helper.from_array(rng.standard_normal((6, 2, 3, 3)).astype(np.float32), "W"),
                    numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "B"),
                    numpy_helper.from_array(offsets, "offset"), numpy_helper.from_array(mask, "mask")]
    node = helper.make_node(deform.OP_TYPE, ["input", "W", "offset", "B", "mask"], ["logits"],
                            domain=deform.DOMAIN, strides=[1, 1], pads=[1, 1, 1, 1],
                            dilations=[1, 1], group=2, offset_group=2)
    graph = helper.make_graph(
        [node], "deform", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 7, 7])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 6, 7, 7])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19),
                                                    helper.make_opsetid(deform.DOMAIN, 1)])
    model.ir_version = 9
    model.metadata_props.add(key=METADATA_KEY, value=ModelMetadata(
        model="deform_probe", task="segmentation", input=InputInfo(shape=[4, 7, 7], color="GRAY", mean=[0.5] * 4,
                                                   std=[0.25] * 4)).to_json())
    model = deform.set_deform_lowering(model, "native")
    path = tmp_path_factory.mktemp("deform") / "deform.onnx"
    onnx.save(model, str(path))
    return path


def optimized_ops(engine_factory, tmp_path) -> set[str]:
    """The op types of the graph onnxruntime actually runs (functions inlined)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    engine_factory(options)
    return {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}


def test_native_lowering_runs_on_the_deformconv_kernel(deform_model, tmp_path):
    if not deform.onnxruntime_has_deformconv():
        pytest.skip("this onnxruntime has no DeformConv kernel")
    engine = Engine(deform_model)
    assert not engine.deform_lowering_swapped
    assert "DeformConv" in optimized_ops(lambda o: Engine(deform_model, session_options=o), tmp_path)


def test_engine_swaps_to_decomposed_without_a_kernel(deform_model, tmp_path, monkeypatch):
    x = np.random.default_rng(1).standard_normal((1, 4, 7, 7)).astype(np.float32)
    native = Engine(deform_model).run(x)["logits"] if deform.onnxruntime_has_deformconv() else None
    monkeypatch.setattr(deform, "onnxruntime_has_deformconv", lambda: False)
    engine = Engine(deform_model)
    assert engine.deform_lowering_swapped
    ops = optimized_ops(lambda o: Engine(deform_model, session_options=o), tmp_path)
    assert "DeformConv" not in ops and "DeformConv2d" not in ops and "MatMul" in ops
    swapped = engine.run(x)["logits"]
    if native is None:
        pytest.skip("no native kernel to compare the decomposed lowering with")
    parity = compare(native, swapped)
    assert parity.rel_l2 <= 1e-5, parity
    assert np.abs(native).max() > 1  # a real output, not zeros


def test_load_session_swaps_without_a_kernel_too(deform_model, tmp_path, monkeypatch):
    """`edgecnn check` and the parity matrix load files with load_session, not the Engine: on an
    onnxruntime without a DeformConv kernel (onnxruntime-gpu 1.31) they get the decomposed
    lowering too."""
    monkeypatch.setattr(deform, "onnxruntime_has_deformconv", lambda: False)
    ops = optimized_ops(lambda o: load_session(deform_model, options=o), tmp_path)
    assert "DeformConv" not in ops and "DeformConv2d" not in ops and "MatMul" in ops


def test_swap_without_the_onnx_package_is_a_clear_error(deform_model, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(deform, "onnxruntime_has_deformconv", lambda: False)
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ValueError, match="install the onnx package"):
        Engine(deform_model)


def test_exported_dcn_resnet_swaps_and_matches(zoo_onnx, monkeypatch):
    """The exporter's own resnet18_dcn (shared with the zoo tests): same logits either way."""
    if not deform.onnxruntime_has_deformconv():
        pytest.skip("this onnxruntime has no DeformConv kernel to compare with")
    path = zoo_onnx("resnet18_dcn")
    engine = Engine(path, "cpu")  # on CUDA, TF32 alone would move the logits by ~1e-4
    height, width = engine.metadata.input.height_width
    x = np.random.default_rng(2).standard_normal((2, 3, height, width)).astype(np.float32)
    native = engine.run(x)["logits"]
    monkeypatch.setattr(deform, "onnxruntime_has_deformconv", lambda: False)
    swapped = Engine(path, "cpu")
    assert swapped.deform_lowering_swapped and not engine.deform_lowering_swapped
    parity = compare(native, swapped.run(x)["logits"])
    assert parity.rel_l2 <= 1e-5, parity
