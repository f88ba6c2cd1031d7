"""Provider resolution (auto order, options, missing providers) and the GPU paths.

resolve_providers takes the installed list as an argument, so the TensorRT/CUDA choices are
tested here without a GPU; the tests at the bottom run models on a GPU and skip without one.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from PIL import Image
from tiny_models import tiny_model

from edgecnn.errors import BadInput
from edgecnn.export.parity import compare
from edgecnn.runtime import Engine, openvino, providers
from edgecnn.runtime.providers import (
    CPU, CUDA, OPENVINO, TENSORRT, ProviderFallbackWarning, resolve_providers,
)
from edgecnn.runtime.session import open_session

AZURE = "AzureExecutionProvider"
GPU_BOX = [TENSORRT, CUDA, CPU, AZURE]


def names(entries):
    return [name for name, _ in entries]


def test_auto_prefers_tensorrt_then_cuda_then_cpu(tmp_path):
    entries = dict(resolve_providers("auto", installed=GPU_BOX, device_id=1, fp16=True,
                                     cache_dir=tmp_path / "trt"))
    assert list(entries) == [TENSORRT, CUDA, CPU]  # never Azure
    assert entries[TENSORRT] == {"device_id": 1, "trt_fp16_enable": True,
                                 "trt_engine_cache_enable": True,
                                 "trt_engine_cache_path": str(tmp_path / "trt")}
    assert entries[CUDA] == {"device_id": 1} and entries[CPU] == {}
    assert (tmp_path / "trt").is_dir()
    assert names(resolve_providers("auto", installed=[CUDA, CPU])) == [CUDA, CPU]
    assert names(resolve_providers("auto", installed=[AZURE, CPU])) == [CPU]


def test_explicit_providers_get_their_fallback_chain():
    assert names(resolve_providers("tensorrt", installed=GPU_BOX)) == [TENSORRT, CUDA, CPU]
    assert names(resolve_providers("cuda", installed=GPU_BOX)) == [CUDA, CPU]
    assert names(resolve_providers("cpu", installed=GPU_BOX)) == [CPU]
    assert names(resolve_providers("CUDAExecutionProvider", installed=GPU_BOX)) == [CUDA, CPU]
    # Options given with a name win over the generated ones.
    entries = dict(resolve_providers([("cuda", {"device_id": 3, "use_tf32": 0})], installed=GPU_BOX))
    assert entries[CUDA] == {"device_id": 3, "use_tf32": 0}


def test_missing_provider_error_names_the_installed_ones():
    with pytest.raises(BadInput, match=r"provider tensorrt is not installed \(installed: "
                                       r"CUDAExecutionProvider, CPUExecutionProvider\)"):
        resolve_providers("tensorrt", fallback=False, installed=[CUDA, CPU])


def test_missing_provider_falls_back_along_its_chain():
    with pytest.warns(ProviderFallbackWarning, match="provider tensorrt is not installed .* using cuda, cpu"):
        assert names(resolve_providers("tensorrt", installed=[CUDA, CPU])) == [CUDA, CPU]
    with pytest.warns(ProviderFallbackWarning, match="using cpu"):
        assert names(resolve_providers(["cuda"], installed=[CPU])) == [CPU]


def test_tf32_off_reaches_cuda_directly_and_behind_tensorrt():
    """Parity checks ask for full fp32: CUDA's use_tf32 off, also as TensorRT's fallback."""
    assert dict(resolve_providers("cuda", installed=GPU_BOX))[CUDA] == {"device_id": 0}
    for request_ in ("cuda", "tensorrt"):
        entries = dict(resolve_providers(request_, installed=GPU_BOX, tf32=False))
        assert entries[CUDA] == {"device_id": 0, "use_tf32": 0} and entries[CPU] == {}


EP_ERROR_NOTICE = (  # what onnxruntime-gpu 1.31.1 printed on an H100 without TensorRT
    "*************** EP Error ***************\n"
    "EP Error /onnxruntime_src/onnxruntime/python/onnxruntime_pybind_state.cc:729 void "
    "onnxruntime::python::RegisterTensorRTPluginsAsCustomOps(PySessionOptions&, const "
    "onnxruntime::ProviderOptions&) Please install TensorRT libraries as mentioned in the GPU "
    "requirements page, make sure they're in the PATH or LD_LIBRARY_PATH, and that your GPU is "
    "supported.\n when using [('TensorrtExecutionProvider', {'device_id': 0})]\n"
    "Falling back to ['CUDAExecutionProvider', 'CPUExecutionProvider'] and retrying.\n"
    "****************************************\n")


def test_onnxruntime_fallback_notice_becomes_the_reason(monkeypatch, capsys):
    """onnxruntime prints a multi-line "EP Error ... Falling back" notice on stdout when a
    provider does not start; open_session keeps stdout and stderr clean (`--json`, one-line
    errors) and its one fallback message quotes the reason."""
    from edgecnn.runtime import providers

    class FallsBack:
        def __init__(self, *args, **kwargs):
            print(EP_ERROR_NOTICE, end="")

        def get_providers(self):
            return [CUDA, CPU]

    monkeypatch.setattr(ort, "InferenceSession", FallsBack)
    monkeypatch.setattr(providers, "installed_providers", lambda: GPU_BOX)
    reason = (r"Please install TensorRT libraries as mentioned in the GPU requirements page, "
              r"make sure they're in the PATH or LD_LIBRARY_PATH, and that your GPU is supported\.")
    with pytest.raises(BadInput, match=rf"'tensorrt' is installed but did not start \({reason}\); "
                                       r"running on CUDAExecutionProvider, CPUExecutionProvider"):
        open_session(b"model", "tensorrt", fallback=False)
    assert capsys.readouterr() == ("", "")
    with pytest.warns(ProviderFallbackWarning, match=reason):
        opened = open_session(b"model", "tensorrt")
    assert opened.providers == [CUDA, CPU]
    assert capsys.readouterr() == ("", "")
    opened = open_session(b"model", "auto")  # auto promised nothing: no message
    assert opened.providers == [CUDA, CPU]


def test_session_options_carry_the_log_level_and_thread_cap(monkeypatch):
    """onnxruntime's log level goes on each session's options (nothing process-wide), and a
    thread count past a few per core is refused before any thread starts."""
    from edgecnn.runtime import session as session_module

    seen = {}

    class Records:
        def __init__(self, model, options, providers):
            seen.update(level=options.log_severity_level, threads=options.intra_op_num_threads)

        def get_providers(self):
            return [CPU]

    monkeypatch.setattr(ort, "InferenceSession", Records)
    open_session(b"model", "cpu", threads=2)
    assert seen == {"level": session_module.LOG_SEVERITY, "threads": 2}
    with pytest.raises(BadInput, match="threads must be between 1 and"):
        open_session(b"model", "cpu", threads=10_000)


def test_auto_picks_openvino_for_plain_int8_models_only(monkeypatch):
    """The rule of providers.auto_order (docs/openvino.md has the figures behind it)."""
    monkeypatch.setattr(providers, "cpu_has_int8_units", lambda: True)
    cpu_box = [OPENVINO, CPU]
    assert names(resolve_providers("auto", installed=cpu_box, precision="int8")) == [OPENVINO, CPU]
    assert dict(resolve_providers("auto", installed=cpu_box, precision="int8"))[OPENVINO] == {
        "device": "CPU", "precision": "f32"}
    assert names(resolve_providers("auto", installed=cpu_box, precision="fp32")) == [CPU]
    assert names(resolve_providers("auto", installed=cpu_box, precision="fp16")) == [CPU]
    assert names(resolve_providers("auto", installed=cpu_box, precision="int8",
                                   deformable=True)) == [CPU]
    assert names(resolve_providers("auto", installed=cpu_box)) == [CPU]  # no metadata
    assert names(resolve_providers("auto", installed=[CPU], precision="int8")) == [CPU]
    assert names(resolve_providers("auto", installed=[CUDA, OPENVINO, CPU],
                                   precision="int8")) == [CUDA, CPU]
    monkeypatch.setattr(providers, "cpu_has_int8_units", lambda: False)  # e.g. AVX2 only
    assert names(resolve_providers("auto", installed=cpu_box, precision="int8")) == [CPU]


@pytest.fixture
def openvino_without_devices(monkeypatch):
    """The plugin installed but offering no device: what onnxruntime-ep-openvino 1.8.1 does on
    an AMD CPU (it lists Intel devices only)."""
    monkeypatch.setattr(providers, "installed_providers", lambda: [OPENVINO, CPU])
    monkeypatch.setattr(openvino, "plugin_installed", lambda: True)
    monkeypatch.setattr(openvino, "devices", lambda: {})
    monkeypatch.setattr(providers, "cpu_has_int8_units", lambda: True)


def test_openvino_without_a_device_falls_back_and_says_why(openvino_without_devices):
    with pytest.raises(BadInput, match="provider openvino is installed but offers no device "
                                       "on this machine"):
        resolve_providers("openvino", fallback=False)
    with pytest.warns(ProviderFallbackWarning, match="offers no device on this machine.*; "
                                                     "using cpu"):
        assert names(resolve_providers("openvino:bf16")) == [CPU]


def test_auto_leaves_out_an_openvino_without_a_device_silently(openvino_without_devices):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert names(resolve_providers("auto", precision="int8")) == [CPU]


def test_bench_matrix_leaves_out_an_openvino_without_a_device(openvino_without_devices):
    from edgecnn.runtime.bench_matrix import matrix_providers

    assert matrix_providers() == ["cpu"]  # no cells that would fall back to the CPU provider


@pytest.mark.skipif(not openvino.plugin_installed() or openvino.no_device_reason() is None,
                    reason="the OpenVINO plugin offers a device here (or is not installed)")
def test_openvino_without_a_device_here_is_one_warning_and_runs_on_cpu(cli, tmp_path):
    """On this machine the installed plugin offers no device (an AMD CPU)."""
    model = tiny_model(tmp_path / "tiny.onnx").path
    picture = tmp_path / "shot.png"
    Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(picture)
    result = cli("run", model, picture, "--provider", "openvino")
    assert result.code == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "offers no device on this machine" in lines[0], lines
    assert "CPUExecutionProvider" in result.stdout


@pytest.mark.parametrize("request_", ["gpu", ["cpu", "npu"], []])
def test_unknown_provider_names_are_bad_input(request_):
    with pytest.raises(BadInput, match="unknown provider|provider list is empty"):
        resolve_providers(request_, installed=GPU_BOX)


# -- on a GPU (skipped here: this machine has none) --------------------------------------------

def require(provider: str) -> None:
    """Skip unless ``provider`` is installed and starts: onnxruntime-gpu lists TensorRT even
    where the TensorRT libraries are missing (then it falls back and says why)."""
    if provider not in ort.get_available_providers():
        pytest.skip(f"{provider} is not installed (onnxruntime {ort.__version__} offers "
                    f"{', '.join(ort.get_available_providers())}); see docs/gpu.md")
    relu = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    try:
        open_session(relu.SerializeToString(), [provider], fallback=False)
    except BadInput as error:
        pytest.skip(f"{error}; see docs/gpu.md")


def gpu_parity(path, provider, **engine_options):
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    reference = Engine(path, "cpu").run(x)["logits"]
    engine = Engine(path, provider, fallback=False, **engine_options)
    return engine, compare(reference, engine.run(x)["logits"])


@pytest.mark.gpu
def test_cuda_matches_cpu(resnet18_64):
    require(CUDA)
    # TF32 off: with it, convolutions round inputs to a 10-bit mantissa (rel_l2 ~1e-3).
    engine, parity = gpu_parity(resnet18_64, [("cuda", {"use_tf32": 0})])
    assert engine.providers[0] == CUDA
    assert parity.rel_l2 <= 1e-5, parity


@pytest.mark.gpu
@pytest.mark.parametrize("fp16, bound", [(False, 1e-3), (True, 5e-3)])
def test_tensorrt_matches_cpu(resnet18_64, tmp_path, fp16, bound):
    """TensorRT builds fp32 engines with TF32 allowed (10-bit mantissa: rel_l2 up to ~1e-3);
    with fp16 the bound is the fp16 export bound (edgecnn.export.parity)."""
    require(TENSORRT)
    engine, parity = gpu_parity(resnet18_64, "tensorrt", fp16=fp16, cache_dir=tmp_path)
    assert engine.providers[0] == TENSORRT
    assert parity.rel_l2 <= bound, parity
    assert any(tmp_path.iterdir()), "TensorRT wrote no engine cache"
