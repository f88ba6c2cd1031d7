"""Provider resolution (auto order, options, missing providers) and the GPU paths.

resolve_providers takes the installed list as an argument, so the TensorRT/CUDA choices are
tested here without a GPU; the tests at the bottom run models on a GPU and skip without one.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgecnn.errors import BadInput
from edgecnn.export.parity import compare
from edgecnn.runtime import Engine
from edgecnn.runtime.providers import (
    CPU, CUDA, TENSORRT, ProviderFallbackWarning, resolve_providers,
)

AZURE = "AzureExecutionProvider"
GPU_BOX = [TENSORRT, CUDA, CPU, AZURE]


def names(entries):
    return [name for name, _ in entries]


def test_auto_prefers_tensorrt_then_cuda_then_cpu(tmp_path):
    entries = dict(resolve_providers("auto", installed=GPU_BOX, device_id=1, fp16=True,
                                     trt_cache_dir=tmp_path / "trt"))
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


@pytest.mark.parametrize("request_", ["gpu", ["cpu", "npu"], []])
def test_unknown_provider_names_are_bad_input(request_):
    with pytest.raises(BadInput, match="unknown provider|provider list is empty"):
        resolve_providers(request_, installed=GPU_BOX)


# -- on a GPU (skipped here: this machine has none) --------------------------------------------

def require(provider: str) -> None:
    if provider not in ort.get_available_providers():
        pytest.skip(f"{provider} is not installed (onnxruntime {ort.__version__} offers "
                    f"{', '.join(ort.get_available_providers())}); see docs/gpu.md")


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
    with fp16 the bound is the fp16 export bound (DESIGN.md)."""
    require(TENSORRT)
    engine, parity = gpu_parity(resnet18_64, "tensorrt", fp16=fp16, trt_cache_dir=tmp_path)
    assert engine.providers[0] == TENSORRT
    assert parity.rel_l2 <= bound, parity
    assert any(tmp_path.iterdir()), "TensorRT wrote no engine cache"
