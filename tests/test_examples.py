"""The examples users copy must keep working."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_ci_parity_example_passes():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                           str(REPO / "examples" / "ci_parity.py")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "2 passed" in done.stdout


def test_assert_parity_catches_a_wrong_file(tmp_path):
    """The helper raises with the figures when the file is not the module's export."""
    import onnx
    import pytest
    import torch

    from edgecnn.export import to_onnx
    from edgecnn.export.parity import assert_parity

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    path = tmp_path / "other.onnx"
    onnx.save(to_onnx(other, torch.randn(2, 3, 8, 8)), str(path))
    with pytest.raises(AssertionError, match=r"differs from eager: output 'logits': rel_l2"):
        assert_parity(model, path, torch.randn(3, 3, 8, 8))
    (metrics,) = assert_parity(other, path, torch.randn(3, 3, 8, 8))
    assert metrics.rel_l2 <= 1e-5
