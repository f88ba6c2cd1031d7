"""Hostile .pt2 programs: torch.export.load unpickles (weights_only=False) every weight or
constant its configs mark ``use_pickle``, custom and opaque objects, legacy weight files and the
older archive format, and unpickling runs code from the file. edgecnn reads the archive's
configs first and refuses those, in one line, before torch sees the file."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import assert_one_line_error, run_console_script

CANARY = "canary_written_by_the_file"


class _RunsCode:
    """Unpickling this creates the canary file: what a hostile pickle could do instead."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def _program(path: Path) -> Path:
    module = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    torch.export.save(torch.export.export(module.eval(), (torch.randn(1, 3, 8, 8),)), path)
    return path


def _rewritten(source: Path, target: Path, change) -> Path:
    """``source`` with ``change(name, data) -> {name: data}`` applied to each member (what
    it returns replaces the member: {} drops it), written to ``target``."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            for new_name, data in change(name, old.read(name)).items():
                new.writestr(new_name, data)
    return target


def _pickled_weight(canary: Path):
    def change(name: str, data: bytes) -> dict:
        if name.endswith("data/weights/model_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            data = json.dumps(config).encode()
        elif name.endswith("data/weights/weight_0"):
            data = pickle.dumps(_RunsCode(canary), protocol=2)
        return {name: data}
    return change


def _custom_object_constant(canary: Path):
    def change(name: str, data: bytes) -> dict:
        if name.endswith("data/constants/model_constants_config.json"):
            data = json.dumps({"config": {"obj": {"path_name": "opaque_obj_0",
                                                  "is_param": False, "use_pickle": True,
                                                  "tensor_meta": None}}}).encode()
            return {name: data, name.replace("model_constants_config.json", "opaque_obj_0"):
                    pickle.dumps(_RunsCode(canary), protocol=2)}
        return {name: data}
    return change


def _older_format(canary: Path):
    """The layout torch 2.7 wrote: a top-level 'version' (its state dicts are pickles)."""
    def change(name: str, data: bytes) -> dict:
        return {"version": b"0.1"} if name.endswith("archive_format") else {name: data}
    return change


def _pickled_sample_inputs(canary: Path):
    """Sample inputs torch.load refuses with weights_only=True: torch 2.13 then retries them
    with weights_only=False (torch/_export/serde/serialize.py, deserialize_torch_artifact)."""
    def change(name: str, data: bytes) -> dict:
        if name.endswith("data/sample_inputs/model.pt"):
            data = pickle.dumps(_RunsCode(canary), protocol=2)
        return {name: data}
    return change


@pytest.mark.parametrize("hostile", [_pickled_weight, _custom_object_constant, _older_format,
                                     _pickled_sample_inputs],
                         ids=["pickled-weight", "opaque-constant", "older-format",
                              "pickled-sample-inputs"])
@pytest.mark.parametrize("command", ["export", "check"])
def test_a_program_that_would_unpickle_is_refused_before_torch_reads_it(cli, tmp_path, hostile,
                                                                       command):
    canary = tmp_path / CANARY
    program = _rewritten(_program(tmp_path / "good.pt2"), tmp_path / "hostile.pt2",
                         hostile(canary))
    args = (["export", program, "-o", tmp_path / "out.onnx"] if command == "export" else
            ["check", program])
    result = cli(*args)
    assert_one_line_error(result, 2, str(program), "pickle")
    assert not canary.exists(), "loading the program ran code from it"
    assert not (tmp_path / "out.onnx").exists()


def test_a_program_torch_export_save_wrote_still_loads(cli, tmp_path):
    program = _program(tmp_path / "good.pt2")
    result = cli("export", program, "-o", tmp_path / "good.onnx", "--json")
    assert result.code == 0, result.stderr
    assert (tmp_path / "good.onnx").is_file()


def test_a_zip_that_is_no_program_is_one_line(cli, tmp_path):
    program = tmp_path / "notes.pt2"
    with zipfile.ZipFile(program, "w") as archive:
        archive.writestr("notes.txt", "hello")
    assert_one_line_error(cli("export", program), 2, str(program), "torch.export.save")


def _schema_from_the_future(name: str, data: bytes) -> dict:
    if name.endswith("models/model.json"):
        program = json.loads(data)
        program["schema_version"] = {"major": 999, "minor": 0}
        data = json.dumps(program).encode()
    return {name: data}


def _unknown_operator(name: str, data: bytes) -> dict:
    if name.endswith("models/model.json"):
        program = json.loads(data)
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.nowhere.op"
        data = json.dumps(program).encode()
    return {name: data}


@pytest.mark.parametrize("change, cause", [
    (_schema_from_the_future, "SerializeError: Serialized schema version"),
    # torch's words, quoted as they are: its "target=" is not export's --target flag
    (_unknown_operator, "SerializeError: Failed deserializing node Node(target='torch.ops."),
], ids=["schema-999", "unknown-operator"])
def test_a_program_torch_cannot_deserialize_is_one_line(tmp_path, change, cause):
    """torch.export.load logs the cause with its traceback, then raises a vaguer error ("check
    the warnings above"): the cause is the one line, and torch's log stays off stderr."""
    program = _rewritten(_program(tmp_path / "good.pt2"), tmp_path / "odd.pt2", change)
    result = run_console_script("export", program, "-o", tmp_path / "out.onnx")
    assert_one_line_error(result, 2, str(program), "not a program written by torch.export.save",
                          cause)
    assert not (tmp_path / "out.onnx").exists()
