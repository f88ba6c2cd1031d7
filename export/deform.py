"""torch -> ONNX for the deformable conv: ``edgecnn::deform_conv2d`` -> ai.edgecnn::DeformConv2d.

``TRANSLATION_TABLE`` is the ``custom_translation_table`` entry for torch.onnx's dynamo exporter:
each ``torch.ops.edgecnn.deform_conv2d`` node becomes ONE ``DeformConv2d`` node of domain
``ai.edgecnn`` (inputs X, W, offset, B?, mask?; attributes strides, pads, dilations, group,
offset_group). The FunctionProto that makes it runnable is attached afterwards by
``edgecnn.runtime.deform.set_deform_lowering`` (see ``to_onnx``).

The exporter's optimizer folds each BatchNorm into the Conv before it, but it cannot see into
the custom op: ``fold_batchnorm_into_deform`` does the same for the DeformConv2d call sites.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxscript
import torch
from onnx import external_data_helper, helper, numpy_helper

import edgecnn.ops.deform_conv  # noqa: F401  (registers torch.ops.edgecnn.deform_conv2d)
from edgecnn.runtime.deform import (DOMAIN, INPUTS, OP_TYPE, VERSION, graphs, model_lowering,
                                    register_schema, set_deform_lowering)
from edgecnn.runtime.onnx_file import attribute

register_schema()  # onnxscript looks the op's schema up when the translation calls it
_EDGECNN_OPSET = onnxscript.values.Opset(DOMAIN, VERSION)
_WEIGHT, _BIAS = INPUTS.index("W"), INPUTS.index("B")


def deform_conv2d_to_onnx(input, weight, offset, bias, mask, stride, padding, dilation,
                          groups: int, offset_groups: int):
    """The translation of one ``edgecnn::deform_conv2d`` call (torch.onnx passes the op's args)."""
    return getattr(_EDGECNN_OPSET, OP_TYPE)(
        input, weight, offset, bias, mask,
        strides=[int(v) for v in stride], pads=[int(v) for v in padding] * 2,
        dilations=[int(v) for v in dilation], group=int(groups), offset_group=int(offset_groups))


TRANSLATION_TABLE = {torch.ops.edgecnn.deform_conv2d.default: deform_conv2d_to_onnx}


# ---- BatchNorm folding -----------------------------------------------------------------------

def _uses(graph: onnx.GraphProto) -> Counter:
    """How often each name is read: node inputs (subgraphs included: they see the outer
    scope) and graph outputs."""
    uses = Counter(value.name for value in graph.output)
    for current in graphs(graph):
        for node in current.node:
            uses.update(name for name in node.input if name)
    return uses


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers whose values are known here: not overridable (listed as a graph input,
    as older exporters do) and not in an external file that was not loaded."""
    overridable = {value.name for value in graph.input}
    return {init.name: init for init in graph.initializer
            if init.name not in overridable and not external_data_helper.uses_external_data(init)}


def _inference_batchnorm(node: onnx.NodeProto, source: str, channels: int,
                         constants: dict) -> bool:
    """Whether ``node`` is a BatchNormalization of ``source`` in inference mode (one output,
    per-channel statistics of ``channels`` values, all of them constants)."""
    if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
        return False
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attributes.get("training_mode", 0) or attributes.get("spatial", 1) == 0:
        return False
    if [name for name in node.output if name] != [node.output[0]] or len(node.input) != 5:
        return False
    if node.input[0] != source or source in node.input[1:]:
        return False
    return all(name in constants and tuple(constants[name].dims) == (channels,)
               for name in node.input[1:])


def _fresh_name(base: str, taken: set[str]) -> str:
    name, index = base, 1
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    taken.add(name)
    return name


def _write(graph, constants, uses, taken, name: str | None, values: np.ndarray,
           base: str) -> str:
    """Store ``values`` as the call site's new initializer: in place when only the call site
    reads ``name``, else under a new name (other readers keep the old values)."""
    if name is not None and uses[name] == 1:
        constants[name].CopyFrom(numpy_helper.from_array(values, name))
        return name
    new_name = _fresh_name(base, taken)
    graph.initializer.append(numpy_helper.from_array(values, new_name))
    return new_name


def _computed_zeros(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto] | None:
    """The nodes computing ``name`` when it is zeros made in the graph (a zero ConstantOfShape,
    maybe through Cast/CastLike, of a Shape: the zero bias that set_deform_lowering gives the
    decomposed body's call sites), consumer first; None for anything else."""
    producers = {output: node for node in graph.node for output in node.output}
    chain, node = [], producers.get(name)
    while node is not None and node.op_type in ("Cast", "CastLike"):
        chain.append(node)
        node = producers.get(node.input[0])
    if node is None or node.op_type != "ConstantOfShape":
        return None
    value = attribute(node, "value")
    if value is not None and numpy_helper.to_array(value).any():
        return None
    shape = producers.get(node.input[0])
    return chain + [node] + ([shape] if shape is not None and shape.op_type == "Shape" else [])


def _folded(weight: np.ndarray, bias: np.ndarray, statistics: list[np.ndarray],
            epsilon: float) -> tuple[np.ndarray, np.ndarray] | None:
    """W * s and (B - mean) * s + beta with s = scale / sqrt(var + epsilon), computed in float64
    and stored in W's dtype; None when s is not finite (the BatchNorm then stays)."""
    gamma, beta, mean, var = (value.astype(np.float64) for value in statistics)
    scale = gamma / np.sqrt(var + epsilon)
    if not np.isfinite(scale).all():
        return None
    return ((weight.astype(np.float64) * scale[:, None, None, None]).astype(weight.dtype),
            ((bias.astype(np.float64) - mean) * scale + beta).astype(weight.dtype))


def _remove_unread(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Remove those of ``nodes`` (consumer first) whose outputs nothing reads any more."""
    for node in nodes:
        if not any(_uses(graph)[output] for output in node.output):
            graph.node.remove(node)


def _fold_one(graph: onnx.GraphProto, site: onnx.NodeProto) -> bool:
    """Fold the BatchNormalization after ``site`` into it when that is exact; see the caller."""
    constants, uses = _constants(graph), _uses(graph)
    source = site.output[0]
    if len(site.input) <= _WEIGHT or site.input[_WEIGHT] not in constants:
        return False
    weight_proto = constants[site.input[_WEIGHT]]
    bias_name = site.input[_BIAS] if len(site.input) > _BIAS and site.input[_BIAS] else None
    zero_bias = None if bias_name in constants else _computed_zeros(graph, bias_name or "")
    if zero_bias:
        bias_name = None  # the folded bias replaces the computed zeros
    elif bias_name is not None and bias_name not in constants:
        return False
    readers = [node for node in graph.node if source in node.input]
    if uses[source] != 1 or len(readers) != 1 or len(weight_proto.dims) != 4:
        return False  # also read by another node, a subgraph or as a graph output
    batchnorm, channels = readers[0], weight_proto.dims[0]
    if not _inference_batchnorm(batchnorm, source, channels, constants):
        return False
    bias = (np.zeros(channels) if bias_name is None
            else numpy_helper.to_array(constants[bias_name]))
    epsilon = attribute(batchnorm, "epsilon", 1e-5)
    values = bias.shape == (channels,) and _folded(
        numpy_helper.to_array(weight_proto), bias,
        [numpy_helper.to_array(constants[name]) for name in batchnorm.input[1:]], epsilon)
    if not values:
        return False

    while len(site.input) <= _BIAS:
        site.input.append("")
    if zero_bias:  # first, so that their Shape(W) does not count as another reader of W
        site.input[_BIAS] = ""
        _remove_unread(graph, zero_bias)
        uses = _uses(graph)
    taken = {*uses, *(init.name for init in graph.initializer),
             *(value.name for value in graph.value_info),
             *(output for node in graph.node for output in node.output)}
    weight_name = weight_proto.name
    site.input[_WEIGHT] = _write(graph, constants, uses, taken, weight_name, values[0],
                                 f"{weight_name}_bn_folded")
    site.input[_BIAS] = _write(graph, constants, uses, taken, bias_name, values[1],
                               f"{weight_name}_bias")
    # The call site now computes the BatchNorm's output, under its name and scope (as the
    # exporter's FuseBatchNormIntoConv leaves a Conv: edgecnn check --bisect reads the scope).
    site.output[0] = batchnorm.output[0]
    del site.metadata_props[:]
    site.metadata_props.extend(batchnorm.metadata_props)
    graph.node.remove(batchnorm)
    _drop_unused(graph, [source, weight_name, *([bias_name] if bias_name else []),
                         *batchnorm.input[1:],
                         *(output for node in zero_bias or () for output in node.output)])
    return True


def _drop_unused(graph: onnx.GraphProto, names: list[str]) -> None:
    """Remove the initializers among ``names`` that nothing reads any more, and the value_info
    of those and of values that no longer exist."""
    uses = _uses(graph)
    gone = {name for name in names if not uses[name]}
    gone -= {output for node in graph.node for output in node.output}
    for collection in (graph.initializer, graph.value_info):
        for entry in [entry for entry in collection if entry.name in gone]:
            collection.remove(entry)


def fold_batchnorm_into_deform(model: onnx.ModelProto) -> int:
    """Fold inference BatchNormalizations into the DeformConv2d call sites before them.

    A call site of the main graph whose output only an inference BatchNormalization reads (not
    a graph output, nor a subgraph) gets W * s and (B - mean) * s + beta as its weight and bias,
    s = scale / sqrt(var + epsilon), computed in float64 and stored in W's dtype, and takes the
    BatchNorm's output; the BatchNorm is removed. W, B and the statistics must be initializers
    (an initializer another node reads is left as it is: the call site gets a copy), or B the
    zero bias computed in the graph for a decomposed body; what is left unread is dropped.
    Exact up to float rounding, as onnxruntime's Conv+BN fusion. Changes ``model`` in place
    and returns how many were folded (0 when there is nothing to fold).

    The exporter folds before ``set_deform_lowering``. A model that already has a lowering gets
    its body rebuilt in that lowering, because a decomposed body built for call sites without a
    bias ignores the folded one.
    """
    sites = [node for node in model.graph.node if node.domain == DOMAIN and node.op_type == OP_TYPE]
    folded = sum(_fold_one(model.graph, site) for site in sites)
    lowering = model_lowering(model)
    if folded and lowering is not None:
        set_deform_lowering(model, lowering)
    return folded
