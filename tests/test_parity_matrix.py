"""The parity matrix: every registered model x {fp32, fp16, int8} x {batch 1, batch 3}.

One fp32 export per model (the session's ``zoo_onnx``, at the spec's CI-sized input, dynamic
batch axis), converted to fp16 / int8 with edgecnn's own quantizer, run through the dynamic
axis at batch 1 and 3 against the seed-0 eager model. Criteria (edgecnn.export.parity):

- fp32: rel_l2 <= 1e-5 and the same top-1 (segmentation: per pixel);
- fp16: rel_l2 <= 5e-3 (a spec may loosen it with a written, re-measured reason);
- int8: SQNR >= INT8_SQNR_FLOOR_DB, calibrated on inputs drawn like the checked ones. Accuracy
  on real data is judged in tests/test_quantize_accuracy.py (trained models on digits).

``EDGECNN_PROVIDER=cuda`` (or ``tensorrt``) runs the same matrix on a GPU machine; a provider
that is not installed is an error, never a silent fall back to the CPU.
``EDGECNN_PARITY_REPORT=FILE.md`` writes every figure into a table.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecnn import models
from edgecnn.export import build_model, compare
from edgecnn.export.exporter import random_input
from edgecnn.export.parity import INT8_SQNR_FLOOR_DB, REL_L2_TOLERANCE, default_tolerance
from edgecnn.export.quantize import quantize_model
from edgecnn.runtime import load_session
from edgecnn.runtime.providers import resolve_providers

PRECISIONS = ("fp32", "fp16", "int8")
BATCHES = (1, 3)
CALIBRATION_SAMPLES = 8
PROVIDER = os.environ.get("EDGECNN_PROVIDER", "cpu")
PROVIDERS = resolve_providers(PROVIDER, fallback=False)
CASES = [(name, precision) for name in models.list_models() for precision in PRECISIONS]


@functools.lru_cache(maxsize=1)  # the cases run model by model: keep only the current one
def eager_reference(name: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """batch -> (input, eager output) for the seed-0 model at its CI-sized input."""
    spec = models.get_spec(name)
    model = build_model(name, seed=0)
    references = {}
    for batch in BATCHES:
        x = random_input((batch, spec.input_size[0], *spec.ci_input_size), seed=10 + batch)
        with torch.no_grad():
            references[batch] = (x.numpy(), model(x).numpy())
    return references


@pytest.fixture(scope="module")
def figures():
    """Collects (name, precision, batch, metrics); written as a table on request."""
    rows: list[tuple] = []
    yield rows
    report = os.environ.get("EDGECNN_PARITY_REPORT")
    if report:
        lines = ["| model | precision | batch | rel_l2 | max_abs | cosine | SQNR dB | top-1 |",
                 "|---|---|---|---|---|---|---|---|"]
        for name, precision, batch, m in rows:
            top1 = "–" if m.top1_agreement is None else f"{m.top1_agreement:.3f}"
            lines.append(f"| {name} | {precision} | {batch} | {m.rel_l2:.2e} | {m.max_abs:.2e} "
                         f"| {m.cosine:.6f} | {m.sqnr_db:.1f} | {top1} |")
        Path(report).write_text("\n".join(lines) + "\n", encoding="utf-8")


def convert(fp32: Path, precision: str, directory: Path, input_shape: tuple) -> Path:
    """fp16, or int8 calibrated on random inputs drawn like the checked ones (a .npy)."""
    target = directory / f"{fp32.stem}.{precision}.onnx"
    if precision == "fp16":
        quantize_model(fp32, target, mode="fp16", check=False)
        return target
    calibration = directory / "calibration.npy"
    np.save(calibration, np.concatenate(
        [random_input((1, *input_shape), seed=1000 + k).numpy() for k in range(CALIBRATION_SAMPLES)]))
    quantize_model(fp32, target, mode="int8", calibration=calibration,
                   calibration_size=CALIBRATION_SAMPLES, check=False)
    return target


@pytest.mark.parametrize("name, precision", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_onnx_matches_eager(name, precision, zoo_onnx, tmp_path, figures):
    spec = models.get_spec(name)
    path = zoo_onnx(name)
    if precision != "fp32":
        path = convert(path, precision, tmp_path, (spec.input_size[0], *spec.ci_input_size))
    session = load_session(path, providers=PROVIDERS)
    bound = default_tolerance(precision, spec)
    for batch, (x, eager) in eager_reference(name).items():
        candidate = session.run(None, {"input": x})[0]
        assert candidate.shape == eager.shape, (name, precision, batch)
        metrics = compare(eager, candidate)
        figures.append((name, precision, batch, metrics))
        assert metrics.rel_l2 <= bound, (name, precision, batch, metrics)
        if precision == "fp32" and metrics.top1_agreement is not None:
            assert metrics.top1_agreement == 1.0, (name, batch, metrics)
    if precision == "fp32":
        # The outputs depend on the input enough that this check would catch a graph ignoring
        # it (answering the batch mean for every sample): a sigmoid LeNet's differ by ~1e-4.
        ignoring_input = np.broadcast_to(eager.mean(axis=0, keepdims=True), eager.shape)
        assert compare(eager, ignoring_input).rel_l2 > 10 * bound, name
    else:
        path.unlink()  # the VGGs are hundreds of MB


def test_int8_floor_catches_one_broken_layer(zoo_onnx, tmp_path):
    """The SQNR floor fails a model with ONE conv's weight scale off by 2x (a 7-bit/8-bit range
    mix-up), while the intact model clears it."""
    import onnx
    from onnx import numpy_helper

    assert default_tolerance("int8") == pytest.approx(10 ** (-INT8_SQNR_FLOOR_DB / 20))
    spec = models.get_spec("resnet18")
    path = convert(zoo_onnx("resnet18"), "int8", tmp_path, (3, *spec.ci_input_size))
    x, eager = eager_reference("resnet18")[3]
    intact = compare(eager, load_session(path).run(None, {"input": x})[0])
    assert intact.sqnr_db >= INT8_SQNR_FLOOR_DB + 5
    model = onnx.load(str(path))
    scales = {node.input[0]: node.input[1] for node in model.graph.node
              if node.op_type == "DequantizeLinear"}
    scale = next(init for init in model.graph.initializer
                 if init.name == scales["layer2.1.conv1.weight_quantized"])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 2, scale.name))
    onnx.save(model, str(tmp_path / "broken.onnx"))
    broken = compare(eager, load_session(tmp_path / "broken.onnx").run(None, {"input": x})[0])
    assert broken.sqnr_db < INT8_SQNR_FLOOR_DB - 5, broken


@pytest.mark.parametrize("name", [n for n in models.list_models() if models.get_spec(n).tolerances])
def test_looser_bounds_are_justified(name):
    """A spec that loosens a bound must be a model whose eager output moves beyond the fp16
    default when only its weights are rounded to fp16: the model's sensitivity to perturbations,
    not the export, needs the bound."""
    spec = models.get_spec(name)
    assert set(spec.tolerances) <= {"fp16", "int8"} and spec.tolerance_reason
    assert spec.tolerances.get("int8", 0) <= 10 ** (-10 / 20)  # int8 keeps SQNR >= 10 dB
    x, eager = eager_reference(name)[3]
    model = build_model(name, seed=0)
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in [*rounded.parameters(), *rounded.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
        moved = compare(eager, rounded(torch.from_numpy(x)).numpy()).rel_l2
    assert moved > REL_L2_TOLERANCE["fp16"], (name, moved)  # the default bound cannot hold
    assert spec.tolerances["fp16"] >= moved
