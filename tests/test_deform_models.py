"""Deformable ResNets and the test net: layout, plain checkpoints, exports in both lowerings, CLI.

The native exports are the zoo's (``zoo_onnx``: one export per model per session, shared with
tests/test_zoo.py); the decomposed ones are exported once here (resnet18_dcn, deform_testnet) or
switched from the native file with ``set_deform_lowering`` (resnet50_dcnv2), as the runtime
Engine does.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from conftest import assert_one_line_error
from edgecnn import models
from edgecnn.errors import BadInput
from edgecnn.export import build_model, compare, export_model
from edgecnn.export.build import random_input
from edgecnn.runtime.onnx_file import check_model
from edgecnn.ops import DeformConv2d
from edgecnn.runtime import ModelMetadata, deform, load_session

DCN_MODELS = ["deform_testnet", "resnet18_dcn", "resnet50_dcnv2"]


def _deformable(model: torch.nn.Module) -> dict[str, DeformConv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, DeformConv2d)}


def test_deformable_stages():
    with torch.device("meta"):
        v1 = _deformable(models.create("resnet18_dcn"))
        v2 = _deformable(models.create("resnet50_dcnv2"))
    assert sorted(v1) == [f"layer{s}.{b}.conv{c}" for s in (3, 4) for b in (0, 1) for c in (1, 2)]
    assert not any(m.modulated for m in v1.values())
    assert sorted(v2) == sorted(f"layer{s}.{b}.conv2" for s, blocks in ((2, 4), (3, 6), (4, 3))
                                for b in range(blocks))
    assert all(m.modulated and m.bias is None for m in v2.values())


@pytest.mark.parametrize("plain,deformable", [("resnet18", "resnet18_dcn"),
                                              ("resnet50", "resnet50_dcnv2")])
def test_plain_checkpoint_reproduces_the_plain_resnet(tmp_path, plain, deformable):
    """A torchvision-layout ResNet state_dict loads strictly (the offset/mask predictors, the
    only keys it lacks, stay at zero) and the deformable ResNet then computes the plain one."""
    source = build_model(plain, seed=5)
    path = tmp_path / f"{plain}.pth"
    torch.save(source.state_dict(), path)
    model = build_model(deformable, weights=path)
    missing = set(model.state_dict()) - set(source.state_dict())
    assert missing and all(k.endswith(("conv_offset.weight", "conv_offset.bias")) for k in missing)
    assert not set(source.state_dict()) - set(model.state_dict())
    x = random_input((2, 3, 32, 32), seed=1)
    with torch.no_grad():
        metrics = compare(source(x).numpy(), model(x).numpy())
    assert metrics.rel_l2 <= 1e-5 and metrics.top1_agreement == 1.0, metrics
    broken = source.state_dict()
    del broken["layer3.0.bn1.weight"]
    torch.save(broken, path)
    with pytest.raises(BadInput, match="missing keys: layer3.0.bn1.weight"):
        build_model(deformable, weights=path)


@pytest.fixture(scope="session")
def dcn_onnx(zoo_onnx, tmp_path_factory):
    """``dcn_onnx(name, lowering) -> Path``, each made once per session."""
    directory = tmp_path_factory.mktemp("dcn")
    made = {}

    def make(name: str, lowering: str):
        if (name, lowering) not in made:
            if lowering == "native":
                made[name, lowering] = zoo_onnx(name)
            elif name == "resnet50_dcnv2":  # the Engine's path: switch a native file's body
                proto = deform.set_deform_lowering(onnx.load(str(zoo_onnx(name))), "decomposed")
                onnx.save(proto, str(directory / f"{name}.onnx"))
                made[name, lowering] = directory / f"{name}.onnx"
            else:
                path = directory / f"{name}.onnx"
                export_model(name, path, input_size=models.get_spec(name).ci_input_size,
                             deform_lowering="decomposed", check=False)
                made[name, lowering] = path
        return made[name, lowering]

    return make


@pytest.mark.parametrize("lowering", ["native", "decomposed"])
@pytest.mark.parametrize("name", DCN_MODELS)
def test_export_graph_metadata_and_parity(dcn_onnx, name, lowering):
    """Graph and metadata in both lowerings; ONNX-vs-eager parity of the decomposed one (the
    native file is the zoo's, which tests/test_parity_matrix.py compares at fp32 with the same
    seed-0 model, batches and bounds)."""
    path = dcn_onnx(name, lowering)
    proto = onnx.load(str(path))
    check_model(proto)  # onnx.checker + strict shape inference, schema registered
    with torch.device("meta"):
        deformable = _deformable(models.create(name))
    custom = [n for n in proto.graph.node if n.domain == deform.DOMAIN]
    assert len(custom) == len(deformable) and {n.op_type for n in custom} == {"DeformConv2d"}
    assert deform.model_lowering(proto) == lowering
    opsets = {o.domain: o.version for o in proto.opset_import}
    exported_at_18 = lowering == "decomposed" and name != "resnet50_dcnv2"  # not switched
    assert opsets == {"": 18 if exported_at_18 else 19, deform.DOMAIN: 1}
    meta = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    assert meta.deform_lowering == lowering and meta.model == name
    if lowering == "native":
        return
    model = build_model(name, seed=0)
    offsets = [m.conv_offset.bias.abs().mean() for m in _deformable(model).values()]
    assert min(offsets) > 0.3  # random offsets (about a pixel), so deformation is exercised
    session = load_session(path)
    height, width = models.get_spec(name).ci_input_size
    for batch in (1, 3):
        x = random_input((batch, 3, height, width), seed=20 + batch)
        with torch.no_grad():
            eager = model(x).numpy()
        metrics = compare(eager, session.run(None, {"input": x.numpy()})[0])
        assert metrics.rel_l2 <= 1e-5 and metrics.top1_agreement == 1.0, metrics


def test_cli_opset_and_lowering_errors(cli, tmp_path):
    out = tmp_path / "t.onnx"
    result = cli("export", "deform_testnet", "--opset", "18", "-o", out)
    assert_one_line_error(result, 2, "--opset 18", "--opset 19", "--deform-lowering decomposed")
    result = cli("export", "deform_testnet", "--deform-lowering", "fast", "-o", out)
    assert_one_line_error(result, 2, "--deform-lowering must be one of native, decomposed")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_with_plain_weights_and_info(cli, tmp_path):
    """--weights without the offset predictors: they stay at zero, the export computes the
    loaded model; `edgecnn info` lists the custom op and its function."""
    trained = build_model("deform_testnet", seed=3)
    plain = {k: v for k, v in trained.state_dict().items() if "conv_offset" not in k}
    torch.save(plain, tmp_path / "plain.pth")
    out = tmp_path / "t.onnx"
    result = cli("export", "deform_testnet", "--weights", tmp_path / "plain.pth",
                 "--deform-lowering", "decomposed", "-o", out, "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["deform_lowering"] == "decomposed" and summary["opset"] == 18
    assert summary["parity"]["rel_l2"] <= 1e-5
    for module in _deformable(trained).values():
        module.reset_offset_predictor()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = trained(torch.from_numpy(x)).numpy()
    assert compare(expected, load_session(out).run(None, {"input": x})[0]).rel_l2 <= 1e-5
    described = json.loads(cli("info", out, "--json").stdout)
    assert described["custom_ops"] == [{"domain": "ai.edgecnn", "op": "DeformConv2d", "count": 2}]
    assert described["functions"] == ["ai.edgecnn::DeformConv2d"]
    assert described["metadata"]["deform_lowering"] == "decomposed"
    text = cli("info", out).stdout
    assert "ai.edgecnn::DeformConv2d ×2" in text and "deform lowering  decomposed" in text
