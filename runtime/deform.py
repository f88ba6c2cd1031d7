"""The ONNX side of the deformable convolution: ai.edgecnn::DeformConv2d. Torch-free.

Each deformable convolution of an exported model is ONE node ``DeformConv2d`` of domain
``ai.edgecnn`` (version 1) with ONNX DeformConv's inputs ``X, W, offset, B?, mask?`` and
attributes ``strides, pads, dilations, group, offset_group``. The model carries a FunctionProto
for it, so a stock onnxruntime runs it without any plugin, in one of two lowerings:

- ``native``: the body is the standard ONNX ``DeformConv`` (opset 19+; onnxruntime >= 1.25 has
  a CPU kernel and 1.31's CUDA provider one, TensorRT parses it since 10.1);
- ``decomposed``: a body of older ops only (GridSample + MatMul, see ``_deform_decomposed``) for
  runtimes without a DeformConv kernel (onnxruntime 1.17, TensorRT 8.6).

The bodies read every hyper-parameter from the calling node (attribute references), so one
function serves all call sites. A runtime can switch a loaded model's lowering with
``set_deform_lowering(model, "decomposed")`` when ``onnxruntime_has_deformconv()`` is False.

The onnx package is imported inside the functions that need it, never at module import, and
nothing here imports torch.
"""

from __future__ import annotations

import functools

from edgecnn.errors import BadInput
from edgecnn.runtime.metadata import LOWERINGS, METADATA_KEY, ModelMetadata

DOMAIN = "ai.edgecnn"
OP_TYPE = "DeformConv2d"
VERSION = 1
DEFAULT_LOWERING = "native"
NATIVE_MIN_OPSET = 19  # ONNX DeformConv exists from opset 19
INPUTS = ("X", "W", "offset", "B", "mask")
# The node's attributes and their defaults (ONNX DeformConv's, for 2-D convolutions).
ATTRIBUTE_DEFAULTS = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1],
                      "group": 1, "offset_group": 1}
_BIAS, _MASK = INPUTS.index("B"), INPUTS.index("mask")


def check_lowering(lowering: str) -> None:
    if lowering not in LOWERINGS:
        raise BadInput(f"deform_lowering must be one of {', '.join(LOWERINGS)}, got {lowering!r}")


def _infer_output(ctx) -> None:
    """Y: X's element type, shape (N, out_channels, out_h, out_w) from X, W and offset."""
    import onnx

    shapes = [ctx.get_input_type(i).tensor_type for i in range(3)]
    output = onnx.helper.make_tensor_type_proto(shapes[0].elem_type, None)
    if all(shape.HasField("shape") for shape in shapes):
        for i, axis in [(0, 0), (1, 0), (2, 2), (2, 3)]:  # (input, axis) of N, O, out_h, out_w
            output.tensor_type.shape.dim.add().CopyFrom(shapes[i].shape.dim[axis])
    ctx.set_output_type(0, output)


@functools.cache
def register_schema() -> None:
    """Register the OpSchema with onnx.defs (idempotent) so checker and shape inference accept it."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has(OP_TYPE, VERSION, DOMAIN):
        return
    optional = OpSchema.FormalParameterOption.Optional
    descriptions = {"X": "input (N, C, H, W)", "W": "weight (O, C/group, kh, kw)",
                    "offset": "(dy, dx) per tap: (N, 2*offset_group*kh*kw, out_h, out_w)",
                    "B": "bias (O)", "mask": "modulation (N, offset_group*kh*kw, out_h, out_w)"}
    inputs = [OpSchema.FormalParameter(name, "T", descriptions[name],
                                       **({"param_option": optional} if name in ("B", "mask") else {}))
              for name in INPUTS]
    attributes = [OpSchema.Attribute(name, onnx.helper.make_attribute(name, default), name)
                  for name, default in ATTRIBUTE_DEFAULTS.items()]
    schema = OpSchema(
        OP_TYPE, DOMAIN, VERSION,
        "Deformable convolution (DCN v1, v2 with mask), ONNX DeformConv semantics for 2-D inputs.",
        inputs=inputs, outputs=[OpSchema.FormalParameter("Y", "T", "(N, O, out_h, out_w)")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(double)",
                                 "tensor(bfloat16)"], "floating-point tensors")],
        attributes=attributes)
    if hasattr(schema, "set_type_and_shape_inference_function"):
        schema.set_type_and_shape_inference_function(_infer_output)
    onnx.defs.register_schema(schema)


def deform_function(lowering: str = DEFAULT_LOWERING, opset: int | None = None, *,
                    modulated: bool = True, with_bias: bool = True):
    """The FunctionProto ai.edgecnn::DeformConv2d with the ``lowering`` body.

    ``opset`` is the default-domain opset the body imports (the model's; native needs >= 19).
    The native body passes B and mask through (missing inputs stay missing). The decomposed
    body has no optional inputs, so it is built for call sites with (``modulated``) or without
    a mask and with (``with_bias``) or without a bias; ``set_deform_lowering`` picks these from
    the model and materialises a missing input at any call site that lacks it.
    """
    import onnx
    from onnx import helper

    from edgecnn.runtime._deform_decomposed import build_decomposed_body

    check_lowering(lowering)
    if lowering == "native":
        opset = NATIVE_MIN_OPSET if opset is None else opset
        if opset < NATIVE_MIN_OPSET:
            raise ValueError(f"the native DeformConv lowering needs opset >= {NATIVE_MIN_OPSET}, "
                             f"got {opset}")
        node = helper.make_node("DeformConv", list(INPUTS), ["Y"])
        for name, default in ATTRIBUTE_DEFAULTS.items():
            kind = helper.make_attribute(name, default).type
            node.attribute.append(helper.make_attribute_ref(name, kind, ref_attr_name=name))
        nodes = [node]
    else:
        opset = 18 if opset is None else opset
        nodes = build_decomposed_body(onnx, modulated=modulated, with_bias=with_bias,
                                      opset=opset)
    return helper.make_function(
        DOMAIN, OP_TYPE, list(INPUTS), ["Y"], nodes, [helper.make_opsetid("", opset)],
        attributes=list(ATTRIBUTE_DEFAULTS),
        doc_string=f"edgecnn deformable convolution, lowering={lowering}")


def graphs(graph):
    """``graph`` and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from graphs(sub)


def call_sites(model) -> list:
    """The ai.edgecnn::DeformConv2d nodes of ``model`` (main graph and subgraphs)."""
    return [node for graph in graphs(model.graph) for node in graph.node
            if node.domain == DOMAIN and node.op_type == OP_TYPE]


def _has_input(node, index: int) -> bool:
    return len(node.input) > index and node.input[index] != ""


def _normalize_call_site(node, helper) -> None:
    """Write all five inputs ("" for an absent one: the function has five, and onnx.reference
    refuses a call with fewer) and every attribute (the bodies reference them, defaults too)."""
    while len(node.input) < len(INPUTS):
        node.input.append("")
    present = {attribute.name for attribute in node.attribute}
    for name, default in ATTRIBUTE_DEFAULTS.items():
        if name not in present:
            node.attribute.append(helper.make_attribute(name, default))


def _materialize_inputs(graph, node, helper, need_bias: bool, need_mask: bool) -> None:
    """Give a call site the zero bias / unit mask the decomposed body was built to read."""
    prefix = f"{node.name or node.output[0]}_deform"
    new_nodes = []

    def add(op_type, inputs, **attributes):
        output = f"{prefix}_{op_type}{len(new_nodes)}"
        new_nodes.append(helper.make_node(op_type, inputs, [output], **attributes))
        return output

    def constant(*values):  # a tensor, not value_ints: onnxruntime's symbolic_shape_infer reads
        return add("Constant", [], value=helper.make_tensor("value", 7, [len(values)], values))

    if need_bias and not _has_input(node, _BIAS):  # zeros of shape (out_channels,), X's type
        out_channels = add("Shape", [node.input[1]], start=0, end=1)
        node.input[_BIAS] = add("CastLike", [add("ConstantOfShape", [out_channels]), node.input[0]])
    if need_mask and not _has_input(node, _MASK):  # ones of shape (N, offset channels / 2, h, w)
        shape = add("Shape", [node.input[2]])
        half = add("Div", [add("Gather", [shape, constant(1)]), constant(2)])
        mask_shape = add("Concat", [add("Gather", [shape, constant(0)]), half,
                                    add("Gather", [shape, constant(2, 3)])], axis=0)
        one = helper.make_tensor("one", 1, [1], [1.0])  # float32; CastLike follows X
        node.input[_MASK] = add("CastLike", [add("ConstantOfShape", [mask_shape], value=one),
                                             node.input[0]])
    position = list(graph.node).index(node)
    for offset, new_node in enumerate(new_nodes):
        graph.node.insert(position + offset, new_node)


def set_deform_lowering(model, lowering: str):
    """Give ``model`` (an onnx.ModelProto, changed in place and returned) the ``lowering`` body.

    Replaces the model's ai.edgecnn::DeformConv2d FunctionProto, writes every call site's
    attributes explicitly, imports the ai.edgecnn domain, and records the lowering in the
    edgecnn metadata (``deform_lowering``). A model without the op is returned unchanged.
    The native lowering needs the model's default opset >= 19 (ValueError otherwise). For the
    decomposed body, call sites lacking a bias, or a mask that other call sites have, get a zero
    bias / unit mask computed in the graph (see ``deform_function``); they keep it afterwards.
    Used by the exporter, and by the runtime Engine to switch to ``decomposed`` when
    ``onnxruntime_has_deformconv()`` is False.
    """
    from onnx import helper

    from edgecnn.runtime.onnx_file import opset_version

    check_lowering(lowering)
    sites = call_sites(model)
    if not sites:
        return model
    opset = opset_version(model) or 0
    if lowering == "native" and opset < NATIVE_MIN_OPSET:
        raise ValueError(f"the native DeformConv lowering needs opset >= {NATIVE_MIN_OPSET}; "
                         f"this model imports opset {opset} (use the decomposed lowering)")
    register_schema()
    for node in sites:
        _normalize_call_site(node, helper)
    modulated = any(_has_input(node, _MASK) for node in sites)
    # The decomposed body always reads a bias: its shape is what tells onnx's shape inference
    # (and so onnxruntime's symbolic_shape_infer) the output channels (see _deform_decomposed).
    with_bias = lowering == "decomposed" or any(_has_input(node, _BIAS) for node in sites)
    if lowering == "decomposed":
        for graph in graphs(model.graph):
            for node in [n for n in graph.node if n in sites]:
                _materialize_inputs(graph, node, helper, with_bias, modulated)
    function = deform_function(lowering, opset, modulated=modulated, with_bias=with_bias)
    for index in reversed(range(len(model.functions))):  # the previous body, if any
        if (model.functions[index].domain, model.functions[index].name) == (DOMAIN, OP_TYPE):
            del model.functions[index]
    model.functions.append(function)
    if not any(imp.domain == DOMAIN for imp in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))
    _record_lowering(model, lowering)
    return model


def _record_lowering(model, lowering: str) -> None:
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            metadata = ModelMetadata.from_json(prop.value)
            metadata.deform_lowering = lowering
            prop.value = metadata.to_json()


def model_lowering(model) -> str | None:
    """The lowering of ``model``'s DeformConv2d function (None when it has none)."""
    for function in model.functions:
        if (function.domain, function.name) == (DOMAIN, OP_TYPE):
            native = any(node.op_type == "DeformConv" for node in function.node)
            return "native" if native else "decomposed"
    return None


# The probe: a one-node opset-19 model, Y = DeformConv(X, W, offset) on 1x1 tensors (IR 9),
# serialized, so that probing needs no onnx package (the torch-free install has none).
# tests/test_deform_onnx.py rebuilds it with onnx.helper and compares the bytes.
DEFORMCONV_PROBE = bytes.fromhex(
    "08093a9f010a1d0a01580a01570a066f6666736574120159220a4465666f726d436f6e76120570726f62655a"
    "1b0a015812160a14080112100a0208010a0208010a0208010a0208015a1b0a015712160a14080112100a0208"
    "010a0208010a0208010a0208015a200a066f666673657412160a14080112100a0208010a0208020a0208010a"
    "020801621b0a015912160a14080112100a0208010a0208010a0208010a02080142040a001013")


@functools.cache
def onnxruntime_has_deformconv() -> bool:
    """Whether the installed onnxruntime runs ONNX DeformConv on CPU (probed once, cached).

    Runs ``DEFORMCONV_PROBE`` (X=2, W=3, zero offsets, so Y must be 6); False when onnxruntime
    rejects or fails it.
    """
    import numpy as np
    import onnxruntime as ort

    feeds = {"X": np.full((1, 1, 1, 1), 2.0, np.float32), "W": np.full((1, 1, 1, 1), 3.0, np.float32),
             "offset": np.zeros((1, 2, 1, 1), np.float32)}
    try:
        session = ort.InferenceSession(DEFORMCONV_PROBE, providers=["CPUExecutionProvider"])
        result = session.run(None, feeds)[0]
    except Exception:  # onnxruntime raises its own types (NotImplemented, InvalidGraph, ...)
        return False
    return bool(np.allclose(result, 6.0))
