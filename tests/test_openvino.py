"""The OpenVINO execution provider (the onnxruntime-ep-openvino plugin, a dev dependency): f32 by
default, its device and precision chosen by name, bad requests as one line. The parity matrix
runs every model on it in CI (EDGECNN_PROVIDER=cpu,openvino in .ci/run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error
from edgecnn.errors import BadInput
from edgecnn.export.parity import compare
from edgecnn.runtime import Engine, openvino
from edgecnn.runtime.providers import OPENVINO, cpu_has_int8_units, resolve_providers
from edgecnn.runtime.session import model_traits, open_session

# Not installed, or installed without a device here (its 1.8.1 release offers Intel devices only).
pytestmark = pytest.mark.skipif(openvino.no_device_reason() is not None,
                                reason=f"provider openvino {openvino.no_device_reason()}")


def cpu_does_bf16() -> bool:
    """A CPU without bf16 units (e.g. an AVX2 EPYC) runs OpenVINO's bf16 hint in f32."""
    capabilities = openvino.devices()["CPU"].ep_metadata.get("OPTIMIZATION_CAPABILITIES", "")
    return "BF16" in capabilities.split()


@pytest.fixture(scope="module")
def resnet18_file(resnet18_64):
    """The session's resnet18 export at 64 px (conftest.py): no export of its own."""
    return resnet18_64


@pytest.fixture(scope="module")
def int8_file(resnet18_file, tmp_path_factory):
    """Its int8 model tuned for OpenVINO, made once for the module."""
    from edgecnn.export.quantize import quantize_model

    path = tmp_path_factory.mktemp("openvino") / "resnet18.int8.onnx"
    quantize_model(resnet18_file, path, calibration="random", calibration_size=8, check=False,
                   target="openvino", on_warning=lambda message: None)
    return path


def _outputs(path, provider, x) -> np.ndarray:
    return open_session(path, provider, fallback=False).session.run(None, {"input": x})[0]


def test_openvino_runs_in_f32_unless_asked(resnet18_file):
    """OpenVINO's default on an AMX CPU is bf16 (rel_l2 ~5e-3 here): edgecnn asks for f32."""
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    reference = _outputs(resnet18_file, "cpu", x)
    engine = Engine(resnet18_file, "openvino", fallback=False)
    assert engine.providers[0] == OPENVINO
    assert compare(reference, engine.run(x)["logits"]).rel_l2 <= 1e-5
    bf16 = compare(reference, _outputs(resnet18_file, "openvino:bf16", x)).rel_l2
    assert bf16 <= 2e-2, bf16
    if cpu_does_bf16():
        assert bf16 > 1e-4, bf16  # the hint really applies


def test_the_session_gets_the_device_precision_threads_and_cache(tmp_path):
    class Options:  # records what add_to_session gives onnxruntime
        def add_provider_for_devices(self, devices, options):
            self.devices, self.options = devices, options

    options = Options()
    openvino.add_to_session(options, precision="bf16", threads=2, cache_dir=tmp_path / "cache")
    assert [device.ep_metadata["ov_device"] for device in options.devices] == ["CPU"]
    assert json.loads(options.options["load_config"]) == {"CPU": {
        "INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": "2",
        "CACHE_DIR": str(tmp_path / "cache")}}
    assert (tmp_path / "cache").is_dir()
    openvino.add_to_session(options)
    assert json.loads(options.options["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": "f32"}}


def test_provider_names_and_options():
    assert resolve_providers("openvino", installed=[OPENVINO, "CPUExecutionProvider"]) == [
        (OPENVINO, {"device": "CPU", "precision": "f32"}),
        ("CPUExecutionProvider", {})]
    (name, options), _ = resolve_providers("openvino:gpu:F16", installed=[OPENVINO, "CPUExecutionProvider"])
    assert options == {"device": "GPU", "precision": "f16"}
    with pytest.raises(BadInput, match="names two devices"):
        resolve_providers("openvino:CPU:GPU")
    with pytest.raises(BadInput, match="precision must be one of f32, fp32, bf16"):
        resolve_providers([("openvino", {"precision": "int4"})])
    with pytest.raises(BadInput, match="unknown OpenVINO option threads"):
        resolve_providers([("openvino", {"threads": 2})])
    with pytest.raises(BadInput, match="takes no ':' options"):
        resolve_providers("cuda:1")
    with pytest.raises(BadInput, match="openvino must be the first provider"):
        resolve_providers(["cpu", "openvino"])


def test_bad_requests_are_one_line(cli, resnet18_file, tmp_path):
    image = "examples/china.jpg"
    result = cli("run", resnet18_file, image, "--provider", "openvino:NPU")
    assert_one_line_error(result, 2, "OpenVINO device NPU is not on this machine (devices: CPU")
    result = cli("run", resnet18_file, image, "--provider", "openvino:int4")
    assert_one_line_error(result, 2, "precisions: f32, fp32, bf16, f16, fp16")
    result = cli("bench", resnet18_file, "--provider", "openvinox")
    assert_one_line_error(result, 2, "unknown provider 'openvinox'", "openvino")
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(BadInput, match=r"cache directory .*file/cache cannot be written"):
        Engine(resnet18_file, [("openvino", {"cache_dir": blocked / "cache"})])
    result = cli("run", resnet18_file, image, "--provider", "openvino", "--cache-dir",
                 str(blocked / "cache"))
    assert_one_line_error(result, 2, "OpenVINO cache directory", "cannot be written")
    assert blocked.read_text() == "not a folder"


def test_cache_dir_keeps_the_compiled_model_for_the_next_process(cli, resnet18_file, tmp_path):
    cache = tmp_path / "ov-cache"
    for _ in range(2):  # the second run reads what the first one compiled
        result = cli("bench", resnet18_file, "--provider", "openvino", "--cache-dir", str(cache),
                     "--runs", "1", "--warmup", "0", "--json")
        assert result.code == 0, result.stderr
    compiled = [path for path in cache.rglob("*") if path.is_file()]
    assert compiled and sum(path.stat().st_size for path in compiled) > 1_000_000
    # the CPU provider compiles nothing: the option is accepted and nothing is written
    result = cli("bench", resnet18_file, "--provider", "cpu", "--cache-dir", str(tmp_path / "cpu"),
                 "--runs", "1", "--warmup", "0", "--json")
    assert result.code == 0, result.stderr
    assert not any((tmp_path / "cpu").rglob("*"))


def test_check_run_and_bench_on_openvino(cli, resnet18_file):
    result = cli("check", "resnet18", "--input-size", "64", "--provider", "openvino", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["providers"][0] == OPENVINO
    result = cli("run", resnet18_file, "examples/china.jpg", "--provider", "openvino", "--json")
    assert result.code == 0, result.stderr
    result = cli("bench", resnet18_file, "--provider", "openvino", "--runs", "5", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["providers"][0] == OPENVINO


def test_decomposed_deformable_model_on_openvino(cli, tmp_path):
    from edgecnn.export.build import build_model, random_input

    path = tmp_path / "dcn.onnx"
    result = cli("export", "resnet18_dcn", "-o", path, "--input-size", "32",
                 "--deform-lowering", "decomposed", "--no-check")
    assert result.code == 0, result.stderr
    assert model_traits(path)["deformable"]  # so "auto" keeps it on the CPU provider
    x = random_input((2, 3, 32, 32), 1)
    expected = build_model("resnet18_dcn", seed=0)(x).detach().numpy()
    assert compare(expected, _outputs(path, "openvino", x.numpy())).rel_l2 <= 1e-5


def test_without_the_plugin_the_message_says_how_to_install(resnet18_file):
    code = ("import sys; sys.modules['onnxruntime_ep_openvino'] = None\n"
            "from edgecnn.cli import main\n"
            f"sys.exit(main(['bench', {str(resnet18_file)!r}, '--provider', 'openvino', "
            "'--runs', '1']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "openvino is not installed" in done.stderr and openvino.INSTALL in done.stderr, done.stderr


def test_auto_runs_plain_int8_files_on_openvino(cli, resnet18_file, int8_file):
    int8 = int8_file
    assert model_traits(int8) == {"precision": "int8", "deformable": False}
    # OpenVINO's int8 was measured fast on CPUs with VNNI/AMX; elsewhere auto stays on the CPU.
    picked = OPENVINO if cpu_has_int8_units() else "CPUExecutionProvider"
    assert Engine(int8).providers[0] == picked
    assert Engine(resnet18_file).providers == ["CPUExecutionProvider"]
    result = cli("run", int8, "examples/china.jpg")
    assert result.code == 0 and f"on {picked}" in result.stdout, result.stderr


def test_check_judges_bf16_by_the_bf16_bound(cli):
    """bf16 is OpenVINO's hint on the fp32 file: `check --precision bf16` runs it there and
    judges it by 8x the fp16 bound; openvino:f16 by the fp16 bound; bf16 elsewhere is refused."""
    result = cli("check", "resnet18", "--input-size", "64", "--precision", "bf16", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["precision"], report["tolerance_rel_l2"]) == ("bf16", pytest.approx(4e-2))
    assert report["providers"][0] == OPENVINO and report["passed"]
    assert report["outputs"][0]["rel_l2"] <= 4e-2
    if cpu_does_bf16():
        assert report["outputs"][0]["rel_l2"] > 1e-5
    result = cli("check", "resnet18", "--input-size", "64", "--provider", "openvino:f16", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["tolerance_rel_l2"] == pytest.approx(5e-3)
    result = cli("check", "resnet18", "--input-size", "64", "--precision", "bf16", "--provider", "cuda")
    assert_one_line_error(result, 2, "--precision bf16 runs on OpenVINO", "not on cuda")
    result = cli("check", "resnet18", "--input-size", "64", "--precision", "bf16",
                 "--provider", "openvino:f16")
    assert_one_line_error(result, 2, "ask for two precisions")


def test_bench_matrix_rows_parity_auto_and_fastest(cli, resnet18_file, int8_file, tmp_path):
    int8 = int8_file
    result = cli("bench", resnet18_file, int8, "--matrix", "--runs", "3", "--warmup", "1", "--json")
    assert result.code == 0, result.stderr
    rows = {(Path(row["file"]).name, row["precision"], row["provider"]): row
            for row in json.loads(result.stdout)["rows"]}
    fp32, quantized = resnet18_file.name, int8.name
    assert {(fp32, "fp32", "cpu"), (fp32, "fp32", "openvino"), (fp32, "bf16", "openvino:bf16"),
            (quantized, "int8", "cpu"), (quantized, "int8", "openvino")} <= set(rows)
    assert rows[fp32, "fp32", "cpu"]["rel_l2"] == 0
    assert rows[fp32, "fp32", "openvino"]["rel_l2"] <= 1e-5
    assert rows[fp32, "bf16", "openvino:bf16"]["rel_l2"] <= 4e-2
    assert rows[quantized, "int8", "openvino"]["providers"][0] == OPENVINO
    for name, auto in ((fp32, "cpu"), (quantized, "openvino" if cpu_has_int8_units() else "cpu")):
        own = [key for key in rows if key[0] == name]
        assert [key[2] for key in own if rows[key]["auto"]] == [auto]
        fastest = min(own, key=lambda key: rows[key]["latency_ms"]["p50"])
        assert [key for key in own if rows[key]["fastest"]] == [fastest]
        assert all(rows[key]["latency_ms"]["p50"] > 0 and rows[key]["startup_s"] > 0 for key in own)
    result = cli("bench", resnet18_file, int8)
    assert_one_line_error(result, 2, "bench takes one file (2 given)", "--matrix")
    result = cli("bench", resnet18_file, "--matrix", "--provider", "cpu")
    assert_one_line_error(result, 2, "--matrix runs every installed provider")
    result = cli("bench", resnet18_file, tmp_path / "missing.onnx", "--matrix")
    assert_one_line_error(result, 2, "not found", "missing.onnx")


def test_a_cpu_session_does_not_load_the_plugin(resnet18_file):
    """Registering the plugin loads OpenVINO (0.1 s, 20 MB): only a session that asks for it
    pays, so `edgecnn run --provider cpu` starts as fast as before."""
    code = ("import onnxruntime as ort\n"
            "from edgecnn.runtime import Engine\n"
            f"assert Engine({str(resnet18_file)!r}, 'cpu').providers == ['CPUExecutionProvider']\n"
            "print(any(p.startswith('OpenVINO') for p in ort.get_available_providers()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "False", done.stderr


def test_an_onnxruntime_without_plugin_providers_is_one_line(monkeypatch):
    """A board's old onnxruntime (1.17 has no plugin API) next to the plugin wheel."""
    monkeypatch.delattr(openvino.ort, "register_execution_provider_library")
    openvino.register.cache_clear()
    try:
        with pytest.raises(BadInput, match=r"needs an onnxruntime with plugin providers "
                                           r"\(installed: .*\): pip install 'edgecnn\[openvino\]'"):
            openvino.register()
    finally:
        monkeypatch.undo()
        openvino.register.cache_clear()
