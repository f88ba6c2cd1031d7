"""`check --min-top1`: top-1 agreement can gate a check, and the worst element is located."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_one_line_error
from edgecnn.export.parity import judge


def _logits_with_one_flipped_row():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((10, 5)).astype(np.float32)
    candidate = reference.copy()
    top = reference[3].argsort()
    candidate[3, top[-2]] = reference[3, top[-1]] + 1e-3  # row 3's runner-up barely wins
    return reference, candidate


def test_min_top1_fails_an_output_whose_rel_l2_passes():
    reference, candidate = _logits_with_one_flipped_row()
    loose = judge([reference], [candidate], "int8")
    assert loose.passed and loose.outputs[0].metrics.top1_agreement == pytest.approx(0.9)
    strict = judge([reference], [candidate], "int8", min_top1=0.95)
    assert not strict.passed and "top-1 agreement 0.9000 < 0.95" in strict.failures()
    assert strict.outputs[0].metrics.worst_index[0] == 3  # the flipped row holds the worst error


def test_check_min_top1_through_the_cli(cli):
    passed = cli("check", "lenet", "--min-top1", "1", "--json")
    assert passed.code == 0, passed.stderr
    report = json.loads(passed.stdout)
    assert report["min_top1"] == 1.0 and len(report["outputs"][0]["worst_index"]) == 2
    assert_one_line_error(cli("check", "lenet", "--min-top1", "2"), 2,
                          "--min-top1 is a fraction of rows in [0, 1], got 2.0")
