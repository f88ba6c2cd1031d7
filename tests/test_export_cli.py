"""`edgecnn export` / `info` / `list`: parity, metadata, determinism and every bad input."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
import pytest
import torch

from conftest import CONSOLE_SCRIPT, assert_one_line_error, run_console_script
from edgecnn import models
from edgecnn.export import build_model, compare
from edgecnn.runtime import ModelMetadata, load_session


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


def test_export_parity_through_dynamic_batch(resnet18_64):
    """The file exported at batch 2 runs at batch 1 and 3 and matches eager (rel_l2 <= 1e-5)."""
    model = build_model("resnet18", seed=0)
    bn = model.layer3[1].bn2
    assert bn.running_mean.abs().mean() > 0.01 and (bn.running_var - 1).abs().mean() > 0.05
    session = load_session(resnet18_64)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            eager = model(x).numpy()
        onnx_out = session.run(None, {"input": x.numpy()})[0]
        metrics = compare(eager, onnx_out)
        assert onnx_out.shape == (batch, 1000)
        assert metrics.rel_l2 <= 1e-5, metrics
        assert metrics.top1_agreement == 1.0


def test_graph_interface_and_metadata(resnet18_64):
    proto = onnx.load(str(resnet18_64))
    (graph_input,) = proto.graph.input
    assert graph_input.name == "input"
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 64, 64]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert {imp.domain: imp.version for imp in proto.opset_import}[""] == 18
    assert not any(node.op_type in ("Dropout", "BatchNormalization") for node in proto.graph.node)
    meta = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    assert meta.model == "resnet18" and meta.task == "classification"
    assert meta.input.shape == [3, 64, 64] and meta.input.layout == "NCHW"
    assert meta.input.mean == pytest.approx([0.485, 0.456, 0.406])
    assert meta.input.std == pytest.approx([0.229, 0.224, 0.225])
    assert meta.input.scale == 255 and meta.input.color == "RGB" and meta.input.crop_fraction == 0.875
    assert meta.precision == "fp32" and meta.opset == 18 and meta.labels is None
    assert meta.deform_lowering is None and meta.edgecnn_version
    # Round trip: what the runtime parses serializes back to the stored JSON.
    stored = {p.key: p.value for p in proto.metadata_props}["edgecnn"]
    assert ModelMetadata.from_json(stored).to_json() == stored


def test_export_is_byte_identical_across_processes(tmp_path, resnet18_64):
    again = tmp_path / "again.onnx"
    result = run_console_script("export", "resnet18", "--input-size", "64", "-o", again, "--no-check")
    assert result.code == 0, result.stderr
    assert again.read_bytes() == resnet18_64.read_bytes()
    assert _leftovers(tmp_path) == ["again.onnx"]


def test_seed_changes_the_weights(cli, tmp_path):
    paths = [tmp_path / f"seed{seed}.onnx" for seed in (0, 1, 1)]
    for seed, path in zip((0, 1, 1), paths):
        assert cli("export", "lenet", "--seed", str(seed), "-o", path, "--no-check").code == 0
    assert paths[0].read_bytes() != paths[1].read_bytes()
    assert paths[1].read_bytes() == paths[2].read_bytes()


def test_cli_export_json_fixed_batch_and_options(cli, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class{i}" for i in range(10)))
    out = tmp_path / "r18.onnx"
    result = cli("export", "resnet18", "-o", out, "--input-size", "48", "40", "--batch", "1",
                 "--num-classes", "10", "--in-channels", "1", "--labels", labels, "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout is exactly one JSON object
    assert summary["input_shape"] == [1, 1, 48, 40]
    assert summary["parity"]["rel_l2"] <= 1e-5 and summary["tolerance"] == 1e-5
    assert summary["size_bytes"] == out.stat().st_size
    session = load_session(out)
    assert session.get_inputs()[0].shape == [1, 1, 48, 40]
    assert session.get_outputs()[0].shape == [1, 10]
    meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    assert meta.labels == [f"class{i}" for i in range(10)]
    assert meta.input.color == "GRAY" and len(meta.input.mean) == 1


def test_cli_human_output_and_info(cli, resnet18_64):
    info = cli("info", resnet18_64, "--json")
    assert info.code == 0
    described = json.loads(info.stdout)
    assert described["metadata"]["model"] == "resnet18"
    assert described["inputs"] == [{"name": "input", "shape": ["batch", 3, 64, 64], "dtype": "float32"}]
    assert described["outputs"][0]["name"] == "logits"
    assert described["opset_imports"] == {"ai.onnx": 18}
    assert described["custom_ops"] == [] and described["size_bytes"] == resnet18_64.stat().st_size
    text = cli("info", resnet18_64)
    assert "resnet18 (classification)" in text.stdout and "fp32" in text.stdout


def test_printed_paths_are_not_read_as_markup(cli, tmp_path):
    """Console lines are rich markup: '[b]' in a file name must print as written."""
    out = tmp_path / "net[b].onnx"
    result = cli("export", "lenet", "-o", out, "--no-check")
    assert result.code == 0 and out.is_file()
    assert f"wrote {out} (" in result.stdout.replace("\n", "")
    assert str(out) in cli("info", out).stdout.replace("\n", "")


def test_list_shows_registry(cli):
    result = cli("list", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)["models"]}
    assert set(rows) == set(models.list_models())
    assert rows["resnet18"]["params"] == 11_689_512 and rows["resnet18"]["input"] == [3, 224, 224]
    table = cli("list", "resnet1*")
    assert "resnet18" in table.stdout and "11,689,512" in table.stdout and "resnet50" not in table.stdout


def test_weights_round_trip(cli, tmp_path):
    """--weights loads a state_dict strictly: the export computes that model, not a random one."""
    trained = build_model("resnet18", seed=7, num_classes=10)
    weights = tmp_path / "r18.pth"
    torch.save(trained.state_dict(), weights)
    out = tmp_path / "w.onnx"
    result = cli("export", "resnet18", "--weights", weights, "--num-classes", "10",
                 "--input-size", "32", "-o", out, "--json")
    assert result.code == 0, result.stderr
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        eager = trained(torch.from_numpy(x)).numpy()
    assert compare(eager, load_session(out).run(None, {"input": x})[0]).rel_l2 <= 1e-5


# ---- bad input: one line on stderr, exit 2, nothing written -------------------------------

def test_unknown_model_suggests_close_names(cli, tmp_path):
    result = cli("export", "resnet81", "-o", tmp_path / "x.onnx")
    assert_one_line_error(result, 2, "unknown model 'resnet81'", "resnet18")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["missing", "file_parent", "unwritable"])
def test_bad_output_directory(cli, tmp_path, where):
    if where == "missing":
        target, fragment = tmp_path / "nope" / "r.onnx", "does not exist"
    elif where == "file_parent":
        (tmp_path / "afile").write_text("x")
        target, fragment = tmp_path / "afile" / "r.onnx", "does not exist"
    else:
        target, fragment = _unwritable_directory(tmp_path) / "r.onnx", "not writable"
    result = cli("export", "resnet18", "-o", target)
    assert_one_line_error(result, 2, fragment)
    assert not target.exists()


def _unwritable_directory(tmp_path):
    import os
    import tempfile

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:  # root ignores permission bits; sysfs refuses file creation even to root
        tempfile.TemporaryFile(dir=locked).close()
    except OSError:
        return locked
    if os.path.isdir("/sys"):
        try:
            tempfile.TemporaryFile(dir="/sys").close()
        except OSError:
            return __import__("pathlib").Path("/sys")
    pytest.skip("no directory here refuses writes to this user")


@pytest.mark.parametrize("content, fragment", [
    (None, "weights file not found"),
    (b"\x00garbage, not a checkpoint", "cannot read weights file"),
])
def test_missing_or_corrupt_weights(cli, tmp_path, content, fragment):
    weights = tmp_path / "w.pth"
    if content is not None:
        weights.write_bytes(content)
    result = cli("export", "resnet18", "--weights", weights, "-o", tmp_path / "r.onnx")
    assert_one_line_error(result, 2, fragment)
    assert not (tmp_path / "r.onnx").exists()


def test_truncated_weights(cli, tmp_path):
    weights = tmp_path / "w.pth"
    torch.save(build_model("resnet18").state_dict(), weights)
    weights.write_bytes(weights.read_bytes()[:100_000])
    result = cli("export", "resnet18", "--weights", weights, "-o", tmp_path / "r.onnx")
    assert_one_line_error(result, 2, "cannot read weights file")


def test_mismatched_weight_keys_are_listed(cli, tmp_path):
    state = build_model("resnet18").state_dict()
    state["head.weight"] = state.pop("fc.weight")
    weights = tmp_path / "w.pth"
    torch.save(state, weights)
    result = cli("export", "resnet18", "--weights", weights, "-o", tmp_path / "r.onnx")
    assert_one_line_error(result, 2, "missing keys: fc.weight", "unexpected keys: head.weight")
    assert not (tmp_path / "r.onnx").exists()


def test_wrong_shapes_point_at_num_classes(cli, tmp_path):
    weights = tmp_path / "w.pth"
    torch.save(build_model("resnet18", num_classes=10).state_dict(), weights)
    result = cli("export", "resnet18", "--weights", weights, "-o", tmp_path / "r.onnx")
    assert_one_line_error(result, 2, "fc.weight (10, 512) vs (1000, 512)", "--num-classes")


@pytest.mark.parametrize("args, fragment", [
    (["--input-size", "16"], "too small for resnet18"),
    (["--input-size", "0", "64"], "too small"),
    (["--input-size", "abc"], "--input-size"),
    (["--opset", "17"], "--opset 17"),
    (["--batch", "0"], "--batch"),
    (["--num-classes", "0"], "--num-classes must be an integer >= 1"),
    (["--bogus-flag"], "--bogus-flag"),
])
def test_bad_arguments(cli, tmp_path, args, fragment):
    result = cli("export", "resnet18", "-o", tmp_path / "r.onnx", *args)
    assert_one_line_error(result, 2, fragment)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("args", [["list"], ["list", "--json"]])
def test_reader_closing_stdout_is_not_an_error(args):
    """`edgecnn list | head`: the reader goes away before the output is written."""
    process = subprocess.Popen([*CONSOLE_SCRIPT, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # before the CLI has imported anything: its first write hits EPIPE
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 0 and stderr == ""


def test_debug_shows_traceback_and_keeps_the_exit_code(tmp_path):
    """--debug adds the traceback; bad input still exits 2 (it exited 1, "a check failed")."""
    result = run_console_script("export", "resnet81", "--debug", timeout=120)
    assert result.code == 2 and "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: unknown model")


def test_console_script_error_contract(tmp_path):
    result = run_console_script("export", "nosuchmodel", "-o", tmp_path / "x.onnx", timeout=120)
    assert_one_line_error(result, 2, "unknown model")


# ---- failures during the export leave nothing behind --------------------------------------

def test_failed_parity_check_writes_nothing(cli, tmp_path, monkeypatch):
    import edgecnn.export.parity as parity

    monkeypatch.setattr(parity, "compare", lambda a, b: parity.ParityMetrics(1e-2, 0.5, 0.99, 1.0, 40.0))
    result = cli("export", "resnet18", "--input-size", "32", "-o", tmp_path / "r.onnx")
    assert_one_line_error(result, 1, "parity check failed", "rel_l2 0.01")
    assert _leftovers(tmp_path) == []


def test_interrupted_export_leaves_no_file(cli, tmp_path, monkeypatch):
    import edgecnn.export.exporter as exporter

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "load_session", interrupt)
    target = tmp_path / "r.onnx"
    target.write_bytes(b"previous version")
    result = cli("export", "resnet18", "--input-size", "32", "-o", target)
    assert result.code == 130 and "interrupted" in result.stderr
    assert _leftovers(tmp_path) == ["r.onnx"] and target.read_bytes() == b"previous version"


def test_ir_version_is_the_oldest_the_opset_allows(resnet18_64, zoo_onnx):
    """IR 8 for opset 18 (IR 9 for 19): onnxruntime 1.17 and older runtimes refuse IR 10."""
    assert onnx.load(str(resnet18_64), load_external_data=False).ir_version == 8
    dcn = onnx.load(str(zoo_onnx("deform_testnet")), load_external_data=False)
    assert {imp.domain: imp.version for imp in dcn.opset_import}[""] == 19 and dcn.ir_version == 9
