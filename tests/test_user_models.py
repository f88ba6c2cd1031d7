"""`edgecnn export SPEC` and `edgecnn check SPEC FILE` for models that are not registered:
`path/file.py:callable`, `package.module:callable` and .pt2 programs (edgecnn.export.user_model),
with the networks of tests/user_models.py, which use layers the zoo does not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO, assert_one_line_error

import user_models
from edgecnn.export.build import build_model, random_input
from edgecnn.export.user_model import resolve_spec
from edgecnn.runtime import Engine
from edgecnn.runtime.onnx_file import get_metadata, load_model

MODELS = str(REPO / "tests" / "user_models.py")
IMAGE = REPO / "examples" / "china.jpg"

# callable, input size, channels, task, output names
CASES = {
    "mixed_net": (["32"], 3, "classification", ["logits"]),
    "SuperResolution": (["16"], 1, "segmentation", ["masks"]),
    "TwoHeads": (["24", "32"], 3, "classification", ["logits", "logits_1"]),
}


def export(cli, spec: str, output, *flags: str) -> dict:
    result = cli("export", spec, "-o", output, "--json", *flags)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", CASES)
def test_a_callable_in_a_file_exports_checks_and_runs(cli, tmp_path, name):
    size, channels, task, outputs = CASES[name]
    path = tmp_path / f"{name}.onnx"
    report = export(cli, f"{MODELS}:{name}", path, "--input-size", *size,
                    "--in-channels", str(channels), "--task", task)
    assert report["parity"]["rel_l2"] <= 1e-5 and report["input_shape"][0] == "batch"
    metadata = get_metadata(load_model(path))
    height, width = (int(size[0]),) * 2 if len(size) == 1 else map(int, size)
    assert (metadata.model, metadata.task) == (name, task)
    assert metadata.input.shape == [channels, height, width]
    assert metadata.input.color == ("RGB" if channels == 3 else "GRAY")
    assert metadata.weights == "random (seed 0)"
    engine = Engine(path)
    assert [spec.name for spec in engine.outputs] == outputs

    # the same file through the eager side again, every output compared
    result = cli("check", f"{MODELS}:{name}", path, "--json")
    assert result.code == 0, result.stderr
    checked = json.loads(result.stdout)
    assert checked["passed"] and [o["name"] for o in checked["outputs"]] == outputs

    # a batch of 3 on the dynamic axis matches eager, output by output
    module = build_model(resolve_spec(f"{MODELS}:{name}", input_size=(height, width),
                                      in_channels=channels))
    x = random_input((3, channels, height, width), 7)
    with torch.no_grad():
        eager = module(x)
    eager = [eager] if isinstance(eager, torch.Tensor) else list(eager)
    for got, want in zip(engine.run(x.numpy()).values(), eager):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
    if task == "classification" and channels == 3:
        result = cli("run", path, IMAGE, "--json")
        assert result.code == 0, result.stderr
        top_k = json.loads(result.stdout)["results"][0]["top_k"]
        assert len(top_k) == 5 and 0 < top_k[0]["probability"] <= 1  # of the 10 classes


def test_options_labels_weights_and_preprocessing(cli, tmp_path):
    spec = f"{MODELS}:mixed_net"
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nfox\n")
    torch.manual_seed(3)
    trained = user_models.mixed_net(num_classes=3, width=8).eval()
    torch.save(trained.state_dict(), tmp_path / "trained.pt")
    path = tmp_path / "mine.onnx"
    report = export(cli, spec, path, "--input-size", "32", "--in-channels", "3",
                    "--num-classes", "3", "--option", "width=8", "--labels", labels,
                    "--weights", tmp_path / "trained.pt", "--mean", "0.5", "0.5", "0.5",
                    "--std", "0.25,0.25,0.25", "--crop-fraction", "1")
    assert report["weights"].startswith("trained.pt sha256:")
    metadata = get_metadata(load_model(path))
    assert metadata.labels == ["cat", "dog", "fox"]
    assert (metadata.input.mean, metadata.input.std) == ([0.5] * 3, [0.25] * 3)
    assert metadata.input.crop_fraction == 1
    x = random_input((2, 3, 32, 32), 1)
    with torch.no_grad():
        expected = trained(x).numpy()
    np.testing.assert_allclose(Engine(path).run(x.numpy())["logits"], expected,
                               rtol=1e-4, atol=1e-5)  # the checkpoint's weights, not random ones
    # check rebuilds the eager model with the options the file records (it took the builder's
    # defaults, width 16, and failed with a note naming --seed/--weights/--num-classes)
    assert metadata.options == {"width": 8}
    result = cli("check", spec, path, "--num-classes", "3", "--weights", tmp_path / "trained.pt",
                 "--samples", "1")
    assert result.code == 0, result.stdout + result.stderr


def test_a_module_path_imports_like_python(cli, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    report = export(cli, "user_models:TwoHeads", tmp_path / "two.onnx", "--input-size", "16",
                    "--in-channels", "3", "--num-classes", "4")
    assert report["model"] == "TwoHeads" and report["parity"]["rel_l2"] <= 1e-5
    assert Engine(tmp_path / "two.onnx").outputs[0].shape[1] == 4


def test_a_pt2_program_round_trips(cli, tmp_path):
    module = user_models.mixed_net().eval()
    dynamic = torch.export.export(module, (torch.randn(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(dynamic, tmp_path / "dynamic.pt2")
    torch.export.save(torch.export.export(module, (torch.randn(1, 3, 32, 32),)),
                      tmp_path / "static.pt2")

    report = export(cli, tmp_path / "dynamic.pt2", tmp_path / "dynamic.onnx")
    assert report["input_shape"] == ["batch", 3, 32, 32]  # the size the program recorded
    assert report["weights"].startswith("dynamic.pt2 sha256:")  # its own weights
    x = random_input((3, 3, 32, 32), 2)
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(Engine(tmp_path / "dynamic.onnx").run(x.numpy())["logits"],
                               expected, rtol=1e-4, atol=1e-5)
    report = export(cli, tmp_path / "static.pt2", tmp_path / "static.onnx")
    assert report["input_shape"] == [1, 3, 32, 32]
    result = cli("check", tmp_path / "static.pt2", tmp_path / "static.onnx", "--json")
    assert result.code == 0 and json.loads(result.stdout)["passed"], result.stderr

    assert_one_line_error(cli("export", tmp_path / "static.pt2", "--batch", "4"), 2,
                          "--batch must be 1", "fixed batch size")
    assert_one_line_error(cli("export", tmp_path / "static.pt2", "--input-size", "64"), 2,
                          "only works at 32x32")
    assert_one_line_error(cli("export", tmp_path / "static.pt2", "--weights", tmp_path / "w.pt"),
                          2, "carries its own weights")
    (tmp_path / "corrupt.pt2").write_bytes(b"PK\x03\x04 not really a zip")
    assert_one_line_error(cli("export", tmp_path / "corrupt.pt2"), 2,
                          "is not a program written by torch.export.save")


def test_int8_of_your_own_model(cli, tmp_path):
    report = export(cli, f"{MODELS}:mixed_net", tmp_path / "q.onnx", "--input-size", "32",
                    "--in-channels", "3", "--quantize", "int8", "--calibration", "random")
    assert report["quantization"]["precision"] == "int8"
    assert report["quantization"]["parity"]["sqnr_db"] >= 20  # the int8 floor it was judged by
    assert get_metadata(load_model(tmp_path / "q.onnx")).precision == "int8"


@pytest.mark.parametrize("spec, flags, fragments", [
    ("resnt18", [], ["unknown model 'resnt18'", "did you mean resnet18"]),
    ("my_net", [], ["unknown model 'my_net'", "package.module:callable"]),
    ("net.pth", [], ["net.pth looks like a file of weights", "--weights net.pth"]),
    ("model.onnx", [], ["model.onnx is an ONNX file already", "edgecnn quantize"]),
    ("nosuch_package.models:net", ["--input-size", "8", "--in-channels", "3"],
     ["module nosuch_package.models does not import", "ModuleNotFoundError"]),
    (f"{MODELS}:missing", ["--input-size", "8", "--in-channels", "3"], ["has no 'missing'"]),
    (f"{MODELS}:raises", ["--input-size", "8", "--in-channels", "3"],
     ["raised RuntimeError: the weights server is down"]),
    (f"{MODELS}:not_a_module", ["--input-size", "8", "--in-channels", "3"],
     ["returned a str, not an nn.Module"]),
    (f"{MODELS}:IMAGE_SIZE", ["--input-size", "8", "--in-channels", "3"], ["has no 'IMAGE_SIZE'"]),
    (f"{MODELS}:ImageAndScale", ["--input-size", "8", "--in-channels", "3"],  # was internal
     ["ImageAndScale takes 2 inputs (image, scale); edgecnn exports models of one image input"]),
    (f"{MODELS}:mixed_net", [], ["not a registered model: give its input size and channels, e.g. --input-size 224 --in-channels 3"]),
    (f"{MODELS}:mixed_net", ["--input-size", "32"],  # says what is missing, not what was given
     ["not a registered model: give its channels, e.g. --in-channels 3 (--in-channels 1 for grayscale)"]),
    (f"{MODELS}:mixed_net", ["--in-channels", "3"],
     ["not a registered model: give its input size, e.g. --input-size 224"]),
    (f"{MODELS}:mixed_net", ["--input-size", "32", "--in-channels", "3", "--option", "depth=2"],
     ["unexpected keyword argument 'depth'"]),
    (f"{MODELS}:mixed_net", ["--input-size", "32", "--in-channels", "3", "--mean", "0.5"],
     ["--mean must be a list of one number per channel (3)"]),
    (f"{MODELS}:mixed_net", ["--input-size", "32", "--in-channels", "3", "--task", "detection"],
     ["--task must be one of classification, segmentation"]),
    ("resnet18", ["--task", "segmentation"], ["resnet18 is a classification model"]),
    (f"{MODELS}:SuperResolution", ["--input-size", "16", "--in-channels", "1", "--task",
                                   "classification"],  # was written, and run refused it
     ["task classification takes (N, classes) scores; the first output is [2, 4, 16, 16]",
      "--task segmentation"]),
    (str(REPO / "tests" / "nothere.py") + ":net", [], ["model file not found"]),
])
def test_bad_specs_are_one_line_and_write_nothing(cli, tmp_path, spec, flags, fragments):
    output = tmp_path / "out" / "model.onnx"
    output.parent.mkdir()
    assert_one_line_error(cli("export", spec, "-o", output, *flags), 2, *fragments)
    assert list(output.parent.iterdir()) == []


def test_default_output_names_come_from_the_callable(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for flags, written in (([], "mixed_net.onnx"),
                           (["--quantize", "fp16"], "mixed_net_fp16.onnx")):
        result = cli("export", f"{MODELS}:mixed_net", "--input-size", "16", "--in-channels", "3",
                     *flags)
        assert result.code == 0, result.stderr
        assert (tmp_path / written).is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mixed_net.onnx",
                                                                 "mixed_net_fp16.onnx"]
    assert not list((REPO / "tests").glob("*.onnx"))  # no intermediate lands beside the source


def test_a_py_model_exports_byte_identical_files_from_separate_processes(tmp_path):
    """The module a .py model is imported as is named after its path with a stable digest; a
    name from hash() changed with each process's PYTHONHASHSEED, and the ONNX node metadata
    (namespaces) holds it, so two exports differed."""
    import os

    from conftest import run_console_script

    files = []
    for seed in ("1", "2"):
        files.append(tmp_path / f"net{seed}.onnx")
        result = run_console_script("export", f"{MODELS}:mixed_net", "-o", files[-1],
                                    "--input-size", "32", "--in-channels", "3",
                                    env={**os.environ, "PYTHONHASHSEED": seed})
        assert result.code == 0, result.stderr
    assert files[0].read_bytes() == files[1].read_bytes()


def test_a_module_instance_exports_with_its_own_weights(tmp_path):
    """export_model(module, ...) takes the module as it is, trained weights and all (was a
    TypeError: "argument of type 'MixedNet' is not iterable"), and leaves it as it was."""
    from edgecnn.export import check_parity, export_model

    torch.manual_seed(7)
    module = user_models.mixed_net().train()
    before = {key: value.clone() for key, value in module.state_dict().items()}
    result = export_model(module, tmp_path / "mine.onnx", input_size=32, in_channels=3)
    assert module.training and all(torch.equal(before[key], value)
                                   for key, value in module.state_dict().items())
    metadata = get_metadata(load_model(result.path))
    assert metadata.model == "MixedNet"
    assert metadata.weights.startswith("MixedNet state_dict sha256:")
    x = random_input((2, 3, 32, 32), 3)
    with torch.no_grad():
        expected = module.eval()(x).numpy()
    got = Engine(result.path, "cpu").run(x.numpy())["logits"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)  # not re-initialized
    assert check_parity(module, result.path).passed  # the same module against its file


@pytest.mark.parametrize("arguments, fragment", [
    ({}, "give its input size and channels"),
    ({"input_size": 32, "in_channels": 3, "weights": "w.pt"}, "carries its own weights"),
    ({"input_size": 32, "in_channels": 3, "model_options": {"width": 8}}, "is built already"),
])
def test_a_module_instance_refuses_what_it_cannot_use(tmp_path, arguments, fragment):
    from edgecnn.errors import BadInput
    from edgecnn.export import export_model

    with pytest.raises(BadInput, match=fragment):
        export_model(user_models.mixed_net(), tmp_path / "mine.onnx", **arguments)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, cause", [
    ("BranchesOnValues", "Could not guard on data-dependent expression"),
    ("NoOnnxOp", "No ONNX function found for <OpOverload(op='aten._linalg_svd'"),
])
def test_a_module_torch_onnx_cannot_export_is_one_line_with_the_cause(cli, tmp_path, name,
                                                                       cause):
    """The line names the cause at the bottom of the exporter's chain, not its first line
    ("... This is step 1/3 of exporting the model to ONNX. Next steps:"), and torch's dump of
    the traced graph stays off stderr (it printed 50 lines)."""
    result = cli("export", f"{MODELS}:{name}", "-o", tmp_path / "m.onnx", "--input-size", "16",
                 "--in-channels", "3")
    assert_one_line_error(result, 1, f"torch.onnx could not export {name}: {cause}")
    assert "Next steps" not in result.stderr and "\x1b" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_module_of_one_fixed_batch_is_pointed_to_batch(cli, tmp_path):
    """The export runs the module at batch 2 unless told: a module that takes one image at a
    time fails there, and the line says which batch and what to give (it blamed the input
    size alone)."""
    spec = f"{MODELS}:OneImageAtATime"
    flags = ["--input-size", "8", "--in-channels", "3"]
    assert_one_line_error(cli("export", spec, "-o", tmp_path / "m.onnx", *flags), 2,
                          "input [2, 3, 8, 8] does not work for OneImageAtATime",
                          "if it takes one batch size only, give it: --batch 1")
    report = export(cli, spec, tmp_path / "m.onnx", *flags, "--batch", "1")
    assert report["parity"]["rel_l2"] <= 1e-5


def test_a_module_given_other_channels_is_pointed_to_in_channels(cli, tmp_path):
    """Its first convolution says how many channels it takes; the line named --batch 1."""
    result = cli("export", f"{MODELS}:MixedNet", "-o", tmp_path / "m.onnx", "--input-size",
                 "16", "--in-channels", "1")
    assert_one_line_error(result, 2, "input [2, 1, 16, 16] does not work for MixedNet",
                          "its first convolution, stem.0, takes 3 channels: give "
                          "--in-channels 3")
    assert "--batch" not in result.stderr and list(tmp_path.iterdir()) == []


def test_a_dense_first_output_makes_a_segmentation_model_by_default(cli, tmp_path):
    """Without --task, an (N, C, H, W) first output is segmentation, as the Engine reads a file
    without metadata (was classification: run then refused the file it had written)."""
    path = tmp_path / "dense.onnx"
    export(cli, f"{MODELS}:SuperResolution", path, "--input-size", "16", "--in-channels", "1")
    metadata = get_metadata(load_model(path))
    assert metadata.task == "segmentation"
    assert [spec.name for spec in Engine(path).outputs] == ["masks"]
    class_map = Engine(path).predict(np.zeros((16, 16), np.uint8))
    assert class_map.shape == (16, 16)



class RowsOfTwo(torch.nn.Module):
    """Reshapes its scores to (2, -1): the batch axis is gone from the output."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).reshape(2, -1)


def test_an_output_without_the_batch_axis_is_refused_at_export(tmp_path):
    """It exported with parity 'ok' at batch 2 and a dynamic batch axis; run then found 2 rows
    for any number of images. A fixed batch exports it as it is."""
    from edgecnn.errors import BadInput
    from edgecnn.export import export_model

    with pytest.raises(BadInput, match=r"first output 'logits' has a first axis of 2 whatever "
                                       r"the batch: .*\(batch=2\)"):
        export_model(RowsOfTwo(), tmp_path / "rows.onnx", input_size=16, in_channels=3)
    assert list(tmp_path.iterdir()) == []
    assert export_model(RowsOfTwo(), tmp_path / "rows.onnx", input_size=16, in_channels=3,
                        batch=2).verdict.passed
