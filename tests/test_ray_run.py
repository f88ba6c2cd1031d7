"""`edgecnn run/evaluate --ray`: Ray Data on a local instance (2 CPUs) gives the local run's
records and the local evaluation's figures (runtime/ray.py)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import assert_one_line_error
from PIL import Image
from tiny_models import tiny_model

LABELS = ["ant", "bee", "cat", "dog"]


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance of 2 CPUs for the module; `--ray local` uses it as it is."""
    ray = pytest.importorskip("ray", reason="Ray Data is not installed (pip install "
                                            "'edgecnn[ray]')")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """200 small photos in one sub-folder per class, and one file that is not an image."""
    folder = tmp_path_factory.mktemp("set")
    rng = np.random.default_rng(7)
    for index in range(200):
        sub = folder / LABELS[index % 4]
        sub.mkdir(exist_ok=True)
        size = (int(rng.integers(12, 40)), int(rng.integers(12, 40)), 3)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(
            sub / f"{index:03d}.{'jpg' if index % 2 else 'png'}")
    (folder / "cat" / "broken.jpg").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx", labels=LABELS)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_on_ray_writes_the_local_records(cli, local_ray, tiny, labelled, tmp_path):
    here, there = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert cli("run", tiny.path, labelled, "-o", here, "--top-k", "3").code == 3
    result = cli("run", tiny.path, labelled, "-o", there, "--top-k", "3", "--ray", "local",
                 "--batch", "8", "--json")
    assert result.code == 3, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["images"], summary["done"], summary["failed"], summary["ray"]) == \
        (201, 201, 1, "local")
    ours, theirs = read_jsonl(here), read_jsonl(there)
    assert [r["image"] for r in theirs] == [r["image"] for r in ours]  # the input order
    for mine, yours in zip(ours, theirs):
        if "error" in mine:
            assert yours == mine
            continue
        assert [e["index"] for e in yours["top_k"]] == [e["index"] for e in mine["top_k"]]
        assert [e["label"] for e in yours["top_k"]] == [e["label"] for e in mine["top_k"]]
        np.testing.assert_allclose([e["probability"] for e in yours["top_k"]],
                                   [e["probability"] for e in mine["top_k"]], atol=1e-6)


def test_evaluate_on_ray_equals_the_local_evaluation(cli, local_ray, tiny, labelled):
    here = cli("evaluate", tiny.path, tiny.path, labelled, "--json")
    there = cli("evaluate", tiny.path, tiny.path, labelled, "--json", "--ray", "local")
    assert here.code == there.code == 0, there.stderr
    ours, theirs = json.loads(here.stdout), json.loads(there.stdout)
    assert ours["samples"] == 201 and len(ours["unreadable"]) == 1
    assert theirs == ours


def test_ray_refuses_masks_and_arrays(cli, local_ray, tiny, labelled, tmp_path):
    segmenter = tiny_model(tmp_path / "seg.onnx", task="segmentation", classes=3)
    assert_one_line_error(cli("run", segmenter.path, labelled, "--masks", tmp_path / "m",
                              "--ray", "local"), 2, "--masks", "local run")
    arrays = tmp_path / "set.npz"
    np.savez(arrays, inputs=np.zeros((2, 3, 8, 8), np.float32), labels=np.zeros(2, np.int64))
    assert_one_line_error(cli("evaluate", tiny.path, arrays, "--ray", "local"), 2,
                          "--ray scores image folders")


def test_without_ray_one_line_names_the_extra(cli, tiny, labelled, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    for args in (("run", tiny.path, labelled), ("evaluate", tiny.path, labelled)):
        assert_one_line_error(cli(*args, "--ray", "auto"), 2, "pip install 'edgecnn[ray]'")


def test_resume_on_ray_completes_a_local_output(cli, local_ray, tiny, labelled, tmp_path):
    full, part = tmp_path / "full.csv", tmp_path / "part.csv"
    assert cli("run", tiny.path, labelled, "-o", full).code == 3
    lines = full.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:60]) + lines[60][:10])  # a line cut short by a kill
    assert cli("run", tiny.path, labelled, "-o", part, "--resume", "--ray", "local").code == 3
    assert part.read_text() == full.read_text()
    assert cli("run", tiny.path, labelled, "-o", part, "--resume", "--ray", "local").code == 0
